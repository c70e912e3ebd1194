"""Converting a pretrained GELU model into a ReLU model on a small budget (`convert_gelu_to_relu`)."""

from .config import METHODS, ConversionConfig, steps_from_budget
from .defaults import Choice, choose_learning_rate, recorded_learning_rate
from .readout import swap_with_readout_correction
from .recipe import ConversionResult, convert_gelu_to_relu, task_of
from .selection import Selection

__all__ = ["METHODS", "Choice", "ConversionConfig", "ConversionResult", "Selection", "choose_learning_rate",
           "convert_gelu_to_relu", "recorded_learning_rate", "steps_from_budget", "swap_with_readout_correction", "task_of"]
