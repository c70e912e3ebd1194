"""Converting a pretrained GELU model into a ReLU model on a small budget (`convert_gelu_to_relu`)."""

from .config import METHODS, ConversionConfig, steps_from_budget
from .readout import swap_with_readout_correction
from .recipe import ConversionResult, convert_gelu_to_relu, task_of

__all__ = ["METHODS", "ConversionConfig", "ConversionResult", "convert_gelu_to_relu", "steps_from_budget",
           "swap_with_readout_correction", "task_of"]
