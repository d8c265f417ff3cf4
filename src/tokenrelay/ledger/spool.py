"""The local spool: usage rows the database could not take yet, kept durably on disk.

Invariants:

* A batch is appended as JSON lines and ``fsync``ed before ``append`` returns: once the writer
  moves on, the rows survive a crash of the process or the machine.
* Each process appends to its own segment file and holds an exclusive ``flock`` on it while it
  is open. Replay only takes segments it can lock, so several workers can share a directory
  and a crashed process's segments (its locks died with it) are replayed by whoever comes next.
* A segment is deleted only after all its rows were inserted; rows are inserted with
  insert-or-ignore on ``stream_id``, so replaying a segment twice (crash mid-replay) adds nothing.
* Rows the database refuses for what they contain go to ``dead-letter.jsonl``, never back to the
  spool, so one bad row cannot block the rows behind it.

All methods block (file I/O, fsync): call them in a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson

log = logging.getLogger(__name__)

_DATETIME_FIELDS = ("started_at", "finished_at")
DEAD_LETTER_FILE = "dead-letter.jsonl"


def encode_row(row: dict[str, Any]) -> bytes:
    """One row as one JSON line (datetimes in ISO 8601)."""
    return orjson.dumps(row) + b"\n"


# Columns added since the first spool format, with what a row spooled before them means.
_ADDED_COLUMNS: dict[str, Any] = {
    "deployment": None,
    "attempts": 1,
    "cache_read_tokens": None,
    "cache_creation_tokens": None,
}


def decode_row(line: bytes) -> dict[str, Any]:
    """The row of one JSON line (a row spooled by an older version gets the newer columns)."""
    row: dict[str, Any] = {**_ADDED_COLUMNS, **orjson.loads(line)}
    for name in _DATETIME_FIELDS:
        if isinstance(row.get(name), str):
            row[name] = datetime.fromisoformat(row[name])
    return row


class SpoolUnavailable(Exception):
    """The spool directory cannot take rows (missing, unwritable or too full)."""


class Spool:
    """Append-only, fsynced segment files of pending rows in one directory."""

    def __init__(self, directory: Path, *, min_free_bytes: int) -> None:
        self.directory = directory
        self.min_free_bytes = min_free_bytes
        self._lock = threading.Lock()  # append and rotate come from different worker threads
        self._current: IO[bytes] | None = None
        self._current_path: Path | None = None
        self.current_rows = 0  # rows in this process's open segment

    # -- health ---------------------------------------------------------------------------

    def check(self) -> None:
        """Raise SpoolUnavailable unless a row could be written and fsynced right now."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".probe-{os.getpid()}"
            with probe.open("wb") as handle:
                handle.write(b"probe\n")
                handle.flush()
                os.fsync(handle.fileno())
            probe.unlink()
            free = shutil.disk_usage(self.directory).free
        except OSError as exc:
            raise SpoolUnavailable(f"spool directory {self.directory} is not writable: {exc}") from exc
        if free < self.min_free_bytes:
            raise SpoolUnavailable(
                f"spool directory {self.directory} has {free} bytes free, below {self.min_free_bytes}"
            )

    # -- writing --------------------------------------------------------------------------

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append rows durably (write + fsync) to this process's current segment."""
        data = b"".join(encode_row(row) for row in rows)
        with self._lock:
            handle = self._open_current()
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            self.current_rows += len(rows)

    def dead_letter(self, row: dict[str, Any], reason: str) -> None:
        """Keep a row the database refused, with the reason, for a person to look at."""
        line = orjson.dumps({"row": row, "reason": reason, "at": time.time()}) + b"\n"
        with self._lock, (self.directory / DEAD_LETTER_FILE).open("ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def _open_current(self) -> IO[bytes]:
        if self._current is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"spool-{time.time_ns()}-{os.getpid()}.jsonl"
            handle = path.open("ab")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            self._current, self._current_path = handle, path
        return self._current

    def rotate(self) -> None:
        """Close the current segment so replay can take it; the next append starts a new one."""
        with self._lock:
            if self._current is not None:
                self._current.close()  # releases the flock
                self._current = self._current_path = None
                self.current_rows = 0

    # -- replaying ------------------------------------------------------------------------

    def segments(self) -> list[Path]:
        """Closed segments, oldest first (including other processes' that are no longer open)."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("spool-*.jsonl") if p != self._current_path)

    def pending_rows(self) -> int:
        """Rows waiting in all segments (counted by lines)."""
        total = 0
        for path in [*self.segments(), *([self._current_path] if self._current_path else [])]:
            with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
                total += sum(1 for _ in handle)
        return total

    def claim(self, path: Path) -> ClaimedSegment | None:
        """Lock a segment and read its rows; None when another process holds it or it is gone.

        A torn last line (the process died mid-write, before fsync returned) is skipped: those
        rows were never acknowledged as spooled.
        """
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        rows = []
        for number, line in enumerate(handle, start=1):
            try:
                rows.append(decode_row(line))
            except (orjson.JSONDecodeError, ValueError):
                log.warning("skipping a torn spool line", extra={"segment": path.name, "line": number})
        return ClaimedSegment(path, handle, rows)

    def close(self) -> None:
        """Close the current segment (it stays on disk for the next replay)."""
        self.rotate()


class ClaimedSegment:
    """A segment locked by this process for replay. ``done`` deletes it; ``release`` keeps it."""

    def __init__(self, path: Path, handle: IO[bytes], rows: list[dict[str, Any]]) -> None:
        self.path = path
        self.rows = rows
        self._handle = handle

    def done(self) -> None:
        """All rows are in the database: delete the file, then drop the lock."""
        self.path.unlink(missing_ok=True)
        self._handle.close()

    def release(self) -> None:
        """Replay failed part-way: keep the file for the next attempt."""
        self._handle.close()
