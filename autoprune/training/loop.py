"""Fine-tuning: the short recipe every trial runs, and the longer one an export runs."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from autoprune.core.errors import AutopruneError
from autoprune.core.recipes import FinetuneRecipe
from autoprune.training.placement import model_device, to_device


class DivergedError(AutopruneError, FloatingPointError):
    """The loss became NaN or infinite during fine-tuning."""


def finetune(
    model: nn.Module,
    data: Dataset,
    recipe: FinetuneRecipe,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    seed: int = 0,
    after_step: Optional[Callable[[nn.Module], None]] = None,
    on_step: Optional[Callable[[int, nn.Module], bool]] = None,
) -> int:
    """Train ``model`` in place with SGD for ``recipe.steps`` steps; returns steps taken.

    Batches go to the device the model is on: move the model first (see
    :func:`resolve_device`) to fine-tune on a GPU.

    ``after_step`` runs after every optimiser step (granularities use it to re-apply
    masks that are not parametrised). ``on_step(steps_done, model)`` runs after that and
    stops fine-tuning when it returns True (multi-fidelity stopping, see
    :mod:`autoprune.engine.stopping`). A NaN or infinite loss raises :class:`DivergedError`.
    """
    steps = recipe.steps(len(data))
    if steps == 0:
        return 0
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=recipe.batch_size, shuffle=True, generator=generator, drop_last=len(data) > recipe.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, nesterov=recipe.momentum > 0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps) if recipe.schedule == "cosine" else None
    device = model_device(model)
    model.train()
    done = 0
    while done < steps:
        for batch in loader:
            if device.type != "cpu":
                batch = to_device(batch, device)
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise DivergedError(f"fine-tuning diverged at step {done}: loss is {loss.item()}")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if scheduler is not None:
                scheduler.step()
            if after_step is not None:
                after_step(model)
            done += 1
            if on_step is not None and on_step(done, model):
                model.eval()
                return done
            if done >= steps:
                break
    model.eval()
    return done


def recalibrate_batchnorm(model: nn.Module, data: Dataset, batches: int, batch_size: int = 64, seed: int = 0) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches`` training batches.

    Pruning removes channels whose activations the next BatchNorm's statistics still
    describe, and a short fine-tune updates them only partly; scoring with stale
    statistics adds error that has nothing to do with the plan. The statistics are reset
    and accumulated as a cumulative average (``momentum=None``) over the same seeded
    batches for every model; weights are not touched. Returns the batches used.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if batches <= 0 or not norms:
        return 0
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)
    device = model_device(model)
    model.train()
    used = 0
    with torch.no_grad():
        for batch in loader:
            if used >= batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(to_device(x, device) if device.type != "cpu" else x)
            used += 1
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()
    return used
