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

from autoprune.core.errors import AutopruneError
from autoprune.latency.remote import (
    Bundle,
    BundleMeasurer,
    ResultsMeasurer,
    parse_benchmark_output,
)

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
    from autoprune.latency.backends import get_backend

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



def _device(root: Path, name: str, backend: str, local: bool) -> None:
    import yaml

    (root / name).mkdir(parents=True)
    settings = {"name": name, "backend": backend, "threads": 1, "batch_size": 1, "warmup": 5, "repeats": 40, "local": local}
    (root / name / "device.yaml").write_text(yaml.safe_dump(settings))


def _profile_args(tmp_path: Path, name: str, calibration: int = 3) -> list[str]:
    import yaml

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"rules": [{"match": "*", "pruning_ratio": {"low": 0.0, "high": 0.5, "step": 0.5}}], "protect": ["stem", "classifier"]}))
    return ["profile", "--device", name, "--space", str(space), "--task", "digits", "--task-option", "model=resnet-tiny",
            "--task-option", "epochs=3", "--calibration", str(calibration), "--rounds", "1", "--time-cap", "5", "--no-progress"]


@pytest.fixture
def agent_url(tmp_path):
    """A profiling agent started as its own process on loopback, with a token."""
    import sys

    import autoprune.agent

    proc = subprocess.Popen(
        [sys.executable, autoprune.agent.__file__, "serve", "--port", "0", "--quiet", "--token", "tok"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    assert "serving on" in line, proc.stderr.read()[-2000:]
    yield line.split("serving on ", 1)[1].split()[0]
    proc.terminate()
    proc.wait(timeout=10)


def test_profile_through_the_agent_matches_local_profiling(tmp_path, monkeypatch, agent_url):
    import csv

    import numpy as np

    from autoprune.cli.main import main
    from autoprune.latency.devices import load_device
    from autoprune.latency.lut import load_table

    root = tmp_path / "profiles"
    _device(root, "ort-here", "onnxruntime-cpu", local=True)
    _device(root, "ort-agent", "onnxruntime-cpu", local=False)
    monkeypatch.setenv("AUTOPRUNE_PROFILES", str(root))
    assert main(_profile_args(tmp_path, "ort-here")) == 0
    assert main([*_profile_args(tmp_path, "ort-agent"), "--remote", agent_url, "--token", "tok"]) == 0

    here, there = load_table(load_device("ort-here")), load_table(load_device("ort-agent"))
    assert set(here.rows) == set(there.rows) and len(here.rows) > 5
    with open(here.table_path) as a, open(there.table_path) as b:
        assert csv.DictReader(a).fieldnames == csv.DictReader(b).fieldnames  # the same table format
    assert there.meta.machine["agent"] == agent_url and there.meta.overhead_ms > 0
    assert len(there.meta.calibration) == len(here.meta.calibration) == 3 + 2 + 2  # random, uniform 0 and 0.5, two corners
    # every key and calibration model got a real timing through the agent (how close the two
    # timings are depends on the machine's load: that is a benchmark's figure, not a test's)
    remote = np.array([there.rows[k]["median_ms"] for k in here.rows])
    assert np.isfinite(remote).all() and (remote > 0).all()
    assert {p.label for p in there.meta.calibration} == {p.label for p in here.meta.calibration}
    assert all(np.isfinite(p.measured_ms) and p.measured_ms > 0 for p in there.meta.calibration)


def _benchmark_model_stand_in(bundle_dir: Path) -> Path:
    """Time every bundled file with LiteRT here and write each result as benchmark_model
    2.1x prints it, since benchmark_model itself cannot run on this machine."""

    from autoprune.latency.backends import get_backend

    backend = get_backend("tflite")
    settings = json.loads((bundle_dir / "manifest.json").read_text())["settings"]
    results = bundle_dir / "results"
    results.mkdir()
    for model in sorted((bundle_dir / "models").glob("*.tflite")):
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter

        shape = Interpreter(model_path=str(model)).get_input_details()[0]["shape"]
        stats = backend.measure(model, np.zeros(shape, np.float32), settings["threads"], settings["warmup"], settings["repeats"])
        us = lambda ms: int(round(ms * 1e3))  # noqa: E731
        (results / f"{model.stem}.txt").write_text(
            "INFO: STARTING!\n"
            f"INFO: Graph: [/data/local/tmp/autoprune/{model.name}]\n"
            f"INFO: Running benchmark for at least {settings['repeats']} iterations and at least 0 seconds but terminate if exceeding 150 seconds.\n"
            f"INFO: count={stats.repeats} first={us(stats.p90_ms)} curr={us(stats.median_ms)} min={us(stats.p10_ms)} max={us(stats.p90_ms)} "
            f"avg={stats.median_ms * 1e3:g} std=1 p5={us(stats.p10_ms)} median={us(stats.median_ms)} p95={us(stats.p90_ms)}\n\n"
            f"INFO: Inference timings in us: Init: 900, First inference: {us(stats.p90_ms)}, Warmup (avg): {us(stats.p90_ms)}, Inference (avg): {stats.median_ms * 1e3:g}\n"
        )
    return results


@pytest.mark.tflite
def test_bundle_for_benchmark_model_then_import_fills_the_table(tmp_path, monkeypatch):
    from autoprune.cli.main import main
    from autoprune.latency.backends import get_backend

    ok, why = get_backend("tflite").available()
    if not ok:
        pytest.skip(why)
    from autoprune.latency.devices import load_device
    from autoprune.latency.lut import has_table, load_table

    root = tmp_path / "profiles"
    _device(root, "phone", "tflite", local=False)
    monkeypatch.setenv("AUTOPRUNE_PROFILES", str(root))
    args = _profile_args(tmp_path, "phone", calibration=1)  # each calibration model (random, uniform, corner) is a litert-torch conversion
    bundle = tmp_path / "bundle"
    assert main([*args, "--bundle", str(bundle)]) == 0
    assert not has_table(load_device("phone"))  # writing the bundle timed nothing and left the device alone
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["settings"] == {"device": "phone", "threads": 1, "warmup": 5, "repeats": 40, "use_xnnpack": True}
    assert len(manifest["models"]) == len(list((bundle / "models").glob("*.tflite"))) > 5

    results = _benchmark_model_stand_in(bundle)
    assert main([*args, "--import", str(results)]) == 0
    table = load_table(load_device("phone"))
    assert len(table.rows) > 5 and len(table.meta.calibration) == 1 + 2 + 2  # one random plan, uniform 0 and 0.5, two corners
    assert table.meta.machine["tool"] == "benchmark_model"
    parsed = {run.median_ms for f in results.glob("*.txt") for run in parse_benchmark_output(f.read_text())}
    assert {round(r["median_ms"], 6) for r in table.rows.values()} <= {round(v, 6) for v in parsed}
