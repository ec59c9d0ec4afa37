"""bench/versus.py's table: the best peer at each target, autoprune's best, the margin, on hand-made rows."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.versus import ModelRows, best_at, summarise_models, verdict, versus_table


def row(source: str, name: str, setting: str, accuracy: float, ort: float, tfl: float, seed: int = 0, recipe: str = "final") -> dict:
    return {"model": "m", "source": source, "name": name, "setting": setting, "recipe": recipe, "seed": seed,
            "accuracy": accuracy, "speedup.onnxruntime-cpu": ort, "speedup.tflite": tfl}


ROWS = pd.DataFrame([
    row("peer", "tp-uniform", "ratio 0.5", 0.90, 2.1, 2.3),
    row("peer", "tp-uniform", "ratio 0.5", 0.92, 2.1, 2.3, seed=1),   # mean 0.91
    row("peer", "tp-uniform", "ratio 0.7", 0.86, 2.9, 3.8),
    row("peer", "tp-global", "ratio 0.5", 0.915, 1.9, 2.6),
    row("autoprune", "knapsack", "trial 3", 0.93, 2.2, 1.9),
    row("autoprune", "knapsack", "trial 3", 0.95, 2.2, 1.9, seed=1),  # mean 0.94
    row("autoprune", "knapsack", "trial 9", 0.89, 3.1, 4.2),
    row("autoprune", "knapsack", "trial 9", 0.99, 3.1, 4.2, recipe="best"),
])


def test_summary_averages_seeds_per_model_and_device():
    models = summarise_models(ROWS)
    peer = models[(models.setting == "ratio 0.5") & (models.name == "tp-uniform") & (models.device == "tflite")].iloc[0]
    assert peer.accuracy == pytest.approx(0.91) and peer.seeds == 2 and peer.speedup == 2.3
    assert peer["std"] == pytest.approx(pd.Series([0.90, 0.92]).std())


def test_best_peer_is_the_most_accurate_reaching_the_target():
    models = summarise_models(ROWS)
    peers = models[(models.source == "peer") & (models.device == "onnxruntime-cpu") & (models.recipe == "final")]
    assert best_at(peers, 2.0).setting == "ratio 0.5" and best_at(peers, 2.0)["name"] == "tp-uniform"  # tp-global's 0.915 is only 1.9x
    assert best_at(peers, 1.5)["name"] == "tp-global"
    assert best_at(peers, 3.0) is None


def test_table_margin_std_and_missing_cells():
    table = versus_table(ROWS, targets=(2.0, 3.0, 4.0))
    ort = table[table.device == "onnxruntime-cpu"].set_index("target_speedup")
    assert ort.loc[2.0, "peer"] == "tp-uniform ratio 0.5"
    assert ort.loc[2.0, "margin_points"] == pytest.approx(3.0)
    assert ort.loc[2.0, "seeds"] == 2
    assert ort.loc[2.0, "std_points"] == pytest.approx(100 * math.sqrt(2 * pd.Series([0.90, 0.92]).std() ** 2))
    assert pd.isna(ort.loc[3.0, "peer"]) and ort.loc[3.0, "autoprune_speedup"] == 3.1
    tfl = table[table.device == "tflite"].set_index("target_speedup")
    assert tfl.loc[2.0, "autoprune_member"] == "trial 9" and tfl.loc[2.0, "peer"] == "tp-global ratio 0.5"
    assert tfl.loc[2.0, "margin_points"] == pytest.approx(100 * (0.89 - 0.915))
    assert tfl.loc[3.0, "margin_points"] == pytest.approx(100 * (0.89 - 0.86)) and pd.isna(tfl.loc[3.0, "std_points"])
    assert pd.isna(tfl.loc[4.0, "peer"]) and tfl.loc[4.0, "autoprune_speedup"] == 4.2
    best = versus_table(ROWS, targets=(3.0,), recipe="best")
    assert best.autoprune_accuracy.tolist() == [0.99, 0.99] and best.peer.isna().all()


def test_verdicts_say_met_missed_and_within_noise():
    table = versus_table(ROWS, targets=(2.0, 3.0))
    cell = lambda device, target: table[(table.device == device) & (table.target_speedup == target)].iloc[0]  # noqa: E731
    assert verdict(cell("onnxruntime-cpu", 2.0)).startswith("met")
    assert verdict(cell("tflite", 2.0)) == "missed by 3.00 points (goal +0.5)"
    assert verdict(cell("onnxruntime-cpu", 3.0)) == "no peer reaches this speedup (autoprune does)"
    noisy = cell("onnxruntime-cpu", 2.0).copy()
    noisy["std_points"] = 5.0
    assert "within its std" in verdict(noisy)


def test_model_rows_append_and_resume(tmp_path):
    rows = ModelRows(tmp_path / "models.csv")
    rows.add(row("peer", "tp-uniform", "ratio 0.5", 0.9, 2.0, 2.0))
    again = ModelRows(tmp_path / "models.csv")
    assert again.has(model="m", source="peer", name="tp-uniform", setting="ratio 0.5", recipe="final", seed=0)
    assert not again.has(model="m", source="peer", name="tp-uniform", setting="ratio 0.5", recipe="final", seed=1)


def test_peers_alone_still_fill_the_table():
    peers = ROWS[ROWS.source == "peer"]
    table = versus_table(peers, targets=(2.0,))
    assert len(table) == 2 and table.controller.isna().all() and table.autoprune_accuracy.isna().all()
    assert verdict(table.iloc[0]) == "autoprune has no export reaching this speedup"
