"""Line-per-record files that are only ever appended to (a study's ``trials.jsonl``, a
latency table's CSV), made safe against a writer killed mid-line.

A kill while a line is written leaves a last line with no newline. Appending after it
would glue the next record onto the torn one and lose both, so every append first seals
the tail: a tail that is still a whole record gets its newline, anything else is moved
to ``<file>.torn`` (kept for inspection, never read back) with a warning.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Optional

log = logging.getLogger(__name__)


def torn_tail(path: Path) -> Optional[bytes]:
    """The bytes after the file's last newline, or None when it ends with one (or is empty)."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return None
        f.seek(0)
        data = f.read()
    return data[data.rfind(b"\n") + 1 :]


def seal_tail(path: Path, whole: Callable[[str], bool]) -> Optional[bytes]:
    """Make ``path`` end on a line boundary before an append: a last line without its
    newline is completed when ``whole(line)`` says it is a full record, else moved to
    ``<path>.torn``. Returns the torn bytes set aside, if any."""
    tail = torn_tail(path)
    if tail is None:
        return None
    if whole(tail.decode("utf-8", "replace")):
        with open(path, "ab") as f:
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        return None
    aside = path.with_name(path.name + ".torn")
    with open(aside, "ab") as f:
        f.write(tail + b"\n")
        f.flush()
        os.fsync(f.fileno())
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - len(tail))
        f.flush()
        os.fsync(f.fileno())
    log.warning("%s: its last line was cut short (a writer was killed mid-line); set aside in %s", path, aside)
    return tail


def append_lines(path: Path, lines: Iterable[str], whole: Callable[[str], bool]) -> None:
    """Append ``lines`` (each without its newline) durably, after sealing a torn tail."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seal_tail(path, whole)
    text = "".join(line + "\n" for line in lines)
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
