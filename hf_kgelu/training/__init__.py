"""Training λ-GELU models with the stock Trainer loop: arguments, the annealing schedule, the
callbacks (one concern each), `KGeluTrainer`, and what several processes need."""

from .annealing import KGeluHardnessCallback
from .arguments import KGeluTrainingArguments
from .distributed import (
    KGeluDistributedCallback,
    ThetaSyncError,
    check_theta_sync,
    gather_full_model,
)
from .schedule import AnnealingSchedule
from .tracking import EpochProgress, KGeluHistoryCallback
from .trainer import KGeluTrainer
from .zero import KGeluDeepSpeedError, KGeluZeroCallback

__all__ = [
    "AnnealingSchedule",
    "EpochProgress",
    "KGeluDistributedCallback",
    "KGeluHardnessCallback",
    "KGeluDeepSpeedError",
    "KGeluHistoryCallback",
    "KGeluTrainer",
    "KGeluTrainingArguments",
    "KGeluZeroCallback",
    "ThetaSyncError",
    "check_theta_sync",
    "gather_full_model",
]
