"""Learning-rate schedulers by name (helios-ml's ``helios.scheduler``): torch's, two with
restarts, and any registered."""

from helios.scheduler.schedulers import CosineAnnealingRestartLR, MultiStepRestartLR
from helios.scheduler.utils import SCHEDULER_REGISTRY, create_scheduler

__all__ = [
    "SCHEDULER_REGISTRY",
    "CosineAnnealingRestartLR",
    "MultiStepRestartLR",
    "create_scheduler",
]
