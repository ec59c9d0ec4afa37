"""Knowledge distillation from the dense model while a pruned candidate is fine-tuned.

:func:`distillation_loss` wraps a task's loss: ``(1 - weight) * task_loss + weight * kd``,
where ``kd`` compares the student's outputs with the dense teacher's on the same batch
(Hinton et al., 2015). The student runs once per batch; the teacher runs without gradients.

- ``kl``: KL divergence of temperature-softened class distributions, scaled by ``T^2``
  (classifier logits);
- ``mse`` / ``cosine``: for regression outputs and embeddings.

Set ``finetune.distill`` (search trials) or ``export.finetune.distill`` (the final model) in a
study config; :func:`training_loss` is what trial and export code call.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Optional

import torch
from torch import nn

from autoprune.core.recipes import Distillation
from autoprune.training.placement import model_device

Loss = Callable[[nn.Module, Any], torch.Tensor]


def kd_term(student: torch.Tensor, teacher: torch.Tensor, options: Distillation) -> torch.Tensor:
    """The distillation term between student and teacher outputs of one batch."""
    if options.kind == "kl":
        t = options.temperature
        log_p = nn.functional.log_softmax(student / t, dim=-1)
        q = nn.functional.softmax(teacher / t, dim=-1)
        return nn.functional.kl_div(log_p, q, reduction="batchmean") * t * t
    if options.kind == "mse":
        return nn.functional.mse_loss(student, teacher)
    return (1 - nn.functional.cosine_similarity(student.flatten(1), teacher.flatten(1), dim=-1)).mean()


class _Replay:
    """Stands in for the student inside the task loss: returns the output already computed for ``x``."""

    def __init__(self, model: nn.Module, x: Any, output: torch.Tensor) -> None:
        self._model, self._x, self._output = model, x, output

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and args[0] is self._x:
            return self._output
        return self._model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def distillation_loss(task_loss: Loss, teacher: nn.Module, options: Distillation) -> Loss:
    """``task_loss`` blended with distillation from ``teacher``; batches are ``(input, ...)``."""
    teacher.eval()

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        student = model(x)
        with torch.no_grad():
            target = teacher(x)
        kd = kd_term(student, target, options)
        if options.weight >= 1:
            return kd
        return (1 - options.weight) * task_loss(_Replay(model, x, student), batch) + options.weight * kd

    return loss


def training_loss(task: Any, distill: Optional[Distillation], device: Optional[torch.device] = None) -> Loss:
    """The loss a fine-tune minimises: the task's, with distillation from its dense model if asked.

    The teacher runs on ``device`` (a copy of the dense model when that is not where it lives).
    """
    if distill is None:
        return task.loss
    teacher = task.model
    if device is not None and model_device(teacher) != device:
        teacher = copy.deepcopy(teacher).to(device)
    return distillation_loss(task.loss, teacher, distill)
