"""Loading a checkpoint the way its own files describe it: the model class its config's
`architectures` names (so every head survives), and the tokenizer / processor saved with it."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from torch import nn

from ..publishing.folder import PROCESSOR_FILES, interrupted_copy

logger = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode), its tokenizer or processor (None when it has
    none), the local folder it came from (None for a Hub id) and the name it was loaded by."""

    model: nn.Module
    processor: object | None
    folder: Path | None
    name: str

    @property
    def tokenizer(self):
        """The text tokenizer, whether the checkpoint saved a tokenizer or a processor holding one."""
        return getattr(self.processor, "tokenizer", None) or (self.processor if hasattr(self.processor, "encode") else None)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_source(checkpoint: str | os.PathLike) -> Path | None:
    """The absolute local folder of a checkpoint, or None for what may be a Hub id; a one-line
    FileNotFoundError for a missing folder, a file, or a folder without config.json."""
    checkpoint = os.fspath(checkpoint)
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: point at a transformers checkpoint folder (save_pretrained's output)")
        return path.absolute()
    if path.exists():
        raise FileNotFoundError(f"{path} is a file, not a checkpoint folder: point at the folder holding config.json")
    hidden = interrupted_copy(path)
    if hidden is not None:
        raise FileNotFoundError(f"no such folder: {path.absolute()}, but a save killed while replacing it left the previous "
                                f"one in {hidden}: rerun the command that wrote it (it restores it first), or move it back")
    if not _HUB_ID.match(checkpoint):
        raise FileNotFoundError(f"no such folder: {path.absolute()}")
    return None  # maybe a Hub id


def model_class(config) -> type[nn.Module]:
    """The class named first in `config.architectures`: transformers' own, or one registered with
    its Auto classes (e.g. hf-kgelu's MLP). AutoModel's choice when the config names none."""
    import transformers
    from transformers.models.auto import modeling_auto

    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type):
            return cls
        for auto_name in dir(modeling_auto):
            mapping = getattr(getattr(modeling_auto, auto_name, None), "_model_mapping", None)
            for registered in getattr(mapping, "_extra_content", {}).values():
                if getattr(registered, "__name__", None) == name:
                    return registered
    if names:
        raise ValueError(f"the checkpoint's config names architecture {names[0]!r}, which this transformers "
                         f"{transformers.__version__} does not have: upgrade transformers, or import the package that defines it")
    cls = modeling_auto.AutoModel._model_mapping.get(type(config))
    logger.warning("the checkpoint's config.json names no architecture: loading it as %s, without a task head", cls.__name__)
    return cls


def load_processor(checkpoint: str | os.PathLike):
    """The tokenizer, image processor or processor saved with a checkpoint; None when it has none."""
    from transformers import AutoProcessor, AutoTokenizer

    folder = Path(checkpoint).expanduser()
    if folder.is_dir() and not any((folder / name).is_file() for name in PROCESSOR_FILES):
        return None  # (the Auto classes would otherwise build a default one from the model type)
    for auto in (AutoProcessor, AutoTokenizer):
        try:
            return auto.from_pretrained(checkpoint)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def load_checkpoint(checkpoint: str | os.PathLike, *, dtype=None) -> Checkpoint:
    """Load a checkpoint folder (or Hub id): the model through its own architecture class, in eval
    mode, and its tokenizer / processor. Clear errors for a missing folder or architecture."""
    from transformers import AutoConfig

    name = os.fspath(checkpoint)
    folder = check_source(name)
    try:
        config = AutoConfig.from_pretrained(name)
    except OSError as error:
        if folder is not None:
            raise
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(f"no such folder: {Path(name).absolute()} (nor a Hub model that could be loaded: {reason})") from None
    cls = model_class(config)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    try:
        model = cls.from_pretrained(name, config=config, **kwargs).eval()
    except SafetensorError as error:  # not an OSError or ValueError: would escape as a traceback
        raise ValueError(f"cannot read the weights of {name} ({error}): a damaged or partly written .safetensors "
                         "file? Save the model again, or use another checkpoint") from error
    return Checkpoint(model=model, processor=load_processor(name), folder=folder, name=name)
