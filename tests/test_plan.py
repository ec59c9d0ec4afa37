import json

import pytest

from autoprune.core.plan import Plan, UnitChoice


def test_plan_round_trips_through_json_and_hashes_by_content():
    plan = Plan.from_dict({"b": {"granularity": "channel", "pruning_ratio": 0.3}, "a": {"granularity": "unstructured", "pruning_ratio": 0.5}})
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert hash(again) == hash(plan)
    assert again.key == plan.key
    assert [u for u, _ in plan] == ["a", "b"]
    assert json.loads(plan.to_json())["b"] == {"granularity": "channel", "pruning_ratio": 0.3, "criterion": "l1"}


def test_inactive_choices_do_not_change_the_key():
    a = Plan.from_dict({"x": UnitChoice("channel", 0.4)})
    b = Plan.from_dict({"x": UnitChoice("channel", 0.4), "y": UnitChoice("channel", 0.0)})
    c = Plan.from_dict({"x": UnitChoice("channel", 0.5)})
    assert a.key == b.key
    assert a.key != c.key


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_unit_interval_is_rejected(ratio):
    with pytest.raises(ValueError, match="pruning_ratio"):
        UnitChoice("channel", ratio)


def test_uniform_plan_and_mean_ratio():
    plan = Plan.uniform(["a", "b", "c"], 0.25)
    assert plan.mean_ratio() == pytest.approx(0.25)
    assert plan["b"] == UnitChoice("channel", 0.25, "l1")
