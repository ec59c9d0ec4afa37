"""The front explorer: its data from a real 3-trial study, the offline page, the export
command it shows, and the page served by ``autoprune serve`` driven in a real headless Chromium."""
import re
import subprocess
import sys

import pytest

from autoprune.cli.main import build_parser
from autoprune.results.explorer import FRONT_DIV, explorer_data, explorer_html
from autoprune.results.front import front, front_limits, select_member
from autoprune.results.study import Study
from tests.browser import Browser, find_chromium
from tests.conftest import PRUNABLE_TASK, heavy_space, write_config
from tests.test_cli import cli


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A real 3-trial study whose front is not empty (heavily pruned plans of a model pruning speeds up)."""
    tmp = tmp_path_factory.mktemp("explorer")
    cli("search", write_config(tmp, task_options=PRUNABLE_TASK, search_space=str(heavy_space(tmp))), "--no-progress")
    study = Study(tmp / "study")
    if front(study).empty:
        pytest.skip("no trial was measured faster than the dense model on this (busy) machine: the front is empty")
    return study


def test_data_holds_every_trial_and_exactly_the_front(study):
    data = explorer_data(study)
    [device] = data["devices"]
    assert device["device"] == "onnxruntime-cpu"
    assert len(device["trials"]) == 3
    assert [m["number"] for m in device["front"]] == front(study, device="onnxruntime-cpu").number.tolist()
    baseline = study.baseline()
    assert device["dense"]["accuracy"] == baseline["accuracy"] and device["dense"]["latency_ms"] == baseline["latency_ms"]["onnxruntime-cpu"]
    for m in device["front"]:
        record = next(r for r in study.records() if r.number == m["number"])
        assert m["ratios"] == {u: c["pruning_ratio"] for u, c in record.plan.items()}
        assert m["speedup"] == pytest.approx(baseline["latency_ms"]["onnxruntime-cpu"] / m["latency_ms"])


def test_export_command_selects_that_member(study):
    """The command the page shows parses with the real CLI and its selection picks the member shown."""
    config, baseline = study.config(), study.baseline()
    for m in explorer_data(study)["devices"][0]["front"]:
        argv = m["export"].split()
        assert argv[:2] == ["autoprune", "export"]
        args = build_parser().parse_args(argv[1:])
        assert args.device == "onnxruntime-cpu" and args.study == str(study.path)
        chosen = select_member(study.records(), args.device, float(args.max_latency_ms[0]), **front_limits(config, baseline, args.device))
        assert chosen.number == m["number"]


def test_page_is_self_contained(study, tmp_path):
    page = explorer_html(study)
    assert not re.search(r"<script[^>]+src=", page), "the page loads a script from elsewhere: it would not work offline"
    assert "<link" not in page
    assert f'id="{FRONT_DIV}"' in page and "Plotly.newPlot" in page
    out = cli("report", study.path, "--html", "--out", tmp_path).stdout.split()
    assert str(tmp_path / "explorer.html") in out and (tmp_path / "front_onnxruntime-cpu.png").is_file()
    assert (tmp_path / "explorer.html").read_text(encoding="utf-8").count("Plotly.newPlot") >= 1
    assert "(explorer.html)" in (tmp_path / "report.md").read_text()


def test_serve_on_a_busy_port_is_one_line(study):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bad = cli("serve", study.path, "--port", taken.getsockname()[1], check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("autoprune serve: error: --port") and "Traceback" not in bad.stderr


def test_serve_without_a_study_is_one_line(tmp_path):
    bad = cli("serve", tmp_path / "nothing", "--port", "0", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a study directory" in bad.stderr


@pytest.fixture
def served(study):
    """``autoprune serve STUDY --port 0`` as a real process; yields the URL it prints."""
    server = subprocess.Popen(
        [sys.executable, "-m", "autoprune.cli", "serve", str(study.path), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = server.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert found, f"autoprune serve printed {line!r}; stderr: {server.stderr.read() if server.poll() is not None else ''}"
        yield found.group(0)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_answers_over_http_and_stops_on_ctrl_c(study):
    """Without a browser: the served page is the explorer, other paths are 404, Ctrl-C ends it cleanly."""
    import signal
    import urllib.error
    import urllib.request

    server = subprocess.Popen(
        [sys.executable, "-m", "autoprune.cli", "serve", str(study.path), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+/", server.stdout.readline()).group(0)
        with urllib.request.urlopen(url, timeout=60) as answer:
            assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/html")
            assert f'id="{FRONT_DIV}"' in answer.read().decode("utf-8")
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url + "elsewhere", timeout=60)
        assert missing.value.code == 404
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0 and "Traceback" not in err and "stopped" in out


#: Page coordinates of the front's first point of the first panel, from plotly's own axes.
FIRST_MEMBER_XY = f"""(() => {{
  const gd = document.getElementById("{FRONT_DIV}");
  const trace = gd.data.find(t => t.meta && t.meta.role === "front");
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  return [box.left + xa._offset + xa.l2p(trace.x[0]), box.top + ya._offset + ya.l2p(trace.y[0])];
}})()"""


def test_browser_shows_the_front_and_a_clicked_members_plan(study, served, tmp_path):
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found (looked for chromium, chromium-browser, google-chrome; AUTOPRUNE_CHROMIUM names another)")
    data = explorer_data(study)["devices"][0]
    browser = Browser(executable)
    try:
        browser.navigate(served)
        browser.wait_for(f"!!(document.getElementById('{FRONT_DIV}') && document.getElementById('{FRONT_DIV}')._fullLayout)")
        traces = browser.evaluate(f"document.getElementById('{FRONT_DIV}').data.map(t => [t.meta.role, t.x.length])")
        assert dict(traces) == {"trials": 3, "front": len(data["front"]), "dense": 1}
        assert browser.evaluate(f"document.querySelectorAll('#{FRONT_DIV} .scatterlayer .point').length") == 3 + len(data["front"]) + 1
        assert browser.evaluate("document.getElementById('autoprune-member').hidden") is True

        x, y = browser.evaluate(FIRST_MEMBER_XY)
        browser.click(x, y)
        browser.wait_for("!document.getElementById('autoprune-member').hidden && !!document.getElementById('autoprune-plan').data")
        member = data["front"][0]
        assert browser.evaluate("document.getElementById('autoprune-member-title').textContent") == f"Trial {member['number']} on onnxruntime-cpu"
        bars = browser.evaluate("document.getElementById('autoprune-plan').data[0]")
        assert bars["x"] == list(member["ratios"]) and bars["y"] == list(member["ratios"].values())
        assert browser.evaluate("document.querySelectorAll('#autoprune-plan .bars .point').length") == len(member["ratios"])
        figures = browser.evaluate("document.getElementById('autoprune-member-figures').innerText")
        assert "params" in figures and "MACs" in figures and "latency_ms on onnxruntime-cpu" in figures
        assert browser.evaluate("document.getElementById('autoprune-export').textContent") == member["export"]
        shot = browser.screenshot(tmp_path / "explorer.png")
    finally:
        browser.close()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot of the explorer: {shot}")


def test_two_devices_side_by_side_from_hand_made_records(tmp_path):
    """Each device's panel holds its own front, computed by hand: a member on one device need not be on the other."""
    from autoprune.core.config import load_config
    from autoprune.core.records import FAILED, TrialResult

    config = load_config(write_config(tmp_path, devices=["onnxruntime-cpu", "torch-cpu"]))
    study = Study(config.study_dir)
    study.initialise(config)
    study.save_baseline({"accuracy": 0.9, "latency_ms": {"onnxruntime-cpu": 1.0, "torch-cpu": 2.0}, "params": 1000, "macs": 10000})
    plan = lambda r: {"u1": {"granularity": "channel", "pruning_ratio": r, "criterion": "l1"}, "u2": {"granularity": "channel", "pruning_ratio": 0.1, "criterion": "l1"}}  # noqa: E731
    points = [  # number: accuracy, onnxruntime-cpu ms, torch-cpu ms
        (0, 0.85, 0.5, 1.0), (1, 0.80, 0.4, 1.5), (2, 0.70, 0.6, 0.8), (3, 0.88, 1.2, 1.9),
    ]
    for number, accuracy, ort_ms, torch_ms in points:
        study.append(TrialResult(number, plan(0.1 * (number + 1)), f"k{number}", accuracy=accuracy, latency_ms={"onnxruntime-cpu": ort_ms, "torch-cpu": torch_ms}, params=500, macs=5000))
    study.append(TrialResult(4, plan(0.7), "k4", state=FAILED, error="boom"))
    data = explorer_data(study)
    panels = {d["device"]: d for d in data["devices"]}
    assert list(panels) == ["onnxruntime-cpu", "torch-cpu"]
    # onnxruntime-cpu: trial 3 is slower than the dense model; 2 is dominated by 0 (slower and less accurate)
    assert [m["number"] for m in panels["onnxruntime-cpu"]["front"]] == [1, 0]
    # torch-cpu: 1 is dominated by 0; 3 (1.9 ms) is faster than the dense model's 2.0 ms
    assert [m["number"] for m in panels["torch-cpu"]["front"]] == [2, 0, 3]
    assert [len(d["trials"]) for d in data["devices"]] == [4, 4]
    assert panels["torch-cpu"]["front"][0]["speedup"] == pytest.approx(2.5)
    assert panels["onnxruntime-cpu"]["front"][0]["export"].endswith("--device onnxruntime-cpu --max-latency-ms 0.4")
    figure = explorer_figure_traces(data)
    assert figure == {("trials", "onnxruntime-cpu"): 4, ("front", "onnxruntime-cpu"): 2, ("dense", "onnxruntime-cpu"): 1,
                      ("trials", "torch-cpu"): 4, ("front", "torch-cpu"): 3, ("dense", "torch-cpu"): 1}


def explorer_figure_traces(data):
    from autoprune.results.explorer import explorer_figure

    return {(t.meta["role"], t.meta["device"]): len(t.x) for t in explorer_figure(data).data}
