"""A study directory: the resolved config, the trial records, the Optuna database, the
dense baseline, exports. Records are appended one JSON line per trial as trials finish
(``trials.jsonl``, the source of truth) and mirrored to ``trials.csv`` for people."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import pandas as pd
import yaml

from autoprune.core.appendlog import append_lines
from autoprune.core.config import Config
from autoprune.core.errors import AutopruneError, ConfigError
from autoprune.core.records import TrialResult

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import optuna

#: Config keys that may change between runs of one study (the rest must match).
MUTABLE_KEYS = {"budget", "export", "controller", "controller_options", "study_dir", "search_space", "min_accuracy", "max_accuracy_drop"}
SPACE_FILE = "search_space.yaml"
#: The file a running search holds locked in its study directory (one writer per study).
LOCK_FILE = "study.lock"


#: Lines of records files already warned about in this process.
_WARNED: set[tuple[str, int, int]] = set()


class StudyLockedError(AutopruneError):
    """Another live process is writing the study."""


class Study:
    """One study: its directory under ``path`` (config, records, Optuna database, baseline,
    exports) and what can be asked of it (:meth:`front`, :meth:`export`, :meth:`report`).

    Get one from :func:`autoprune.search` or :func:`autoprune.load_study`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config_file = property(lambda self: self.path / "config.yaml")
    records_file = property(lambda self: self.path / "trials.jsonl")
    csv_file = property(lambda self: self.path / "trials.csv")
    baseline_file = property(lambda self: self.path / "baseline.json")
    exports_dir = property(lambda self: self.path / "exports")

    @property
    def optuna_storage(self) -> str:
        return f"sqlite:///{self.path.resolve() / 'optuna.db'}"

    def exists(self) -> bool:
        return self.config_file.is_file()

    def require(self) -> "Study":
        """Fail clearly when ``path`` holds no study."""
        if not self.exists():
            raise AutopruneError(f"{self.path}: not a study directory (no config.yaml); run `autoprune search CONFIG` first")
        return self

    def config(self) -> Config:
        from autoprune.core.config import load_config

        return load_config(self.config_file)

    def started(self) -> bool:
        """Whether the study has a config and got as far as its dense baseline or a trial
        (a start that failed before that leaves nothing to keep)."""
        return self.exists() and (self.baseline_file.exists() or self.records_file.exists())

    def check(self, config: Config) -> None:
        """Refuse a config that differs from the study's own in a key that may not change
        between runs (see ``MUTABLE_KEYS``), naming the key."""
        data = config.model_dump(mode="json")
        data["search_space"] = SPACE_FILE
        old = self.config().model_dump(mode="json")  # options added since the study began take their defaults
        old["search_space"] = SPACE_FILE
        changed = [k for k in data if k not in MUTABLE_KEYS and old.get(k) != data[k]]
        if changed:
            raise ConfigError(
                f"{self.config_file}: this study was run with a different {changed[0]!r}"
                f" ({old.get(changed[0])!r}, now {data[changed[0]]!r}); use a new study_dir to start another study"
            )
        old_space, source = self.path / SPACE_FILE, config.search_space_path()
        if old_space.is_file() and source.is_file() and yaml.safe_load(old_space.read_text(encoding="utf-8")) != yaml.safe_load(source.read_text(encoding="utf-8")):
            raise ConfigError(
                f"{source}: differs from the search space this study was run with ({old_space});"
                " use a new study_dir to search another space"
            )

    def initialise(self, config: Config) -> None:
        """Create the directory and save the resolved config and a copy of its search space,
        or check that they match those of an earlier run of the same study."""
        space_source = config.search_space_path()
        if not space_source.is_file():
            from autoprune.core.paths import builtin_search_spaces

            raise ConfigError(
                f"search_space: {config.search_space!r} is neither a file (looked in the working directory and beside the config) "
                f"nor a built-in space; built-in: {', '.join(builtin_search_spaces())}"
            )
        if self.started():
            self.check(config)
        self.path.mkdir(parents=True, exist_ok=True)
        data = config.model_dump(mode="json")
        data["search_space"] = SPACE_FILE
        _atomic_write(self.path / SPACE_FILE, space_source.read_text(encoding="utf-8"))
        _atomic_write(self.config_file, yaml.safe_dump(data, sort_keys=False))

    def records(self) -> list[TrialResult]:
        """All trial records. A line that is not a record (cut short by a killed run) is
        skipped with a warning; the next append sets a torn last line aside."""
        if not self.records_file.exists():
            return []
        out = []
        lines = self.records_file.read_bytes().decode("utf-8", "replace").splitlines()
        for i, line in enumerate(lines, start=1):
            record = _record(line)
            if record is None:
                if (str(self.records_file), i, hash(line)) not in _WARNED:  # once per process, not on every read
                    _WARNED.add((str(self.records_file), i, hash(line)))
                    log.warning("%s:%d: not a trial record (cut short by a killed run?); skipped", self.records_file, i)
                continue
            out.append(record)
        return out

    def append(self, result: TrialResult) -> None:
        """Add one record durably (on a line of its own), then refresh the CSV mirror."""
        append_lines(self.records_file, [json.dumps(result.to_dict())], whole=lambda line: _record(line) is not None)
        self.dataframe().to_csv(self.csv_file.with_suffix(".tmp"), index=False)
        self.csv_file.with_suffix(".tmp").replace(self.csv_file)

    def dataframe(self) -> pd.DataFrame:
        """Every trial as one row, latencies in ``latency_ms.DEVICE`` columns."""
        rows = [r.flat() for r in self.records()]
        return pd.DataFrame(rows)

    def optuna_study(self) -> "optuna.Study":
        """The study's Optuna study (every trial, whatever the controller; see :mod:`autoprune.engine.optuna_study`)."""
        import optuna

        config = self.require().config()
        return optuna.load_study(study_name=config.name, storage=open_optuna_storage(config.storage or self.optuna_storage))

    def __repr__(self) -> str:
        return f"Study({str(self.path)!r})"

    def baseline(self) -> Optional[dict[str, Any]]:
        return json.loads(self.baseline_file.read_text()) if self.baseline_file.exists() else None

    def save_baseline(self, baseline: dict[str, Any]) -> None:
        _atomic_write(self.baseline_file, json.dumps(baseline, indent=2))


