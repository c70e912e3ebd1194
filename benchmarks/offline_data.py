"""The scripts' data as plain arrays, for a machine without the data (scripts/reproduce.py,
scripts/convert_benchmark.py): read once through hf_kgelu.data where the data packages are,
exported as .npz, then fed to a Trainer as `TensorRows` (no `datasets` needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class TensorRows(torch.utils.data.Dataset):
    """Rows of equally long tensors: `ds[i]` is one example dict, `ds[a:b]` a dict of column slices."""

    def __init__(self, **columns: torch.Tensor):
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"columns differ in length: { {k: len(v) for k, v in columns.items()} }")
        self.columns = columns
        self.length = lengths.pop()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        return {key: value[index] for key, value in self.columns.items()}


def arrays_from_library(source: str, sizes: dict) -> dict[str, np.ndarray]:
    """Numpy arrays of one data source, read through hf_kgelu.data (needs `datasets` and the data packages).

    pydocs sizes: chars, block, tokens (cap), vocab (compact the BPE ids), tokenizer ("bpe": GPT-2's
    BPE, "byte": UTF-8 bytes), eval_fraction (default 0.1)."""
    from hf_kgelu import data

    def columns(split, keys=("pixel_values", "labels")):
        return {k: np.asarray(split.with_format("numpy")[k]) for k in keys}

    if source == "adult":
        splits = data.adult_splits()
        train, test = columns(splits["train"]), columns(splits["validation"])
    elif source == "fashion":
        splits = data.fashion_mnist_splits(limit=max(sizes.get("train", 0), sizes.get("eval", 0)) or None)
        # keep bytes: 4× smaller to carry; exact (the library's scaling is x/127.5 − 1)
        raw = {name: np.rint((columns(splits[name])["pixel_values"] + 1.0) * 127.5).astype(np.uint8) for name in ("train", "validation")}
        train = {"pixel_values": raw["train"], "labels": columns(splits["train"])["labels"]}
        test = {"pixel_values": raw["validation"], "labels": columns(splits["validation"])["labels"]}
    elif source == "digits":
        splits = data.digits_splits(seed=0)
        train, test = columns(splits["train"]), columns(splits["validation"])
    elif source == "pydocs":
        tokenizer = data.byte_tokenizer if sizes.get("tokenizer") == "byte" else data.gpt2_tokenizer()
        text = data.python_docs_text(max_chars=sizes.get("chars"))
        blocks = data.causal_lm_blocks(text, tokenizer, sizes["block"], eval_fraction=sizes.get("eval_fraction", 0.1),
                                       max_tokens=sizes.get("tokens"))
        train_ids = np.asarray(blocks["train"].with_format("numpy")["input_ids"]).astype(np.int64)
        test_ids = np.asarray(blocks["validation"].with_format("numpy")["input_ids"]).astype(np.int64)
        if sizes.get("vocab"):
            train_ids, test_ids = compact_vocabulary(train_ids, test_ids, sizes["vocab"])
        train, test = {"input_ids": train_ids.astype(np.uint16)}, {"input_ids": test_ids.astype(np.uint16)}
    else:
        raise ValueError(source)
    return {**{f"train.{k}": v for k, v in train.items()}, **{f"eval.{k}": v for k, v in test.items()}}


def compact_vocabulary(train_ids: np.ndarray, test_ids: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber GPT-2 BPE ids by frequency in the training text, keeping the `size − 1` most
    frequent; every other id becomes `size − 1` (unknown). A 50 257-way softmax dominates a
    small model's cost on a CPU; this keeps the text and the tokenisation, with a smaller head."""
    counts = np.bincount(train_ids.ravel(), minlength=int(max(train_ids.max(), test_ids.max())) + 1)
    keep = np.argsort(-counts, kind="stable")[: size - 1]
    mapping = np.full(len(counts), size - 1, dtype=np.int64)
    mapping[keep] = np.arange(len(keep))
    return mapping[train_ids], mapping[test_ids]


def to_rows(arrays: dict[str, np.ndarray], split: str, limit: int | None = None) -> TensorRows:
    """One split ("train" / "eval") of exported arrays as rows: causal-LM blocks (labels = inputs) or images/features."""
    cols = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(split + ".")}
    cols = {k: v[:limit] if limit else v for k, v in cols.items()}
    if "input_ids" in cols:
        ids = torch.from_numpy(cols["input_ids"].astype(np.int64))
        return TensorRows(input_ids=ids, labels=ids.clone())
    pixels = cols["pixel_values"]
    if pixels.dtype == np.uint8:
        pixels = pixels.astype(np.float32) / 127.5 - 1.0
    return TensorRows(pixel_values=torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)),
                      labels=torch.from_numpy(cols["labels"].astype(np.int64)))


def save_arrays(folder: Path, name: str, arrays: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / f"{name}.npz", **arrays)
    print(f"exported {name}: " + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in arrays.items()), flush=True)


def require_exported(path: Path, export_command: str) -> Path:
    """`path` from --data-dir, or a one-line error naming the file and the command that writes it."""
    if not path.is_file():
        raise SystemExit(f"--data-dir: {path} is missing; write it where the data is with `{export_command}`")
    return path


def load_arrays(folder: Path, name: str, export_command: str) -> dict[str, np.ndarray]:
    """DIR/name.npz (see `require_exported`)."""
    with np.load(require_exported(Path(folder) / f"{name}.npz", export_command)) as stored:
        return dict(stored)
