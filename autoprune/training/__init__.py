"""Training: the fine-tune loop every trial and export runs, distillation from the dense model, device placement."""
from autoprune.training.distill import distillation_loss, training_loss
from autoprune.training.loop import DivergedError, finetune
from autoprune.training.placement import model_device, resolve_device

__all__ = [
    "DivergedError",
    "distillation_loss",
    "finetune",
    "model_device",
    "resolve_device",
    "training_loss",
]
