"""Semi-structured sparse granularities: N:M patterns and blocks of weights.

Both view a weight as a matrix of output rows by reduction columns, with the input
channels innermost (``(out, kh, kw, in)`` flattened for convolutions), which is the order
sparse GEMM kernels reduce over.

- ``n:M`` (e.g. ``n:4``, ``n:8``): in every group of ``M`` consecutive weights along the
  input channels, keep ``N = M - round(ratio * M)`` (at least one). ``n:4`` at
  ``pruning_ratio: 0.5`` is the 2:4 pattern of sparse tensor cores.
- ``blockHxW`` (e.g. ``block1x4``, ``block4x4``): zero whole ``H x W`` blocks (``H``
  output rows by ``W`` columns), the ``ratio`` of blocks with the lowest summed scores.

Edges that do not fill a group or block are padded for scoring and cropped after.
Masks are ``torch.nn.utils.prune`` parametrisations, like ``unstructured``.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from autoprune.core.errors import ConfigError
from autoprune.pruning.criteria import weight_scores
from autoprune.pruning.granularity import (
    GRANULARITIES,
    Granularity,
    PruneContext,
    make_granularity,
    mask_layer,
)
from autoprune.pruning.units import Unit

MAX_GROUP = 64


def gemm_view(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as ``(out, reduction)`` with input channels innermost."""
    if weight.dim() > 2:
        return weight.movedim(1, -1).reshape(weight.shape[0], -1)
    return weight


def from_gemm_view(matrix: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`gemm_view` for a tensor shaped like ``like``."""
    if like.dim() > 2:
        shape = (like.shape[0], *like.shape[2:], like.shape[1])
        return matrix.reshape(shape).movedim(-1, 1)
    return matrix


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask (1/0) of ``n`` highest scores in every ``m`` consecutive input channels."""
    if scores.dim() > 2:
        channels_last = scores.movedim(1, -1)
    else:
        channels_last = scores
    cin = channels_last.shape[-1]
    pad = (-cin) % m
    padded = nn.functional.pad(channels_last, (0, pad), value=float("-inf"))
    groups = padded.reshape(*padded.shape[:-1], -1, m)
    top = groups.topk(n, dim=-1).indices
    keep = torch.zeros_like(groups).scatter_(-1, top, 1.0)
    keep = keep.reshape(padded.shape)[..., :cin]
    return keep.movedim(-1, 1) if scores.dim() > 2 else keep


def block_mask(scores: torch.Tensor, ratio: float, height: int, width: int) -> torch.Tensor:
    """Keep mask zeroing the ``ratio`` of ``height x width`` blocks with the lowest summed score."""
    matrix = gemm_view(scores)
    rows, cols = matrix.shape
    padded = nn.functional.pad(matrix, (0, (-cols) % width, 0, (-rows) % height))
    pr, pc = padded.shape
    blocks = padded.reshape(pr // height, height, pc // width, width).sum(dim=(1, 3))
    n_prune = int(round(ratio * blocks.numel()))
    keep_blocks = torch.ones(blocks.numel())
    if n_prune > 0:
        keep_blocks[torch.argsort(blocks.flatten())[:n_prune]] = 0
    keep = keep_blocks.view(blocks.shape).repeat_interleave(height, 0).repeat_interleave(width, 1)[:rows, :cols]
    return from_gemm_view(keep, scores)


def _nm_granularity(match: re.Match) -> Granularity:
    m = int(match.group(1))
    if not 2 <= m <= MAX_GROUP:
        raise ConfigError(f"granularity {match.group(0)!r}: the group size M must be in [2, {MAX_GROUP}], got {m}")

    def apply(ctx: PruneContext, unit: Unit, ratio: float, criterion: str, multiple: int) -> None:
        n = max(1, m - int(round(ratio * m)))
        if n >= m:
            return
        for name in ctx.live_layers(unit):
            layer = ctx.layer(name)
            mask_layer(layer, nm_mask(weight_scores(ctx, layer, criterion), n, m))

    apply.__doc__ = f"keep N of every {m} weights along the input channels, N = {m} - round(ratio * {m})"
    return make_granularity(match.group(0), apply, False, apply.__doc__)


def _block_granularity(match: re.Match) -> Granularity:
    height, width = int(match.group(1)), int(match.group(2))
    if not (1 <= height <= MAX_GROUP and 1 <= width <= MAX_GROUP) or height * width < 2:
        raise ConfigError(f"granularity {match.group(0)!r}: block sides must be in [1, {MAX_GROUP}] with at least 2 weights per block")

    def apply(ctx: PruneContext, unit: Unit, ratio: float, criterion: str, multiple: int) -> None:
        for name in ctx.live_layers(unit):
            layer = ctx.layer(name)
            mask_layer(layer, block_mask(weight_scores(ctx, layer, criterion), ratio, height, width))

    apply.__doc__ = f"zero whole {height}x{width} blocks (output rows x input columns) of the unit's layers"
    return make_granularity(match.group(0), apply, False, apply.__doc__)


GRANULARITIES.add_family(r"n:(\d+)", "n:M", _nm_granularity)
GRANULARITIES.add_family(r"block(\d+)x(\d+)", "blockHxW", _block_granularity)
