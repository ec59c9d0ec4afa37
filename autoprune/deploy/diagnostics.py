"""Quality beyond top-1 for classifiers: per-class accuracy, calibration, robustness to a shift.

Pruning can keep the mean accuracy while one class collapses, or leave a model more
over-confident, or more fragile to input noise. These plain functions measure that for the
dense and the exported model alike:

- per-class accuracy, and the worst class's drop against the dense model;
- expected calibration error over 15 equal-width confidence bins (Guo et al., 2017);
- accuracy under two fixed shifts of the inputs, the same for every model (common random
  numbers): Gaussian noise of ``NOISE_STD`` times the data's standard deviation (seeded),
  and a 3x3 binomial blur (about 0.7 pixels) over the last two axes of image inputs.

Everything applies to tasks whose data yields ``(input, integer label)`` and whose model
returns one logit per class; :func:`classifier_quality` returns ``None`` for other tasks.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from autoprune.training.placement import model_device

log = logging.getLogger(__name__)

ECE_BINS = 15
#: Standard deviation of the added noise, as a fraction of the input data's standard deviation.
NOISE_STD = 0.5
NOISE_SEED = 0
#: The blur kernel: binomial 3x3, normalised (sums to 1).
BLUR_KERNEL = torch.tensor([1.0, 2.0, 1.0])[:, None] * torch.tensor([1.0, 2.0, 1.0])[None, :] / 16.0

Shift = Callable[[torch.Tensor, int], torch.Tensor]


def predictions(model: nn.Module, data: Dataset, shift: Optional[Shift] = None, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities ``(N, classes)`` and labels ``(N,)`` of ``model`` on ``(x, y)`` data.

    ``shift(x, batch_index)`` transforms each input batch first (see :func:`gaussian_noise`).
    """
    model.eval()
    device = model_device(model)
    probs, labels = [], []
    with torch.no_grad():
        for i, (x, y) in enumerate(DataLoader(data, batch_size=batch_size)):
            if shift is not None:
                x = shift(x, i)
            probs.append(torch.softmax(model(x.to(device)).float(), dim=1).cpu())
            labels.append(y)
    return torch.cat(probs), torch.cat(labels)


def per_class_accuracy(probs: torch.Tensor, labels: torch.Tensor) -> dict[int, tuple[float, int]]:
    """Class -> (accuracy, count) for every class present in ``labels``."""
    correct = probs.argmax(1) == labels
    out = {}
    for c in sorted(int(v) for v in labels.unique()):
        members = labels == c
        out[c] = (float(correct[members].float().mean()), int(members.sum()))
    return out


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Sum over equal-width confidence bins of ``|bin| / N * |accuracy(bin) - mean confidence(bin)|``.

    Confidence is the top probability; bin ``b`` holds confidences in ``(b/bins, (b+1)/bins]``.
    """
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).float()
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            ece += float(members.float().mean()) * abs(float(correct[members].mean()) - float(confidence[members].mean()))
    return ece


def gaussian_noise(scale: float, seed: int = NOISE_SEED) -> Shift:
    """A shift adding N(0, ``scale``^2) noise, seeded per batch so every model sees the same noise."""

    def shift(x: torch.Tensor, batch_index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed + batch_index)
        return x + scale * torch.randn(x.shape, generator=generator, dtype=x.dtype)

    return shift


def blur(x: torch.Tensor, batch_index: int = 0) -> torch.Tensor:
    """``x`` (``(N, C, H, W)``) blurred per channel with :data:`BLUR_KERNEL`, edges replicated."""
    channels = x.shape[1]
    kernel = BLUR_KERNEL.to(x.dtype).expand(channels, 1, 3, 3)
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    return nn.functional.conv2d(padded, kernel, groups=channels)


def is_classification(model: nn.Module, data: Dataset) -> bool:
    """``data`` yields ``(input, integer label)`` and ``model`` returns one logit per class."""
    try:
        x, y = data[0]
        label = torch.as_tensor(y)
    except (TypeError, ValueError, IndexError, KeyError):
        return False
    if label.dim() != 0 or label.dtype.is_floating_point or label.dtype == torch.bool:
        return False
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.as_tensor(x)[None].to(model_device(model)))
    except Exception as err:  # an input the model cannot take alone: not a task these diagnostics fit
        log.info("no quality diagnostics: the model does not take one sample of the data (%s)", err)
        return False
    return isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] > int(label)


def input_std(data: Dataset, limit: int = 2048) -> float:
    """Standard deviation of the inputs of the first ``limit`` samples."""
    x = next(iter(DataLoader(data, batch_size=limit)))[0]
    return float(x.float().std())


def classifier_quality(model: nn.Module, data: Dataset, noise_scale: Optional[float] = None) -> Optional[dict[str, Any]]:
    """Accuracy, per-class accuracy and counts, ECE, and accuracy under noise and blur.

    ``noise_scale`` is the absolute noise standard deviation; by default :data:`NOISE_STD`
    times the data's. Blur applies to 4-D (image) inputs only (else ``None``). Returns
    ``None`` when the task is not a classification (see :func:`is_classification`).
    """
    if not is_classification(model, data):
        return None
    probs, labels = predictions(model, data)
    classes = per_class_accuracy(probs, labels)
    scale = noise_scale if noise_scale is not None else NOISE_STD * input_std(data)
    noisy, _ = predictions(model, data, gaussian_noise(scale))
    image = torch.as_tensor(data[0][0]).dim() == 3
    blurred = predictions(model, data, blur)[0] if image else None
    return {
        "accuracy": float((probs.argmax(1) == labels).float().mean()),
        "per_class_accuracy": {str(c): acc for c, (acc, _) in classes.items()},
        "class_counts": {str(c): n for c, (_, n) in classes.items()},
        "ece": expected_calibration_error(probs, labels),
        "ece_bins": ECE_BINS,
        "accuracy_noise": float((noisy.argmax(1) == labels).float().mean()),
        "noise_std": scale,
        "accuracy_blur": float((blurred.argmax(1) == labels).float().mean()) if blurred is not None else None,
        "blur": "3x3 binomial" if blurred is not None else None,
    }


def worst_class_drop(per_class: Mapping[str, float], dense_per_class: Mapping[str, float]) -> tuple[Optional[str], float]:
    """The class whose accuracy fell most from the dense model's, and by how much (accuracy points, 0..1)."""
    drops = {c: dense_per_class[c] - acc for c, acc in per_class.items() if c in dense_per_class}
    if not drops:
        return None, 0.0
    worst = max(drops, key=lambda c: drops[c])
    return worst, drops[worst]


def compare(pruned: Optional[dict[str, Any]], dense: Optional[dict[str, Any]], max_class_drop: Optional[float] = None) -> Optional[dict[str, Any]]:
    """The model card's ``quality`` section: both models' diagnostics, the worst class's drop
    and whether it exceeds ``max_class_drop`` (``flagged``; never flagged without a bound)."""
    if pruned is None or dense is None:
        return None
    worst, drop = worst_class_drop(pruned["per_class_accuracy"], dense["per_class_accuracy"])
    flagged = max_class_drop is not None and drop > max_class_drop
    if flagged:
        log.warning("class %s lost %.4f accuracy against the dense model, more than export.max_class_drop %.4f", worst, drop, max_class_drop)
    return {
        "pruned": pruned,
        "dense": dense,
        "worst_class": worst,
        "worst_class_drop": drop,
        "max_class_drop": max_class_drop,
        "flagged": flagged,
    }
