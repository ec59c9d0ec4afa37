"""Profiling real target devices: benchmark_model output parsing (on real output text from
users' devices, see tests/data/benchmark_model/README.md) and phone bundles."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.remote import Bundle, BundleMeasurer, ResultsMeasurer, parse_benchmark_output

DATA = Path(__file__).parent / "data" / "benchmark_model"


def _runs(name: str):
    return parse_benchmark_output((DATA / name).read_text())


def test_parses_two_runs_with_percentiles_and_prefixes():
    cpu, xnnpack = _runs("am62x_ssd_mobilenet_v2.txt")
    assert cpu.graph == xnnpack.graph == "/usr/share/oob-demo-assets/models/ssd_mobilenet_v2_coco.tflite"
    assert (cpu.count, cpu.statistic) == (50, "median")
    assert cpu.median_ms == pytest.approx(1239.807) and (cpu.p10_ms, cpu.p90_ms) == pytest.approx((1238.753, 1247.415))
    assert cpu.init_ms == pytest.approx(5.579)
    assert xnnpack.median_ms == pytest.approx(899.281) and xnnpack.init_ms == pytest.approx(614.333)
    stats = xnnpack.stats()
    assert stats.repeats == 50 and stats.p10_ms <= stats.median_ms <= stats.p90_ms


def test_older_output_uses_the_mean_and_ignores_op_profiling_totals():
    (run,) = _runs("riscv64_mobilenet_v1_op_profiling.txt")
    assert run.graph == "./mobilenet_v1_1.0_224.tflite"
    assert run.statistic == "mean" and run.count == 50
    assert run.median_ms == pytest.approx(2950.34)  # avg=2.95034e+06, not the profiler's 2.9499e+06
    assert 2727.568 <= run.p10_ms < run.median_ms < run.p90_ms <= 3189.954


def test_headerless_output_and_failed_runs():
    (run,) = _runs("mi11_yolov5s_cpu.txt")
    assert run.graph is None and run.median_ms == pytest.approx(249.684) and run.ok
    (failed,) = _runs("mi11_yolov5s_int8_nnapi_failed.txt")
    assert not failed.ok and failed.graph == "/data/local/tmp/yolov5s_int8_640.tflite"
    assert "Benchmarking failed" in failed.error and math.isnan(failed.median_ms)
    with pytest.raises(AutopruneError, match="benchmark_model failed on /data/local/tmp/yolov5s_int8_640.tflite"):
        failed.stats()
    assert parse_benchmark_output("no output here\n") == []


@pytest.fixture
def tflite_files(tmp_path):
    from autoprune.backends import get_backend

    backend = get_backend("tflite")
    ok, why = backend.available()
    if not ok:
        pytest.skip(why)
    paths = []
    for width in (4, 8):
        torch.manual_seed(width)
        model = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU()).eval()
        paths.append(backend.export(model, torch.randn(1, 1, 8, 8), tmp_path / f"w{width}.tflite"))
    return paths


@pytest.mark.tflite
def test_bundle_round_trip_matches_results_to_models_by_content(tmp_path, tflite_files):
    bundle = Bundle.create(tmp_path / "bundle", "pixel7", threads=4, warmup=5, repeats=30)
    measure = BundleMeasurer(bundle)
    names = [bundle.add(p) for p in tflite_files]
    assert measure(tflite_files[0]).median_ms == 1.0 and len(bundle.models) == 2  # added once per content
    script = bundle.write()
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "--num_threads=4 --warmup_runs=5 --num_runs=30" in text and "adb" in text.lower()
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    assert [m["file"] for m in manifest["models"]] == names and all((bundle.path / n).is_file() for n in names)
    with pytest.raises(AutopruneError, match="already holds a bundle"):
        Bundle.create(bundle.path, "pixel7", 4, 5, 30)

    # One real benchmark_model output per bundled file, named as the script names them.
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(DATA / "mi11_yolov5s_cpu.txt", results / f"{Path(names[0]).stem}.txt")
    shutil.copy(DATA / "mi11_yolov5s_int8_nnapi_failed.txt", results / "unrelated.txt")
    with pytest.raises(AutopruneError, match="not a model of the bundle"):
        ResultsMeasurer.read(bundle.path, results)
    (results / "unrelated.txt").unlink()
    measure = ResultsMeasurer.read(bundle.path, results)
    assert measure(tflite_files[0]).median_ms == pytest.approx(249.684)
    assert measure.missing() == [names[1]]
    with pytest.raises(AutopruneError, match="no benchmark_model result for"):
        measure(tflite_files[1])
    other = tmp_path / "other.tflite"
    other.write_bytes(tflite_files[0].read_bytes() + b"\0")
    with pytest.raises(AutopruneError, match="not in the bundle"):
        measure(other)

