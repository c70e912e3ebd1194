"""Writing a model folder so that it is complete or absent, never half-written, and a drop-in for
its source: every file a client reads beside the weights comes along.

The folder is written into a hidden staging folder beside the target (`.NAME.tmp-*`) and only
then put in place. Replacing an existing folder (`overwrite=True`) swaps the two in one atomic
step where the system can (Linux `renameat2(RENAME_EXCHANGE)`), so the old folder stays visible
under its name until the new one is complete; elsewhere two renames, with the old folder kept
hidden (`.NAME.old-*`) in between (POSIX cannot rename over a non-empty folder: for the instant
between those two calls the name is absent). A save that was killed leaves at most those hidden
folders; the next save into the same place puts a missing folder back from them and removes the
rest, saying so, and `interrupted_copy` tells a reader where a missing folder went. Saves into one
parent folder take turns (a lock the kernel drops when its holder dies), so one save's cleanup
never takes another running save's staging folder for a leftover.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

# Files of a tokenizer or image/feature processor that travel verbatim from the source checkpoint.
PROCESSOR_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.jinja", "chat_template.json", "preprocessor_config.json", "processor_config.json",
    "image_processor_config.json", "video_preprocessor_config.json", "feature_extractor_config.json",
)
# sentence-transformers reads these beside the weights, plus each module folder modules.json lists.
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
_STAGING, _RETIRED = "tmp", "old"


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False, source: str | os.PathLike | None = None) -> Path:
    """Refuse an existing non-empty folder (or a file) unless `overwrite`, and the `source` checkpoint folder
    itself; returns the absolute path."""
    output_dir = Path(output_dir).expanduser().absolute()
    if source is not None and Path(source).expanduser().absolute() == output_dir:
        raise ValueError(f"the output folder {output_dir} is the source checkpoint: write the ReLU model somewhere else")
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder: choose another output folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{output_dir} exists and is not empty: pass overwrite=True (--overwrite) to replace it, or choose another folder"
        )
    return output_dir


def _hidden(output_dir: Path, kind: str) -> list[Path]:
    return sorted(output_dir.parent.glob(f".{output_dir.name}.{kind}-*"))


@contextlib.contextmanager
def _save_lock(output_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on `output_dir`'s parent folder: saves (and cleanups) there take turns.
    The kernel drops it when the holding process dies, so a killed save never blocks the next one."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    try:
        fd = os.open(output_dir.parent, os.O_RDONLY)
    except OSError:  # no such parent yet (nothing to clean up or race for), or not readable: no lock
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("waiting for another save in %s to finish", output_dir.parent)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def interrupted_copy(output_dir: str | os.PathLike) -> Path | None:
    """Where a save killed between its two renames left the folder `output_dir` (missing now), if it did."""
    output_dir = Path(output_dir).expanduser().absolute()
    found = [folder / output_dir.name for folder in _hidden(output_dir, _RETIRED) if (folder / output_dir.name).is_dir()]
    return found[-1] if found and not output_dir.exists() else None


def recover_interrupted_save(output_dir: str | os.PathLike) -> list[str]:
    """Undo what a killed save left beside `output_dir`: a missing folder comes back from its hidden
    retired copy; other leftovers are removed. Returns what was done, one line each (also logged)."""
    output_dir = Path(output_dir).expanduser().absolute()
    with _save_lock(output_dir):
        return _recover(output_dir)


def _recover(output_dir: Path) -> list[str]:
    done = []
    retired = interrupted_copy(output_dir)
    if retired is not None:
        os.rename(retired, output_dir)
        shutil.rmtree(retired.parent, ignore_errors=True)  # now empty
        done.append(f"restored {output_dir} from an interrupted replacement ({retired.parent.name})")
    for leftover in _hidden(output_dir, _RETIRED) + _hidden(output_dir, _STAGING):
        shutil.rmtree(leftover, ignore_errors=True)
        done.append(f"removed {leftover.name}, left by an interrupted save")
    for line in done:
        logger.warning("%s", line)
    return done


def _exchange(first: Path, second: Path) -> bool:
    """Swap two folders atomically (Linux renameat2 with RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system or kernel cannot
        return False
    raise OSError(error, os.strerror(error), str(second))


def _move_into_place(staging: Path, output_dir: Path) -> None:
    """Put the finished `staging` folder at `output_dir`; the old folder stays visible until then."""
    if not output_dir.exists():
        os.rename(staging, output_dir)
        return
    if _exchange(staging, output_dir):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old folder
        return
    retired = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.{_RETIRED}-"))
    os.rename(output_dir, retired / output_dir.name)
    try:
        os.rename(staging, output_dir)
    except BaseException:
        os.rename(retired / output_dir.name, output_dir)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def carried_files(source: Path) -> list[Path]:
    """The files (and sentence-transformers module folders) of a checkpoint folder that a client
    reads beside the weights and config: tokenizer, processor, sentence-transformers modules."""
    found = [source / name for name in (*PROCESSOR_FILES, *SENTENCE_TRANSFORMERS_FILES) if (source / name).is_file()]
    modules = source / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            path = module.get("path") if isinstance(module, dict) else None
            if path and (source / path).is_dir():
                found.append(source / path)
    return found


def _copy_into(paths: Iterable[Path], source: Path, staging: Path) -> None:
    for path in paths:
        target = staging / path.relative_to(source)
        if target.exists():  # written by save_pretrained (config, processor): the rewritten one wins
            continue
        if path.is_dir():
            shutil.copytree(path, target)
        else:
            shutil.copy2(path, target)


def write_model_folder(
    model,
    output_dir: str | os.PathLike,
    *,
    card: str,
    processor=None,
    source: str | os.PathLike | None = None,
    extra_files: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    check=None,
) -> Path:
    """Write `model` (safetensors weights, config, generation config), its `processor` (tokenizer,
    image processor or processor), the files a client reads from the `source` checkpoint folder
    (`carried_files`), `extra_files` (copied in by name) and README.md (`card`) as one folder.

    `check(staging_folder)` may refuse the written folder (raise) before it is put in place. An
    existing non-empty `output_dir` is replaced only with `overwrite=True`, and only once the new
    folder is complete. Returns the folder's path."""
    output_dir = Path(output_dir).expanduser().absolute()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with _save_lock(output_dir):
        _recover(output_dir)
        return _write_model_folder(model, output_dir, card=card, processor=processor, source=source,
                                   extra_files=extra_files, overwrite=overwrite, check=check)


def _write_model_folder(model, output_dir: Path, *, card, processor, source, extra_files, overwrite, check) -> Path:
    output_dir = check_output_dir(output_dir, overwrite, source)
    source = Path(source).expanduser().absolute() if source is not None else None
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.{_STAGING}-"))
    try:
        model.save_pretrained(staging)
        if processor is not None:
            processor.save_pretrained(staging)
        if source is not None and source.is_dir():
            _copy_into(carried_files(source), source, staging)
        for path in map(Path, extra_files):
            shutil.copy2(path, staging / path.name)
        (staging / "README.md").write_text(card, encoding="utf-8")
        if check is not None:
            check(staging)
        _move_into_place(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir
