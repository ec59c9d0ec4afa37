"""The autoprune profiling agent: times model files on a target device for a remote host.

It runs on the device itself (a phone under Termux, an edge board, another server) and
needs only the Python standard library, NumPy and one runtime: ``ai-edge-litert`` or
``tflite-runtime`` for ``.tflite`` files, ``onnxruntime`` for ``.onnx`` files. It imports
nothing else from autoprune, so this one file can be copied to the device and run as::

    python agent.py serve --host 0.0.0.0 --port 8765 --token SECRET

or, where autoprune is installed, ``python -m autoprune.agent serve``.

Protocol (HTTP/1.1, JSON bodies):

* ``GET /v1/info`` -> the agent's protocol version, size limit and detected runtimes.
* ``POST /v1/time`` with ``{"model_b64": base64 of the file, "format": "tflite" | "onnx",
  "threads": 1, "warmup": 20, "repeats": 100, "name": "any label"}`` -> ``{"median_ms",
  "p10_ms", "p90_ms", "repeats", "runtime", ...}``. The model is loaded from memory,
  run on random inputs of its own shapes and dtypes (``warmup`` untimed calls, then
  ``repeats`` timed ones, the same statistics as autoprune's local timing), and dropped:
  nothing is written to disk.

Every request must carry ``Authorization: Bearer TOKEN`` when the agent has a token. The
agent binds to loopback by default and refuses to bind elsewhere without a token. Requests
whose model is larger than ``--max-bytes`` are refused before they are read. Errors are
JSON ``{"error": "..."}`` with a 4xx status; the agent keeps serving after any of them.
Connections are served concurrently by a bounded number of workers (``--workers``), each
request must arrive whole within ``--request-timeout-s``, and the body of a client that
is not authorised is not read; models are loaded and timed one at a time, so timings
never overlap.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import gc
import hmac
import importlib
import ipaddress
import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from typing import Any, Callable, Optional

PROTOCOL = 1
DEFAULT_PORT = 8765
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
TOKEN_ENV = "AUTOPRUNE_AGENT_TOKEN"
#: Room for the JSON fields around the base64 model in a request body.
_JSON_SLACK = 64 * 1024
#: Connections served at once (one worker thread each), and a request's deadline.
DEFAULT_WORKERS = 8
DEFAULT_REQUEST_TIMEOUT_S = 60.0
_MAX_REPEATS = 100_000
_MAX_THREADS = 256

#: Format -> candidate runtimes in order of preference: (import name, distribution name).
RUNTIMES: dict[str, list[tuple[str, str]]] = {
    "tflite": [("ai_edge_litert.interpreter", "ai-edge-litert"), ("tflite_runtime.interpreter", "tflite-runtime"), ("tensorflow", "tensorflow")],
    "onnx": [("onnxruntime", "onnxruntime")],
}


class AgentError(Exception):
    """A request the agent refuses; ``status`` is the HTTP status it answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # metadata may be missing for vendored or system packages
        return "unknown"


def _no_telemetry() -> None:
    """Keep ONNX Runtime from writing a telemetry session file and device id (it does on
    import since 1.2x): the agent leaves nothing behind and reports nothing. Must run
    before onnxruntime is first imported; a user's explicit setting wins."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def detect_runtimes() -> dict[str, dict[str, Any]]:
    """Which runtime serves each format here: ``{format: {"package", "version"}}`` or an ``"error"``."""
    _no_telemetry()
    found: dict[str, dict[str, Any]] = {}
    for fmt, candidates in RUNTIMES.items():
        problems = []
        for module, dist in candidates:
            try:
                importlib.import_module(module)
            except Exception as exc:  # ImportError, or a broken binary wheel
                problems.append(f"{dist}: {type(exc).__name__}: {exc}")
                continue
            found[fmt] = {"package": dist, "version": _version(dist)}
            break
        else:
            found[fmt] = {"error": "; ".join(problems)}
    return found


def sniff_format(model: bytes) -> Optional[str]:
    """``"tflite"`` if the bytes carry the TFLite flatbuffer identifier, else None."""
    return "tflite" if model[4:8] == b"TFL3" else None


def _random_input(shape: Any, dtype: Any, rng: Any) -> Any:
    import numpy as np

    shape = tuple(int(d) if isinstance(d, (int, np.integer)) and int(d) > 0 else 1 for d in shape)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dtype)
    raise AgentError(422, f"model input of dtype {dtype} is not supported by the agent")


_ONNX_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(bool)": "bool",
}


def _load_tflite(model: bytes, threads: int) -> tuple[Callable[[], None], str, list[dict[str, Any]]]:
    """An invoke function for a ``.tflite`` model with random inputs set, trying each LiteRT package."""
    import numpy as np

    problems = []
    for module, dist in RUNTIMES["tflite"]:
        try:
            mod = importlib.import_module(module)
        except Exception as exc:
            problems.append(f"{dist}: not importable ({exc})")
            continue
        interpreter_cls = mod.lite.Interpreter if module == "tensorflow" else mod.Interpreter
        try:
            interpreter = interpreter_cls(model_content=model, num_threads=threads)
            interpreter.allocate_tensors()
        except Exception as exc:  # e.g. tflite-runtime 2.14 built against NumPy 1 fails here under NumPy 2
            problems.append(f"{dist}: {type(exc).__name__}: {exc}")
            continue
        rng = np.random.default_rng(0)
        inputs = []
        for detail in interpreter.get_input_details():
            x = _random_input(detail["shape"], detail["dtype"], rng)
            interpreter.set_tensor(detail["index"], x)
            inputs.append({"name": detail["name"], "shape": list(x.shape), "dtype": str(x.dtype)})
        return interpreter.invoke, f"{dist} {_version(dist)}", inputs
    raise AgentError(422, "cannot run this .tflite model here: " + "; ".join(problems))


def _load_onnx(model: bytes, threads: int, provider: str) -> tuple[Callable[[], None], str, list[dict[str, Any]]]:
    """A run function for an ``.onnx`` model with random inputs, with autoprune's session options."""
    import numpy as np

    _no_telemetry()
    try:
        import onnxruntime as ort
    except Exception as exc:
        raise AgentError(422, f"cannot run .onnx models here: onnxruntime is not importable ({exc})") from None
    if provider not in ort.get_available_providers():
        raise AgentError(422, f"ONNX Runtime here has no {provider} (providers: {', '.join(ort.get_available_providers())})")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(model, options, providers=[provider])
    except Exception as exc:
        raise AgentError(422, f"onnxruntime cannot load the model: {type(exc).__name__}: {exc}") from None
    rng = np.random.default_rng(0)
    feeds, inputs = {}, []
    for node in session.get_inputs():
        if node.type not in _ONNX_DTYPES:
            raise AgentError(422, f"model input {node.name!r} has type {node.type}, which the agent does not feed")
        x = _random_input(node.shape, _ONNX_DTYPES[node.type], rng)
        feeds[node.name] = x
        inputs.append({"name": node.name, "shape": list(x.shape), "dtype": str(x.dtype)})

    def run() -> None:
        session.run(None, feeds)

    return run, f"onnxruntime {ort.__version__} {provider}", inputs


def time_call(run: Callable[[], None], warmup: int, repeats: int) -> dict[str, float]:
    """Median and 10th/90th percentile wall time of ``run()`` in ms after ``warmup`` calls.

    The same statistics as :func:`autoprune.latency.backends.base.time_runner`, so a remote table
    and a local one are comparable.
    """
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return {"median_ms": statistics.median(times), "p10_ms": q[0], "p90_ms": q[-1], "repeats": len(times)}


