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
import os
import re
import shlex
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from .backends import LatencyStats
from .errors import AutopruneError

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

    The agent feeds random inputs of the file's own shape, so ``example_input`` is only
    checked for its shape's sake by the caller and not sent.
    """

    client: AgentClient

    def __call__(self, path: Path, example_input: np.ndarray, threads: int = 1, warmup: int = 20, repeats: int = 100) -> LatencyStats:
        return self.client.time_file(path, threads, warmup, repeats)

    def describe(self) -> dict[str, Any]:
        """What the table or card should record about where it was measured."""
        info = self.client.info()
        return {"agent": self.client.url, **{k: info.get(k) for k in ("runtimes", "machine", "processor", "system", "cpus")}}
