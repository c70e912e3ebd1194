"""Publishing a ReLU model: its card (`card`), a complete model folder written atomically
(`folder`), and the Hub upload (`push`)."""

from .card import CardDetails, auto_class_name, render_model_card, training_from_history
from .folder import (
    carried_files,
    check_output_dir,
    recover_interrupted_save,
    write_model_folder,
)
from .push import HubPushError, push_folder, retry_command

__all__ = [
    "CardDetails",
    "HubPushError",
    "auto_class_name",
    "carried_files",
    "check_output_dir",
    "push_folder",
    "recover_interrupted_save",
    "render_model_card",
    "retry_command",
    "training_from_history",
    "write_model_folder",
]
