"""Latency from real target devices that cannot run the search.

Two ways to reach a device:

* **Through the profiling agent** (:mod:`autoprune.agent`, running on the device):
  :class:`AgentClient` sends model files over HTTP and :class:`AgentMeasurer` has the
  signature of a device backend's ``measure``, so anything that times an exported file
  (profiling a latency table, verifying an export) can time it on the device instead.
* **Through TFLite's ``benchmark_model``** (phones over adb): :func:`write_bundle` writes
  the model files, a manifest and a script that pushes them and runs ``benchmark_model``
  on each; :func:`parse_benchmark_output` and :func:`read_results` read its output back.
"""
from __future__ import annotations

import base64
import json
import math
import os
import re
import shlex
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from autoprune.core.errors import AutopruneError
from autoprune.latency.backends import LatencyStats

TOKEN_ENV = "AUTOPRUNE_AGENT_TOKEN"
#: Formats by file suffix, as the agent names them.
FORMATS = {".tflite": "tflite", ".onnx": "onnx"}


def agent_token(token: Optional[str]) -> Optional[str]:
    """The token given on the command line, else ``$AUTOPRUNE_AGENT_TOKEN``."""
    return token or os.environ.get(TOKEN_ENV) or None


class AgentClient:
    """Talks to one profiling agent at ``url`` (e.g. ``http://192.168.1.20:8765``)."""

    def __init__(self, url: str, token: Optional[str] = None, timeout_s: float = 300.0) -> None:
        if not re.match(r"^https?://", url):
            raise AutopruneError(f"agent URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._info: Optional[dict[str, Any]] = None

    def _request(self, path: str, payload: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            body = err.read()
            try:
                message = json.loads(body).get("error", "")
            except (ValueError, AttributeError):
                message = body[:200].decode(errors="replace")
            raise AutopruneError(f"agent {self.url}{path} answered {err.code}: {message}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise AutopruneError(f"cannot reach the agent at {self.url}: {reason} (is `python -m autoprune.agent serve` running there?)") from None

    def info(self) -> dict[str, Any]:
        """The agent's runtimes, size limit and machine (cached)."""
        if self._info is None:
            self._info = self._request("/v1/info")
        return self._info

    def time_file(self, path: Path, threads: int = 1, warmup: int = 20, repeats: int = 100) -> LatencyStats:
        """Time one model file on the device; its format comes from the suffix."""
        path = Path(path)
        fmt = FORMATS.get(path.suffix)
        if fmt is None:
            raise AutopruneError(f"{path}: the agent times {', '.join(FORMATS)} files, not {path.suffix or 'files without a suffix'}")
        info = self.info()
        runtime = info.get("runtimes", {}).get(fmt, {})
        if "package" not in runtime:
            raise AutopruneError(f"the agent at {self.url} cannot run {fmt} models: {runtime.get('error', 'no runtime')}")
        size = path.stat().st_size
        if size > info.get("max_bytes", size):
            raise AutopruneError(f"{path} is {size} bytes, over the agent's limit of {info['max_bytes']} (its --max-bytes)")
        reply = self._request(
            "/v1/time",
            {"model_b64": base64.b64encode(path.read_bytes()).decode(), "format": fmt, "threads": threads, "warmup": warmup, "repeats": repeats, "name": path.name},
        )
        return LatencyStats(reply["median_ms"], reply["p10_ms"], reply["p90_ms"], reply["repeats"])


@dataclass
class AgentMeasurer:
    """A ``measure(path, example_input, threads, warmup, repeats)`` that times on the agent.

    The agent feeds random inputs of the file's own shapes and dtypes, so
    ``example_input`` is not sent.
    """

    client: AgentClient

    def __call__(self, path: Path, example_input: np.ndarray, threads: int = 1, warmup: int = 20, repeats: int = 100) -> LatencyStats:
        return self.client.time_file(path, threads, warmup, repeats)

    def describe(self) -> dict[str, Any]:
        """What the table or card should record about where it was measured."""
        info = self.client.info()
        return {"agent": self.client.url, **{k: info.get(k) for k in ("runtimes", "machine", "processor", "system", "cpus")}}


# --- TFLite benchmark_model output -------------------------------------------------------

_STATS = re.compile(r"\bcount=(\d+)\s+first=\S+.*")
_FIELD = re.compile(r"(\w+)=([-+0-9.eE]+)")
_GRAPH = re.compile(r"Graph: \[(.*?)\]")
_SUMMARY = re.compile(r"Inference timings in us: Init: ([-+0-9.eE]+), First inference: ([-+0-9.eE]+)")
#: Start of one run of the tool; a log may hold several runs.
_RUN_START = re.compile(r"\bSTARTING!")


@dataclass(frozen=True)
class BenchmarkRun:
    """One run of ``benchmark_model`` as its output reports it, in milliseconds.

    ``statistic`` says what ``median_ms`` holds: the tool's ``median=`` where it prints
    percentiles (TFLite 2.1x and later), else its mean ``avg=``. The spread is the tool's
    ``p5=``/``p95=`` where printed, else mean -/+ 1.28 standard deviations (the 10th/90th
    percentiles of a normal distribution) clipped to ``min``/``max``.
    """

    graph: Optional[str]
    count: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    statistic: str
    init_ms: Optional[float] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def stats(self) -> LatencyStats:
        if self.error is not None:
            raise AutopruneError(f"benchmark_model failed on {self.graph or 'this model'}: {self.error}")
        return LatencyStats(self.median_ms, self.p10_ms, self.p90_ms, self.count)


def _split_runs(text: str) -> list[str]:
    """The text cut at the start of each line announcing a run (``STARTING!``)."""
    starts = sorted({text.rfind("\n", 0, m.start()) + 1 for m in _RUN_START.finditer(text)})
    if not starts:
        return [text]
    cuts = [0, *starts[1:], len(text)]
    return [text[a:b] for a, b in zip(cuts, cuts[1:])]


def _parse_run(text: str) -> Optional[BenchmarkRun]:
    graph = _GRAPH.search(text)
    graph_path = graph.group(1) if graph else None
    lines = [line for line in text.splitlines() if "Timings (microseconds)" not in line]  # op-profiling totals, not the model's
    stats_lines = [line for line in lines if _STATS.search(line)]
    summary = _SUMMARY.search(text)
    init_ms = float(summary.group(1)) / 1e3 if summary else None
    if not stats_lines:
        errors = [line.strip() for line in lines if re.search(r"\bERROR\b|failed", line, re.IGNORECASE)]
        if graph_path is None and not errors:
            return None
        return BenchmarkRun(graph_path, 0, math.nan, math.nan, math.nan, "none", init_ms, "; ".join(errors) or "no timing statistics in the output")
    fields = {k: float(v) for k, v in _FIELD.findall(_STATS.search(stats_lines[-1]).group(0))}
    if "median" in fields:
        centre, statistic = fields["median"], "median"
    else:
        centre, statistic = fields["avg"], "mean"
    if "p5" in fields and "p95" in fields:
        low, high = fields["p5"], fields["p95"]
    else:
        spread = 1.2816 * fields.get("std", 0.0)
        low = max(fields.get("min", centre - spread), fields["avg"] - spread)
        high = min(fields.get("max", centre + spread), fields["avg"] + spread)
    return BenchmarkRun(graph_path, int(fields["count"]), centre / 1e3, low / 1e3, high / 1e3, statistic, init_ms)


def parse_benchmark_output(text: str) -> list[BenchmarkRun]:
    """Every run in the text ``benchmark_model`` printed (one run, or several concatenated,
    with or without ``INFO:`` / logcat prefixes and shell prompts)."""
    runs = [_parse_run(piece) for piece in _split_runs(text)]
    return [r for r in runs if r is not None]


# --- Bundles for phones: files + manifest + script, results read back -------------------

MANIFEST = "manifest.json"
RUN_SCRIPT = "run_benchmarks.sh"
MODELS_DIR = "models"
RESULTS_DIR = "results"
#: Where the script puts the models on an Android device.
DEVICE_DIR = "/data/local/tmp/autoprune"

_SCRIPT = """#!/bin/sh
# Time every model of this bundle with TensorFlow Lite's benchmark_model.
#
# Android (adb): put benchmark_model on the phone first, e.g.
#   adb push benchmark_model /data/local/tmp/ && adb shell chmod +x /data/local/tmp/benchmark_model
# then run:  sh {script}
# A Linux board with benchmark_model installed:  ADB= BENCHMARK_MODEL=/path/to/benchmark_model sh {script}
#
# Each model's output goes to {results}/NAME.txt; read them back with
#   autoprune profile --device {device} ... --import {results}
set -u
cd "$(dirname "$0")"
ADB=${{ADB-adb}}
BENCHMARK_MODEL=${{BENCHMARK_MODEL:-/data/local/tmp/benchmark_model}}
FLAGS="{flags}"
mkdir -p {results}
if [ -n "$ADB" ]; then
  REMOTE=${{REMOTE_DIR:-{device_dir}}}
  $ADB shell mkdir -p "$REMOTE" || exit 1
  $ADB push {models}/. "$REMOTE/" >/dev/null || exit 1
else
  REMOTE={models}
fi
failed=0
total=$(ls {models} | wc -l)
i=0
for f in {models}/*.tflite; do
  name=$(basename "$f" .tflite)
  i=$((i + 1))
  echo "[$i/$total] $name" >&2
  if [ -n "$ADB" ]; then
    $ADB shell "$BENCHMARK_MODEL --graph=$REMOTE/$name.tflite $FLAGS" > "{results}/$name.txt" 2>&1 || failed=$((failed + 1))
  else
    "$BENCHMARK_MODEL" --graph="$REMOTE/$name.tflite" $FLAGS > "{results}/$name.txt" 2>&1 || failed=$((failed + 1))
  fi
done
if [ -n "$ADB" ]; then $ADB shell rm -r "$REMOTE"; fi
echo "done: $total models, $failed failed; results in {results}/" >&2
"""


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Bundle:
    """A folder of ``.tflite`` files to time on a phone, with its manifest and run script.

    Files are named by content (the first 16 hex digits of their SHA-256), so the same
    model added twice is timed once, and results are matched to models by content.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.models: dict[str, dict[str, Any]] = {}
        self.settings: dict[str, Any] = {}

    @property
    def manifest_file(self) -> Path:
        return self.path / MANIFEST

    @classmethod
    def create(cls, path: Path | str, device: str, threads: int, warmup: int, repeats: int, use_xnnpack: bool = True) -> "Bundle":
        bundle = cls(path)
        if bundle.manifest_file.exists():
            raise AutopruneError(f"{bundle.path} already holds a bundle ({MANIFEST}); choose an empty folder")
        (bundle.path / MODELS_DIR).mkdir(parents=True, exist_ok=True)
        bundle.settings = {"device": device, "threads": threads, "warmup": warmup, "repeats": repeats, "use_xnnpack": use_xnnpack}
        return bundle

    @classmethod
    def load(cls, path: Path | str) -> "Bundle":
        bundle = cls(path)
        if not bundle.manifest_file.is_file():
            raise AutopruneError(f"{bundle.path}: no {MANIFEST}; give the folder written by `autoprune profile --bundle`")
        data = json.loads(bundle.manifest_file.read_text())
        bundle.settings = data["settings"]
        bundle.models = {m["sha256"]: m for m in data["models"]}
        return bundle

    def add(self, path: Path, **about: Any) -> str:
        """Copy a ``.tflite`` file in (once per content); returns its name in the bundle."""
        path = Path(path)
        if path.suffix != ".tflite":
            raise AutopruneError(f"{path}: benchmark_model bundles hold .tflite files (the device's backend must be tflite)")
        digest = _sha256(path)
        if digest not in self.models:
            name = f"{digest[:16]}.tflite"
            (self.path / MODELS_DIR / name).write_bytes(path.read_bytes())
            self.models[digest] = {"file": f"{MODELS_DIR}/{name}", "sha256": digest, "size_bytes": path.stat().st_size, **about}
        return self.models[digest]["file"]

    def flags(self) -> str:
        s = self.settings
        return (
            f"--num_threads={s['threads']} --warmup_runs={s['warmup']} --num_runs={s['repeats']} "
            f"--min_secs=0 --warmup_min_secs=0 --use_xnnpack={'true' if s['use_xnnpack'] else 'false'}"
        )

    def write(self) -> Path:
        """Write the manifest and the run script; returns the script's path."""
        manifest = {"format": 1, "settings": self.settings, "command": f"benchmark_model --graph=FILE {self.flags()}", "models": list(self.models.values())}
        self.manifest_file.write_text(json.dumps(manifest, indent=2))
        script = self.path / RUN_SCRIPT
        script.write_text(
            _SCRIPT.format(
                script=RUN_SCRIPT, results=RESULTS_DIR, models=MODELS_DIR, device=shlex.quote(str(self.settings["device"])),
                device_dir=DEVICE_DIR, flags=self.flags(),
            )
        )
        script.chmod(0o755)
        return script

    def results(self, source: Path | str) -> dict[str, BenchmarkRun]:
        """The parsed run of each bundled model (by SHA-256) from ``source``: the results
        folder the script wrote, or any text file(s) of benchmark_model output whose
        ``Graph: [...]`` lines name the bundle's files."""
        source = Path(source)
        if not source.exists():
            raise AutopruneError(f"{source}: no such results file or folder")
        files = sorted(source.glob("*.txt")) if source.is_dir() else [source]
        by_name = {Path(m["file"]).stem: digest for digest, m in self.models.items()}
        found: dict[str, BenchmarkRun] = {}
        for file in files:
            for run in parse_benchmark_output(file.read_text(errors="replace")):
                stem = Path(run.graph).stem if run.graph else file.stem
                digest = by_name.get(stem)
                if digest is None:
                    raise AutopruneError(f"{file}: result for {run.graph or file.name!r}, which is not a model of the bundle {self.path}")
                found[digest] = run
        return found


@dataclass
class BundleMeasurer:
    """A ``measure`` that adds each file to a bundle instead of timing it.

    It returns a placeholder (1 ms) so that a profiling pass can run through; that pass
    must write to a scratch table, never the device's.
    """

    bundle: Bundle

    def __call__(self, path: Path, example_input: Any = None, threads: int = 1, warmup: int = 20, repeats: int = 100) -> LatencyStats:
        self.bundle.add(path)
        return LatencyStats(1.0, 1.0, 1.0, 1)

    def describe(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle.path)}


@dataclass
class ResultsMeasurer:
    """A ``measure`` that answers from benchmark_model results read back from a bundle,
    matching each file by content."""

    bundle: Bundle
    runs: Mapping[str, BenchmarkRun]

    @classmethod
    def read(cls, bundle_dir: Path | str, results: Path | str) -> "ResultsMeasurer":
        bundle = Bundle.load(bundle_dir)
        return cls(bundle, bundle.results(results))

    def __call__(self, path: Path, example_input: Any = None, threads: int = 1, warmup: int = 20, repeats: int = 100) -> LatencyStats:
        digest = _sha256(path)
        entry = self.bundle.models.get(digest)
        if entry is None:
            raise AutopruneError(
                f"a model to time is not in the bundle {self.bundle.path}: the device, table or search space changed since "
                "the bundle was written; write a new bundle with --bundle"
            )
        run = self.runs.get(digest)
        if run is None:
            raise AutopruneError(f"no benchmark_model result for {entry['file']} of bundle {self.bundle.path}; run {RUN_SCRIPT} again or add its output")
        return run.stats()

    def missing(self) -> list[str]:
        """Bundled files without a result."""
        return sorted(m["file"] for digest, m in self.bundle.models.items() if digest not in self.runs)

    def describe(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle.path), "tool": "benchmark_model", "settings": self.bundle.settings}


# --- Profiling a device through a bundle: the profiler's own pass, twice ------------------


def _scratch_device(device: Any, folder: Path) -> Any:
    """A copy of ``device`` whose profile folder is ``folder``, holding a copy of its table."""
    import shutil

    if device.path is not None and device.path.is_dir():
        shutil.copytree(device.path, folder, dirs_exist_ok=True)
    scratch = device.model_copy()
    scratch._path = folder
    return scratch


def bundle_profile(device: Any, bundle_dir: Path | str, profile_args: Mapping[str, Any]) -> tuple[Bundle, Path]:
    """Write the bundle that profiling ``device`` needs: every file the profiler would time.

    The profiler (:func:`autoprune.latency.lut.profile`, with ``profile_args`` its model, example
    input, units, space and options) runs against a scratch copy of the device's table with
    :class:`BundleMeasurer`, so it asks for exactly the kernel and calibration models the
    real table lacks, and the device's table is untouched. Returns the bundle and its script.
    """
    import tempfile

    from autoprune.latency.lut import profile

    if device.backend != "tflite":
        raise AutopruneError(f"device {device.name!r} runs {device.backend}; benchmark_model bundles are for tflite devices (use --remote with the agent otherwise)")
    bundle = Bundle.create(bundle_dir, device.name, device.threads, device.warmup, device.repeats)
    with tempfile.TemporaryDirectory(prefix="autoprune-bundle-") as tmp:
        profile(_scratch_device(device, Path(tmp) / device.name), measurer=BundleMeasurer(bundle), **profile_args)
    return bundle, bundle.write()


def results_measurer(results: Path | str, device: str, bundle_dir: Optional[Path | str] = None) -> ResultsMeasurer:
    """The :class:`ResultsMeasurer` for ``device`` from benchmark_model ``results``; the bundle
    is ``bundle_dir``, else the folder holding ``results`` (or ``results`` itself)."""
    results = Path(results)
    if bundle_dir is None:
        candidates = [results, results.parent] if results.is_dir() else [results.parent, results.parent.parent]
        bundle_dir = next((c for c in candidates if (c / MANIFEST).is_file()), None)
        if bundle_dir is None:
            raise AutopruneError(f"no {MANIFEST} beside {results}; give the bundle folder with --bundle")
    measurer = ResultsMeasurer.read(bundle_dir, results)
    written_for = measurer.bundle.settings.get("device")
    if written_for != device:
        raise AutopruneError(f"bundle {measurer.bundle.path} was written for device {written_for!r}, not {device!r}")
    return measurer


def import_profile(device: Any, results: Path | str, profile_args: Mapping[str, Any], bundle_dir: Optional[Path | str] = None) -> Any:
    """Fill ``device``'s table from benchmark_model results of a bundle written by
    :func:`bundle_profile`: the same profiling pass, answered from the results (matched by
    file content). Returns the profiler's report."""
    from autoprune.latency.lut import profile

    return profile(device, measurer=results_measurer(results, device.name, bundle_dir), **profile_args)
