"""The profiling agent as a user runs it: a copied single file started as its own process,
talked to over real HTTP on loopback, timing real ONNX Runtime and LiteRT sessions."""
from __future__ import annotations

import base64
import http.client
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import autoprune.agent
from autoprune.core.errors import AutopruneError
from autoprune.latency.backends import get_backend
from autoprune.latency.remote import AgentClient, AgentMeasurer

TOKEN = "s3cret-token"
MAX_BYTES = 200_000


def _start(script: Path, cwd: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(script), "serve", "--port", "0", "--quiet", *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    line = proc.stdout.readline()
    if "serving on" not in line:
        proc.kill()
        raise AssertionError(f"agent did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, line.split("serving on ", 1)[1].split()[0]


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """The agent file copied out of the package (as a user copies it to a device), started
    with its own working and temporary folders so that anything it writes would show."""
    root = tmp_path_factory.mktemp("agent")
    script = root / "agent.py"
    shutil.copy(autoprune.agent.__file__, script)
    work, tmp = root / "cwd", root / "tmp"
    work.mkdir()
    tmp.mkdir()
    env = {**__import__("os").environ, "TMPDIR": str(tmp)}
    proc, url = _start(script, work, "--token", TOKEN, "--max-bytes", str(MAX_BYTES), env=env)
    yield {"url": url, "proc": proc, "cwd": work, "tmp": tmp}
    proc.terminate()
    proc.wait(timeout=10)


def _conv(width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)).eval()


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    return get_backend("onnxruntime-cpu").export(_conv(), torch.randn(1, 1, 28, 28), tmp_path_factory.mktemp("m") / "conv.onnx")


def _raw(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    return response.status, payload


def _auth() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_agent_module_imports_neither_torch_nor_autoprune(tmp_path):
    """A device needs only NumPy and a runtime: the copied file must not pull in torch."""
    shutil.copy(autoprune.agent.__file__, tmp_path / "agent.py")
    code = (
        "import sys, agent, json; found = agent.detect_runtimes(); "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert not any(m.startswith('autoprune') for m in sys.modules), 'autoprune imported'; "
        "print(json.dumps(found))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    runtimes = json.loads(done.stdout)
    assert runtimes["onnx"]["package"] == "onnxruntime"
    # `python -m autoprune.agent` goes through the package __init__, which must stay lazy.
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "autoprune.agent", "info"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["agent"] == "autoprune-agent"
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported


def test_agent_times_onnx_like_local_onnxruntime(agent, onnx_file):
    client = AgentClient(agent["url"], TOKEN)
    info = client.info()
    assert info["protocol"] == autoprune.agent.PROTOCOL and info["max_bytes"] == MAX_BYTES
    local = get_backend("onnxruntime-cpu")
    measure = AgentMeasurer(client)
    remote_ms, local_ms = [], []
    for _ in range(3):  # interleaved, as timings on a shared machine drift
        remote_ms.append(measure(onnx_file, None, 1, 20, 200).median_ms)
        local_ms.append(local.measure(onnx_file, torch.randn(1, 1, 28, 28).numpy(), 1, 20, 200).median_ms)
    stats = measure(onnx_file, None, 1, 5, 30)
    assert stats.repeats == 30 and 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms
    ratio = sorted(remote_ms)[1] / sorted(local_ms)[1]
    assert 0.5 < ratio < 2.0, f"agent {remote_ms} vs local {local_ms}"


@pytest.mark.tflite
def test_agent_times_tflite_and_keeps_nothing(agent, tmp_path):
    tflite = get_backend("tflite")
    ok, why = tflite.available()
    if not ok:
        pytest.skip(why)
    path = tflite.export(_conv(8), torch.randn(1, 1, 16, 16), tmp_path / "conv.tflite")
    stats = AgentClient(agent["url"], TOKEN).time_file(path, threads=1, warmup=5, repeats=40)
    assert stats.repeats == 40 and stats.median_ms > 0
    status, reply = _raw(
        agent["url"], "POST", "/v1/time", json.dumps({"model_b64": base64.b64encode(path.read_bytes()).decode(), "repeats": 5}).encode(), _auth()
    )
    assert status == 200 and reply["format"] == "tflite" and reply["inputs"][0]["shape"] == [1, 1, 16, 16]
    assert reply["runtime"].startswith(("ai-edge-litert", "tflite-runtime", "tensorflow"))
    assert list(agent["cwd"].iterdir()) == [] and list(agent["tmp"].iterdir()) == []


def test_wrong_or_missing_token_is_refused_and_agent_keeps_serving(agent, onnx_file):
    with pytest.raises(AutopruneError, match="answered 401: missing or wrong token"):
        AgentClient(agent["url"], "wrong").time_file(onnx_file)
    status, reply = _raw(agent["url"], "GET", "/v1/info")
    assert status == 401 and "Authorization: Bearer" in reply["error"]
    assert AgentClient(agent["url"], TOKEN).info()["agent"] == "autoprune-agent"


def test_oversize_model_is_refused_before_it_is_read(agent, onnx_file):
    body = json.dumps({"model_b64": "A" * (2 * MAX_BYTES), "format": "onnx"}).encode()
    status, reply = _raw(agent["url"], "POST", "/v1/time", body, _auth())
    assert status == 413 and f"{MAX_BYTES}" in reply["error"]
    big = onnx_file.parent / "big.onnx"
    big.write_bytes(b"\0" * (MAX_BYTES + 1))
    with pytest.raises(AutopruneError, match="over the agent's limit"):
        AgentClient(agent["url"], TOKEN).time_file(big)
    decoded_over = base64.b64encode(b"\0" * (MAX_BYTES + 1)).decode()  # within the body slack, over the model limit
    status, reply = _raw(agent["url"], "POST", "/v1/time", json.dumps({"model_b64": decoded_over, "format": "onnx"}).encode(), _auth())
    assert status == 413 and "over this agent's limit" in reply["error"]
    assert AgentClient(agent["url"], TOKEN).time_file(onnx_file, repeats=5).median_ms > 0


@pytest.mark.parametrize(
    "method, path, body, status, message",
    [
        ("POST", "/v1/time", b"{not json", 400, "not valid JSON"),
        ("POST", "/v1/time", b"[1, 2]", 400, "must be a JSON object"),
        ("POST", "/v1/time", b'{"format": "onnx"}', 400, "'model_b64'"),
        ("POST", "/v1/time", b'{"model_b64": "@@@", "format": "onnx"}', 400, "not valid base64"),
        ("POST", "/v1/time", b'{"model_b64": "AAAA", "format": "pt2"}', 400, "'format' must be one of"),
        ("POST", "/v1/time", b'{"model_b64": "AAAA", "format": "onnx", "repeats": 0}', 400, "'repeats' must be an integer"),
        ("POST", "/v1/time", b'{"model_b64": "AAAA", "colour": "red"}', 400, "unknown field"),
        ("POST", "/v1/time", json.dumps({"model_b64": base64.b64encode(b"not a model" * 9).decode(), "format": "onnx"}).encode(), 422, "cannot load the model"),
        ("POST", "/v1/time", json.dumps({"model_b64": base64.b64encode(b"not a model" * 9).decode(), "format": "tflite"}).encode(), 400, "no TFLite identifier"),
        ("GET", "/v1/time", None, 405, "takes POST"),
        ("GET", "/v2/everything", None, 404, "no endpoint"),
    ],
)
def test_malformed_requests_get_clear_errors_and_agent_keeps_serving(agent, method, path, body, status, message):
    got, reply = _raw(agent["url"], method, path, body, _auth())
    assert got == status and message in reply["error"], reply
    assert _raw(agent["url"], "GET", "/v1/info", None, _auth())[0] == 200


def test_non_loopback_bind_requires_a_token(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != autoprune.agent.TOKEN_ENV}
    done = subprocess.run(
        [sys.executable, autoprune.agent.__file__, "serve", "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode != 0 and "without a token" in done.stderr
    assert autoprune.agent.is_loopback("127.0.0.1") and autoprune.agent.is_loopback("localhost")
    assert not autoprune.agent.is_loopback("0.0.0.0")


def test_unreachable_agent_is_one_clear_error():
    with pytest.raises(AutopruneError, match="cannot reach the agent"):
        AgentClient("http://127.0.0.1:9", timeout_s=5).info()


@pytest.fixture(scope="module")
def short_deadline_agent(tmp_path_factory):
    """The agent with a 5-second request deadline and three workers."""
    root = tmp_path_factory.mktemp("agent-deadline")
    script = root / "agent.py"
    shutil.copy(autoprune.agent.__file__, script)
    proc, url = _start(script, root, "--token", TOKEN, "--max-bytes", str(MAX_BYTES), "--request-timeout-s", "5", "--workers", "3")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def _socket(url: str):
    import socket

    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=15)


def _closed_by_server(sock, drip: bool) -> bool:
    """Whether the agent closes the connection (within the socket's 15 s timeout); ``drip``
    sends one byte of a request line every half second meanwhile."""
    import time as _time

    end = _time.monotonic() + 15
    sock.settimeout(0.5)
    while _time.monotonic() < end:
        try:
            if drip:
                sock.sendall(b"G")
            if sock.recv(1024) == b"":
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def test_a_stalled_and_a_dripping_client_do_not_block_others_and_are_dropped_at_the_deadline(short_deadline_agent):
    url = short_deadline_agent
    silent, dripping = _socket(url), _socket(url)
    dripping.sendall(b"GET /v1/in")
    # served meanwhile, well inside the 5 s the two others may still take
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=4)
    conn.request("GET", "/v1/info", headers=_auth())
    assert conn.getresponse().status == 200
    conn.close()
    assert _closed_by_server(silent, drip=False)
    assert _closed_by_server(dripping, drip=True)
    assert AgentClient(url, TOKEN).info()["agent"] == "autoprune-agent"


def test_an_unauthorised_body_is_not_read(short_deadline_agent):
    sock = _socket(short_deadline_agent)
    sock.sendall(b"POST /v1/time HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{")
    sock.settimeout(4)  # answered without waiting for the 10 MB that never come
    reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 401") and b"Connection: close" in reply
    sock.close()
