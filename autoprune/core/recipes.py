"""Recipes: how a candidate is fine-tuned, distilled and gradually pruned (plain, validated data)."""
from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class Distillation(BaseModel):
    """How much, and how, the fine-tune learns from the dense model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(0.5, ge=0, le=1, description="share of the distillation term; the task loss gets 1 - weight")
    temperature: float = Field(4.0, gt=0, description="softens both distributions (kl only); the term is scaled by T^2")
    kind: Literal["kl", "mse", "cosine"] = Field("kl", description="kl for classifier logits, mse or cosine for embeddings")


class FinetuneRecipe(BaseModel):
    """How a pruned candidate is fine-tuned before it is scored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: float = Field(1.0, ge=0, description="passes over the training data; fractions allowed")
    max_steps: Optional[int] = Field(None, ge=0, description="cap on optimiser steps (overrides epochs when lower)")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["constant", "cosine"] = "cosine"
    distill: Optional[Distillation] = Field(None, description="distil from the dense model while fine-tuning (see autoprune.training.distill)")
    common_batches: bool = Field(
        True,
        description="every trial of a study fine-tunes on the same batches in the same order (common random numbers), "
        "so two candidates differ by their plan rather than by their draw; false: a seed per trial",
    )
    bn_recalibration_batches: int = Field(
        0, ge=0, description="training batches run through the model in train mode, without gradients, to re-estimate BatchNorm statistics before scoring"
    )
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="where to fine-tune and score: auto (a CUDA GPU when there is one), cpu, cuda or cuda:N"
    )

    def steps(self, n_samples: int) -> int:
        """Number of optimiser steps this recipe takes on ``n_samples`` training samples."""
        per_epoch = math.ceil(n_samples / self.batch_size)
        steps = int(round(self.epochs * per_epoch))
        return min(steps, self.max_steps) if self.max_steps is not None else steps


class IterativeSchedule(BaseModel):
    """``autoprune export``'s gradual pruning: ``steps`` pruning steps, each followed by ``finetune``.

    The export's own fine-tune (``export.finetune``) runs after the last step.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(3, ge=1, description="pruning steps (1 = one-shot)")
    finetune: FinetuneRecipe = Field(FinetuneRecipe(epochs=1.0), description="fine-tune after each step but the last")
