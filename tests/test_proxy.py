"""The trial's proxy: common random numbers across candidates and BatchNorm recalibration."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import write_config


def test_common_batches_make_the_trial_number_irrelevant_and_a_seed_per_trial_does_not(tmp_path: Path):
    """Common random numbers: the same plan scores the same whatever its trial number; with
    ``common_batches: false`` the number seeds the fine-tune, and ``seed=`` overrides both."""
    from autoprune.core.config import load_config
    from autoprune.engine.context import build_context
    from autoprune.engine.trial import run_trial
    from autoprune.pruning.sampling import uniform_plans

    ctx = build_context(load_config(write_config(tmp_path, finetune={"epochs": 0.3, "batch_size": 32, "lr": 0.05})))
    plan = uniform_plans(ctx.space)[3]
    a, b = run_trial(ctx, plan, 0), run_trial(ctx, plan, 7)
    assert a.accuracy == b.accuracy
    own = run_trial(ctx, plan, 0, seed=123)
    per_trial = build_context(load_config(write_config(tmp_path, finetune={"epochs": 0.3, "batch_size": 32, "lr": 0.05, "common_batches": False})))
    c, d = run_trial(per_trial, plan, 0), run_trial(per_trial, plan, 7)
    assert c.accuracy == a.accuracy  # trial 0 of seed 0 is the common draw
    assert len({a.accuracy, own.accuracy, d.accuracy}) > 1


def test_batchnorm_recalibration_is_reproducible_and_only_moves_statistics(tmp_path: Path):
    import copy

    import torch

    from autoprune.core.config import load_config
    from autoprune.engine.context import build_context
    from autoprune.engine.trial import prune
    from autoprune.pruning.sampling import uniform_plans
    from autoprune.training.loop import recalibrate_batchnorm

    ctx = build_context(load_config(write_config(tmp_path)))
    pruned = prune(ctx, uniform_plans(ctx.space)[5])
    one, two = copy.deepcopy(pruned), copy.deepcopy(pruned)
    assert recalibrate_batchnorm(one, ctx.task.train, 3, 32, seed=1) == 3
    recalibrate_batchnorm(two, ctx.task.train, 3, 32, seed=1)
    s0, s1, s2 = pruned.state_dict(), one.state_dict(), two.state_dict()
    stats = [k for k in s0 if k.endswith("running_mean")]
    assert stats and all(torch.equal(s1[k], s2[k]) for k in s0)
    assert any(not torch.equal(s0[k], s1[k]) for k in stats)
    weights = [k for k in s0 if k.endswith("weight")]
    assert all(torch.equal(s0[k], s1[k]) for k in weights)
    assert not one.training