def _record(line: str) -> Optional[TrialResult]:
    """The record a ``trials.jsonl`` line holds, or None when it holds none."""
    if not line.strip():
        return None
    try:
        data = json.loads(line)
        return TrialResult.from_dict(data) if isinstance(data, dict) else None
    except (json.JSONDecodeError, TypeError):
        return None


def open_optuna_storage(url: str) -> "optuna.storages.RDBStorage":
    """The Optuna storage at ``url``; a SQLite file is opened in WAL mode with normal sync.

    With SQLite's defaults every write of an ask or tell waits for the disk (about 0.25 s
    per trial here); in WAL mode with ``synchronous=NORMAL`` a commit survives the process
    being killed (only a power loss can undo the last ones) at a sixth of the cost. WAL
    needs a local file system: put a study shared over the network in PostgreSQL.
    """
    import sqlite3

    import optuna

    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return optuna.storages.RDBStorage(url)
    path = url[len("sqlite:///") :]

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(path, timeout=60, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return optuna.storages.RDBStorage(url, engine_kwargs={"creator": connect})


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@contextlib.contextmanager
def study_lock(path: str | Path) -> Iterator[Path]:
    """Hold the study directory ``path`` for one writer while the block runs.

    Two searches writing one study would interleave records and fight over the Optuna
    database, so the second one is refused with who holds the study (pid, host, since,
    command). The lock is an exclusive ``flock`` on ``study.lock``: the kernel drops it
    when the holder exits or is killed, so a lock left by a dead process is simply taken
    over (and logged). The file itself is never removed (removing it would let two
    processes lock two different files); a directory this call created and that holds
    nothing else when the block ends (a start that failed) is removed again.
    """
    import fcntl

    path = Path(path)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    lock_path = path / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyLockedError(f"{path}: study in use by {_describe_holder(_read_holder(fd))}; wait for it to end or stop it, then run the command again") from None
        earlier = _read_holder(fd)
        if earlier:
            log.info("%s: taking over the lock left by %s (no longer running)", path, _describe_holder(earlier))
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        os.fsync(fd)
        try:
            yield lock_path
        finally:
            os.ftruncate(fd, 0)
            if created and {p.name for p in path.iterdir()} == {LOCK_FILE}:
                lock_path.unlink()
                path.rmdir()
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict[str, Any]:
    raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    try:
        holder = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (it has not written its details yet)"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} (`{holder.get('command', '')}`)"
