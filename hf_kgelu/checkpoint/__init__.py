"""THE checkpoint flow: load (the checkpoint's own architecture class, its tokenizer or processor)
→ transform (relu_ize, convert, or train) → measure → write the folder atomically with its
processor, carried files and card → push. The Python API, the `hf-kgelu` command, the scripts
and the demo all go through these verbs:

- `relu_ize_checkpoint`: a trained λ-GELU checkpoint → a published ReLU model;
- `convert_checkpoint`: a pretrained GELU checkpoint → a published ReLU model (small budget);
- `train_and_relu_ize`: a model and data → trained, measured, and its ReLU model published.
"""

from .convert import convert_checkpoint
from .publish import HubTarget, Published, publish
from .relu_ize import relu_ize_checkpoint
from .report import TrainResult
from .source import Checkpoint, load_checkpoint
from .train import train_and_relu_ize

__all__ = [
    "Checkpoint",
    "HubTarget",
    "Published",
    "TrainResult",
    "convert_checkpoint",
    "load_checkpoint",
    "publish",
    "relu_ize_checkpoint",
    "train_and_relu_ize",
]
