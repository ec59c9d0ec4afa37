"""``autoprune sensitivity``: one unit pruned at a time over its range, on a real tiny model."""
import pandas as pd
import pytest

from autoprune.engine.sensitivity import single_unit_plan, unit_ratios
from autoprune.pruning.space import RatioRange, Rule, UnitSpace
from tests.conftest import write_config
from tests.test_cli import cli

SPACE = "rules:\n  - match: '*'\n    pruning_ratio: {low: 0.0, high: 0.75, step: 0.25}\nprotect: [stem, classifier]\n"


def test_unit_ratios_span_the_range_from_zero_on_its_grid():
    def ratios(low, high, step, count):
        return unit_ratios(UnitSpace(unit=None, rule=Rule(pruning_ratio=RatioRange(low=low, high=high, step=step))), count)

    assert ratios(0.0, 0.75, 0.25, 5) == [0.0, 0.25, 0.5, 0.75]
    assert ratios(0.0, 0.8, 0.1, 5) == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert ratios(0.5, 0.7, 0.1, 5) == [0.0, 0.5, 0.6, 0.7]  # 0 (the dense model) even when the rule starts higher
    assert ratios(0.0, 0.6, None, 4) == pytest.approx([0.0, 0.2, 0.4, 0.6])


def test_curves_of_a_tiny_model(tmp_path, tiny_resnet_task):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    config = write_config(tmp_path, search_space=str(space))
    out = cli("sensitivity", config, "--no-progress", "--out", tmp_path / "sens").stdout.split()
    assert out == [str(tmp_path / "sens" / "sensitivity.csv"), str(tmp_path / "sens" / "sensitivity.png")]
    table = pd.read_csv(out[0])
    units = list(dict.fromkeys(table.unit))
    assert len(units) >= 2 and len(table) == len(units) * 4
    assert set(table.ratio) == {0.0, 0.25, 0.5, 0.75} and table.error.isna().all() and (table.finetune_steps == 0).all()
    dense = float(tiny_resnet_task.metric(tiny_resnet_task.model, tiny_resnet_task.val))
    assert (table[table.ratio == 0].accuracy == dense).all()
    for unit in units:
        rows = table[table.unit == unit].sort_values("ratio")
        assert rows.params.is_monotonic_decreasing and rows.params.iloc[-1] < rows.params.iloc[0], unit
        assert rows.macs.is_monotonic_decreasing, unit
        assert (rows["latency_saved_ms.onnxruntime-cpu"].iloc[0] == 0.0) and (rows["latency_ms.onnxruntime-cpu"] > 0).all()
    assert (tmp_path / "sens" / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"


def test_a_single_unit_plan_prunes_only_that_unit(tiny_resnet_task):
    from autoprune.pruning.space import SearchSpace
    from autoprune.pruning.units import prunable_units

    task = tiny_resnet_task
    space = SearchSpace.model_validate({"rules": [{"pruning_ratio": {"low": 0.0, "high": 0.5, "step": 0.25}}]}).resolve(
        prunable_units(task.model, task.example_input, ["stem", "classifier"])
    )
    unit = next(iter(space))
    plan = single_unit_plan(space, unit, 0.5)
    assert [u for u, c in plan if c.active] == [unit] and plan[unit].pruning_ratio == 0.5 and len(plan) == len(space)


def test_bad_config_is_one_line(tmp_path):
    config = write_config(tmp_path, finetune={"epochs": 0.2, "batch_sise": 64})
    bad = cli("sensitivity", config, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "batch_sise" in bad.stderr and "Traceback" not in bad.stderr


def test_a_short_finetune_scores_every_point(tmp_path):
    """With fine-tune steps, each pruned point is trained before it is scored; devices may be left out."""
    from dataclasses import replace

    from autoprune.core.config import load_config
    from autoprune.engine.context import build_context
    from autoprune.engine.sensitivity import sensitivity

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    ctx = replace(build_context(load_config(write_config(tmp_path, search_space=str(space)))), estimators={})
    seen = []
    table = sensitivity(ctx, ratios_per_unit=2, finetune_steps=2, on_point=lambda done, total: seen.append((done, total)))
    assert len(table) == 2 * len(ctx.space) and seen[-1] == (len(table), len(table))
    assert set(table.ratio) == {0.0, 0.75} and table.accuracy.between(0, 1).all()
    assert (table[table.ratio > 0].finetune_steps == 2).all() and (table[table.ratio == 0].finetune_steps == 0).all()
    assert not [c for c in table.columns if c.startswith("latency")]


@pytest.mark.parametrize("flag", [["--ratios", "1"], ["--finetune-steps", "-1"]])
def test_bad_options_are_one_line(tmp_path, flag):
    bad = cli("sensitivity", write_config(tmp_path), *flag, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and flag[0] in bad.stderr