def request_limit(max_bytes: int) -> int:
    """Largest request body (bytes) for a model of ``max_bytes``: its base64 and the JSON around it."""
    return 4 * ((max_bytes + 2) // 3) + _JSON_SLACK


def _int_field(request: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = request.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AgentError(400, f"field {key!r} must be an integer in [{low}, {high}], got {value!r}")
    return value


def time_model(request: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """Serve one ``/v1/time`` request: decode, load from memory, time, drop."""
    if not isinstance(request, dict):
        raise AgentError(400, f"the request body must be a JSON object, got {type(request).__name__}")
    unknown = sorted(set(request) - {"model_b64", "format", "threads", "warmup", "repeats", "name", "provider"})
    if unknown:
        raise AgentError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; expected model_b64, format, threads, warmup, repeats, name, provider")
    encoded = request.get("model_b64")
    if not isinstance(encoded, str) or not encoded:
        raise AgentError(400, "field 'model_b64' (the model file, base64-encoded) is required")
    try:
        model = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AgentError(400, f"field 'model_b64' is not valid base64: {exc}") from None
    if len(model) > max_bytes:
        raise AgentError(413, f"model is {len(model)} bytes, over this agent's limit of {max_bytes} bytes (--max-bytes)")
    fmt = request.get("format") or sniff_format(model)
    if fmt not in RUNTIMES:
        raise AgentError(400, f"field 'format' must be one of {', '.join(RUNTIMES)}, got {fmt!r}")
    threads = _int_field(request, "threads", 1, 1, _MAX_THREADS)
    warmup = _int_field(request, "warmup", 20, 0, _MAX_REPEATS)
    repeats = _int_field(request, "repeats", 100, 1, _MAX_REPEATS)
    provider = request.get("provider", "CPUExecutionProvider")
    if fmt == "tflite":
        if sniff_format(model) != "tflite":
            raise AgentError(400, "format is 'tflite' but the file has no TFLite identifier (bytes 4..8 should be b'TFL3')")
        run, runtime, inputs = _load_tflite(model, threads)
    else:
        run, runtime, inputs = _load_onnx(model, threads, str(provider))
    try:
        stats = time_call(run, warmup, repeats)
    except Exception as exc:
        raise AgentError(422, f"the model failed while running: {type(exc).__name__}: {exc}") from None
    finally:
        del run, model
        gc.collect()
    return {"name": request.get("name"), "format": fmt, "runtime": runtime, "threads": threads, "warmup": warmup, "inputs": inputs, **stats}


def agent_info(max_bytes: int, runtimes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    return {
        "agent": "autoprune-agent",
        "protocol": PROTOCOL,
        "max_bytes": max_bytes,
        "runtimes": runtimes,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "system": platform.platform(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


class AgentServer(ThreadingMixIn, HTTPServer):
    """Serves up to ``workers`` connections at once, each request within ``request_timeout_s``
    from its first byte until its body is read; models are loaded and timed one at a time
    (``timing_lock``), so timings never overlap. Settings live on the server.

    A client that connects and sends nothing, or drips a byte at a time, holds one worker
    until its deadline and no one else: the others are served meanwhile.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        token: Optional[str],
        max_bytes: int,
        quiet: bool = False,
        workers: int = DEFAULT_WORKERS,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        self.token = token
        self.max_bytes = max_bytes
        self.quiet = quiet
        self.request_timeout_s = request_timeout_s
        self.timing_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(workers)
        self.runtimes = detect_runtimes()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, AgentHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()  # at most ``workers`` connections in hand; the next wait in the listen backlog
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class AgentHandler(BaseHTTPRequestHandler):
    """Routes ``/v1/info`` and ``/v1/time``; every failure is a JSON error reply."""

    server: AgentServer
    protocol_version = "HTTP/1.1"
    server_version = f"autoprune-agent/{PROTOCOL}"

    def handle_one_request(self) -> None:
        """One request under its deadline: when the request line, headers and body have not
        all arrived ``request_timeout_s`` after the first wait began, the connection is shut
        (a per-read timeout would not stop a client sending one byte at a time)."""
        self._deadline = threading.Timer(self.server.request_timeout_s, self._expire)
        self._deadline.daemon = True
        self._deadline.start()
        try:
            super().handle_one_request()
        finally:
            self._deadline.cancel()

    def _expire(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _received(self) -> None:
        """The whole request is in: the deadline no longer applies (timing may take long)."""
        self._deadline.cancel()

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        self._body_read = False
        self._authorised = False
        try:
            self._authorise()
            self._authorised = True
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/v1/info":
                if method != "GET":
                    raise AgentError(405, f"{path} takes GET, not {method}")
                self._received()
                self._reply(200, agent_info(self.server.max_bytes, self.server.runtimes))
            elif path == "/v1/time":
                if method != "POST":
                    raise AgentError(405, f"{path} takes POST, not {method}")
                request = self._json_body()
                with self.server.timing_lock:
                    reply = time_model(request, self.server.max_bytes)
                self._reply(200, reply)
            else:
                raise AgentError(404, f"no endpoint {path!r}; endpoints: GET /v1/info, POST /v1/time")
        except AgentError as exc:
            self._reply(exc.status, {"error": str(exc)})
        except Exception as exc:  # the agent keeps serving whatever one request does
            self._reply(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})

    def _authorise(self) -> None:
        token = self.server.token
        if not token:
            return
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise AgentError(401, "missing or wrong token: send the header 'Authorization: Bearer TOKEN' with the agent's --token")

    def _json_body(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None:
            raise AgentError(411, "a Content-Length header is required")
        try:
            size = int(length)
        except ValueError:
            raise AgentError(400, f"Content-Length {length!r} is not an integer") from None
        if size < 0 or size > request_limit(self.server.max_bytes):
            raise AgentError(413, f"request of {size} bytes is over this agent's limit ({self.server.max_bytes}-byte model, --max-bytes)")
        body = self.rfile.read(size)
        self._body_read = True
        if len(body) == size:
            self._received()
        if len(body) != size:
            raise AgentError(400, f"the body ended after {len(body)} of {size} bytes")
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AgentError(400, f"the body is not valid JSON: {exc}") from None

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        if status >= 400 and not self._body_read:
            self._drain()
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _drain(self) -> None:
        """Discard a refused body so the client gets to read the reply: up to the agent's
        request limit once authorised, only a little for a client that is not (an
        unauthenticated body is never read in bulk); a larger one closes the connection."""
        try:
            size = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            size = 0
        if size <= 0:
            return
        cap = request_limit(self.server.max_bytes) if self._authorised else _JSON_SLACK
        if size > cap:
            self.close_connection = True
            return
        remaining = size
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)
        self._body_read = True

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) resolves only to loopback addresses."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def make_server(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: Optional[str] = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    quiet: bool = False,
    workers: int = DEFAULT_WORKERS,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> AgentServer:
    """Bind the agent; a non-loopback address without a token is refused."""
    if not token and not is_loopback(host):
        raise SystemExit(
            f"refusing to serve on {host!r} without a token: the agent runs any model it is sent. "
            f"Pass --token TOKEN (or set {TOKEN_ENV}), or bind to 127.0.0.1"
        )
    if max_bytes < 1:
        raise SystemExit(f"--max-bytes must be positive, got {max_bytes}")
    if workers < 1:
        raise SystemExit(f"--workers must be at least 1, got {workers}")
    if not request_timeout_s > 0:
        raise SystemExit(f"--request-timeout-s must be positive, got {request_timeout_s}")
    return AgentServer((host, port), token or None, max_bytes, quiet, workers, request_timeout_s)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="autoprune-agent", description="Time model files on this device for autoprune.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve timing requests over HTTP")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    serve.add_argument("--token", default=os.environ.get(TOKEN_ENV), help=f"shared secret clients must send (default: ${TOKEN_ENV}); required off loopback")
    serve.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest model file accepted, in bytes")
    serve.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help=f"connections served at once (default {DEFAULT_WORKERS}); timings still run one at a time")
    serve.add_argument("--request-timeout-s", type=float, default=DEFAULT_REQUEST_TIMEOUT_S, help=f"a request must arrive whole within this (default {DEFAULT_REQUEST_TIMEOUT_S:g} s)")
    serve.add_argument("--quiet", action="store_true", help="no per-request log lines")
    sub.add_parser("info", help="print the runtimes this device has, as JSON")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(json.dumps(agent_info(DEFAULT_MAX_BYTES, detect_runtimes()), indent=2))
        return 0
    server = make_server(args.host, args.port, args.token, args.max_bytes, args.quiet, args.workers, args.request_timeout_s)
    usable = ", ".join(f"{fmt}={r['package']} {r['version']}" for fmt, r in server.runtimes.items() if "package" in r) or "none"
    print(f"autoprune agent serving on {server.url} (runtimes: {usable}; max {server.max_bytes} bytes; token {'required' if server.token else 'off'})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
