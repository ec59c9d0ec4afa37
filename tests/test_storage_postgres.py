"""The Optuna study in PostgreSQL: a real server started by the fixture (Debian's postgresql
package; `.ci/postgres.sh` installs it), a study run through the CLI and resumed."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from autoprune.core.config import load_config
from autoprune.core.records import COMPLETE
from autoprune.engine.executor import run_study
from autoprune.results.study import Study
from tests.conftest import write_config

pytest.importorskip("psycopg", reason="PostgreSQL storage needs psycopg 3 (pip install 'autoprune[postgres]')")


def postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory):
    """A PostgreSQL server on loopback for this module: initdb into a fresh folder, pg_ctl start,
    stopped and removed at teardown.

    PostgreSQL refuses to run as root, and pytest's temporary folders are private to their
    owner; run as root, the server runs as the ``postgres`` user in a private temporary folder
    of its own.
    """
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries not found; install Debian's postgresql package (.ci/postgres.sh)")
    as_root = os.geteuid() == 0
    if as_root:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        root = Path(tempfile.mkdtemp(prefix="autoprune-pg-"))
        os.chown(root, account.pw_uid, account.pw_gid)
        user = dict(user=account.pw_uid, group=account.pw_gid, extra_groups=[])
    else:
        root, user = tmp_path_factory.mktemp("pg"), {}
    data, port = root / "data", free_port()
    log = root / "server.log"
    try:
        subprocess.run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"], check=True, capture_output=True, cwd=root, **user)
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root}"
        started = subprocess.run([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "start"], capture_output=True, text=True, cwd=root, **user)
        if started.returncode != 0:
            pytest.fail(f"pg_ctl start failed: {started.stderr}\n{log.read_text() if log.exists() else ''}")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, cwd=root, **user)
        if as_root:
            shutil.rmtree(root, ignore_errors=True)


def test_study_lives_in_postgres_and_resumes_from_it(tmp_path, postgres_url):
    config_path = write_config(tmp_path, budget={"trials": 2})
    out = subprocess.run(
        [sys.executable, "-m", "autoprune.cli", "search", str(config_path), "--storage", postgres_url, "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    study = Study(tmp_path / "study")
    assert not (study.path / "optuna.db").exists()
    assert study.config().storage == postgres_url

    # resuming with the same storage continues the same Optuna study
    more = load_config(write_config(tmp_path, budget={"trials": 4}), storage=postgres_url)
    records = run_study(more, progress=False).records()
    assert [r.number for r in records] == [0, 1, 2, 3]
    trials = optuna.load_study(study_name="tiny", storage=postgres_url).trials
    assert [t.number for t in trials] == [r.trial_id for r in records]
    assert all(t.state.name == "COMPLETE" and t.values[0] == r.accuracy for t, r in zip(trials, records) if r.state == COMPLETE)

    # a resume that forgets the storage is refused rather than starting a second Optuna study
    with pytest.raises(Exception, match="storage"):
        run_study(load_config(write_config(tmp_path, budget={"trials": 5})), progress=False)


def test_two_studies_share_one_server(tmp_path, postgres_url):
    """Several drivers, one database: each study is its own Optuna study, by name."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    for name in ("a", "b"):
        config = load_config(write_config(tmp_path / name, name=f"shared-{name}", budget={"trials": 1}), storage=postgres_url)
        run_study(config, progress=False)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage=postgres_url)}
    assert {"shared-a", "shared-b"} <= names
    assert len(optuna.load_study(study_name="shared-a", storage=postgres_url).trials) == 1
