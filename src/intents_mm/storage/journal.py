"""history-writer's spill journal: bus messages the store could not take, kept on local disk until it can.

Contract
--------
* The journal is a directory (``<INTENTS_MM_VAR_DIR>/history-writer/journal/`` in the service) of
  append-only **segments** ``spill-<20-digit ns>-<6-digit counter>.jnl``, oldest first by name. A
  segment line is one envelope exactly as it travelled on the bus (compact JSON; an envelope whose
  bytes hold a newline is re-encoded compactly), ``\\n``-terminated.
* :meth:`SpillJournal.spill` writes a batch with ONE ``write()`` on the current segment (opened
  ``O_APPEND``) and then ``fdatasync`` (in a worker thread) before it returns, so a message the persister
  acks after a spill survives a process crash (``kill -9``) and a machine crash alike. A segment is
  closed ("sealed") before a replay and once it is larger than ``segment_bytes``; appends after that go to
  a new one. Segments found at start are sealed.
* :meth:`SpillJournal.sealed_segments` / :meth:`SpillJournal.segment_lines` /
  :meth:`SpillJournal.decode_lines` give the persister what to replay, oldest first (decoded chunk by
  chunk, so a large segment does not hold the event loop); it writes them with
  ``HistoryStore.write_batch`` (idempotent by ``msg_id``: a segment replayed twice, or a message both
  spilled and stored, is stored once) and calls
  :meth:`SpillJournal.drop_segment` once every line of a segment is in the store.
* A line that does not decode (the torn tail of a crash, a damaged disk) is counted (``bad_lines``) and
  put aside like a message the store refuses: :meth:`SpillJournal.set_aside` appends one JSON line
  ``{"ts_ns", "subject", "msg_id", "error", "data"}`` to ``rejected.jsonl`` in the same directory, ``data``
  being the bytes as a string (invalid UTF-8 replaced). Nothing in ``rejected.jsonl`` is replayed; it is
  for the operator (``docs/operations.md``).
* The journal belongs to one store: ``STORE`` in the directory names it (the redacted store URL).
  Segments a previous process spilled for another store (the same var directory used with another
  ``POSTGRES_URL``, e.g. a simulation and a live run) are moved to ``foreign-<ns>/`` at open and never
  replayed into this one (``foreign_segments``; the operator decides, ``docs/operations.md``).
* Every file-system failure surfaces as :class:`JournalError` (one line); the persister then falls back to
  holding the batch unacked and retrying, as without a journal.
* One process per journal directory (one history-writer replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import msgspec

from intents_mm import messages as m
from intents_mm.clock import SYSTEM_CLOCK, Clock
from intents_mm.errors import InputError, StoreError

SEGMENT_BYTES: Final = 16 * 1024 * 1024
SEGMENT_PREFIX: Final = "spill-"
SEGMENT_SUFFIX: Final = ".jnl"
REJECTED_FILE: Final = "rejected.jsonl"
STORE_FILE: Final = "STORE"
FOREIGN_PREFIX: Final = "foreign-"

log = logging.getLogger(__name__)


class JournalError(StoreError):
    """The journal directory or a segment cannot be read or written."""


class JournalStats(msgspec.Struct, frozen=True, kw_only=True):
    """The journal as ``/state`` shows it (counts since start, except the pending ones)."""

    dir: str
    segments: int
    rows_pending: int
    bytes_pending: int
    spilled: int
    replayed: int
    replay_duplicates: int
    replays: int
    set_aside: int
    bad_lines: int
    foreign_segments: int
    last_spill_ts_ns: int | None
    last_replay_ts_ns: int | None
    last_replay_error: str | None
    last_error: str | None


class _RejectedLine(msgspec.Struct, frozen=True, kw_only=True):
    ts_ns: int
    subject: str | None
    msg_id: str | None
    error: str
    data: str


_ENCODER: Final = msgspec.json.Encoder()


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class SpillJournal:
    """The spill journal in ``directory``; see the module docstring for the contract."""

    def __init__(
        self,
        directory: Path,
        *,
        clock: Clock = SYSTEM_CLOCK,
        segment_bytes: int = SEGMENT_BYTES,
        store: str | None = None,
    ) -> None:
        if segment_bytes < 1:
            raise InputError("segment_bytes must be at least 1")
        self.directory = directory
        self._clock = clock
        self._segment_bytes = segment_bytes
        self._fd: int | None = None
        self._current: Path | None = None
        self._counter = 0
        self._rows: dict[Path, int] = {}  # every segment on disk (sealed and current) -> its lines
        self._bytes: dict[Path, int] = {}
        self._opened = False
        self._store = store  # the store the journal is for (its redacted URL), see open()
        self.foreign_segments = 0
        self.spilled = 0
        self.replayed = 0
        self.replay_duplicates = 0
        self.replays = 0
        self.set_aside_count = 0
        self.bad_lines = 0
        self.last_spill_ts_ns: int | None = None
        self.last_replay_ts_ns: int | None = None
        self.last_replay_error: str | None = None
        self.last_error: str | None = None

    # ------------------------------------------------------------------ state

    def open(self) -> None:
        """Create the directory and count the segments a previous process left (idempotent).

        With a ``store`` label, segments spilled for another store (``STORE`` names it) are moved
        to ``foreign-<ns>/`` (with their ``STORE`` file) and never replayed here."""
        if self._opened:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._check_store()
            for path in sorted(self.directory.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}")):
                data = path.read_bytes()
                self._rows[path] = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
                self._bytes[path] = len(data)
        except OSError as exc:
            self.last_error = f"spill journal {self.directory}: {_strerror(exc)}"
            raise JournalError(self.last_error) from None
        self._opened = True

    @property
    def rows_pending(self) -> int:
        """Lines in the journal not yet replayed into the store."""
        return sum(self._rows.values())

    @property
    def pending(self) -> bool:
        return bool(self._rows)

    def stats(self) -> JournalStats:
        return JournalStats(
            dir=str(self.directory),
            segments=len(self._rows),
            rows_pending=self.rows_pending,
            bytes_pending=sum(self._bytes.values()),
            spilled=self.spilled,
            replayed=self.replayed,
            replay_duplicates=self.replay_duplicates,
            replays=self.replays,
            set_aside=self.set_aside_count,
            bad_lines=self.bad_lines,
            foreign_segments=self.foreign_segments,
            last_spill_ts_ns=self.last_spill_ts_ns,
            last_replay_ts_ns=self.last_replay_ts_ns,
            last_replay_error=self.last_replay_error,
            last_error=self.last_error,
        )

    # ------------------------------------------------------------------ writes

    async def spill(self, raws: Sequence[bytes]) -> None:
        """Append one line per envelope (the bus bytes) and make them durable; :class:`JournalError`."""
        if not raws:
            return
        self.open()
        lines = b"".join((raw if b"\n" not in raw else m.encode(m.decode(raw))) + b"\n" for raw in raws)
        try:
            fd, path = self._segment_for(len(lines))
            written = os.write(fd, lines)
            if written != len(lines):  # a short write on a regular file means the disk is full
                raise OSError(28, f"short write ({written} of {len(lines)} bytes)")
            await asyncio.to_thread(os.fdatasync, fd)
        except OSError as exc:
            self.last_error = f"spill journal {self.directory}: {_strerror(exc)}"
            self._seal()  # a later spill starts a fresh segment; a torn line is skipped on replay
            raise JournalError(self.last_error) from None
        self._rows[path] = self._rows.get(path, 0) + len(raws)
        self._bytes[path] = self._bytes.get(path, 0) + written
        self.spilled += len(raws)
        self.last_spill_ts_ns = self._clock.now_ns()
        self.last_error = None

    def set_aside(
        self, data: bytes, error: str, *, subject: str | None = None, msg_id: str | None = None
    ) -> None:
        """Append a message nobody can store to ``rejected.jsonl`` (best effort: failures are noted)."""
        line = _RejectedLine(
            ts_ns=self._clock.now_ns(),
            subject=subject,
            msg_id=msg_id,
            error=error,
            data=data.decode("utf-8", errors="replace"),
        )
        self.set_aside_count += 1
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / REJECTED_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, _ENCODER.encode(line) + b"\n")
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.last_error = f"spill journal {self.directory / REJECTED_FILE}: {_strerror(exc)}"

    # ------------------------------------------------------------------ replay

    def sealed_segments(self) -> list[Path]:
        """Close the current segment and return every segment, oldest first, for a replay."""
        self._seal()
        return sorted(self._rows)

    def read_segment(self, path: Path) -> list[tuple[m.Envelope[m.Payload], bytes]]:
        """Every decodable line of ``path`` as (envelope, bytes); bad lines are counted and set aside."""
        return self.decode_lines(path, self.segment_lines(path))

    def segment_lines(self, path: Path) -> list[bytes]:
        """The non-empty lines of ``path``, undecoded (``[]`` for a segment gone meanwhile)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self._forget(path)
            return []
        except OSError as exc:
            self.last_error = f"spill journal {path}: {_strerror(exc)}"
            raise JournalError(self.last_error) from None
        return [line for line in data.split(b"\n") if line]

    def decode_lines(self, path: Path, lines: Sequence[bytes]) -> list[tuple[m.Envelope[m.Payload], bytes]]:
        """``lines`` of ``path`` decoded; a line that does not decode is counted and set aside."""
        out: list[tuple[m.Envelope[m.Payload], bytes]] = []
        for line in lines:
            try:
                out.append((m.decode(line), line))
            except InputError as exc:
                self.bad_lines += 1
                self.set_aside(line, f"journal line in {path.name} does not decode: {exc}")
        return out

    def drop_segment(self, path: Path, *, inserted: int, lines: int) -> None:
        """Delete a segment whose every line is now in the store (``inserted`` of ``lines`` were new)."""
        try:
            path.unlink(missing_ok=True)
            self._fsync_dir()
        except OSError as exc:
            self.last_error = f"spill journal {path}: {_strerror(exc)}"
            raise JournalError(self.last_error) from None
        self._forget(path)
        self.replayed += inserted
        self.replay_duplicates += max(lines - inserted, 0)

    def close(self) -> None:
        """Close the current segment (idempotent)."""
        self._seal()

    # ------------------------------------------------------------------ internals

    def _segment_for(self, size: int) -> tuple[int, Path]:
        fd, path = self._fd, self._current
        if fd is not None and path is not None and self._bytes.get(path, 0) + size <= self._segment_bytes:
            return fd, path
        if fd is not None and path is not None and not self._bytes.get(path, 0):
            return fd, path  # an empty segment takes one batch, whatever its size
        self._seal()
        self._counter += 1
        path = (
            self.directory
            / f"{SEGMENT_PREFIX}{self._clock.now_ns():020d}-{self._counter:06d}{SEGMENT_SUFFIX}"
        )
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._fsync_dir()
        self._fd, self._current = fd, path
        self._rows.setdefault(path, 0)
        self._bytes.setdefault(path, 0)
        return fd, path

    def _seal(self) -> None:
        fd, self._fd = self._fd, None
        path, self._current = self._current, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        if path is not None and not self._rows.get(path):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)  # opened, never written
            self._forget(path)

    def _check_store(self) -> None:
        label = self._store
        if label is None:
            return
        marker = self.directory / STORE_FILE
        try:
            previous = marker.read_text().strip()
        except FileNotFoundError:
            previous = None
        segments = sorted(self.directory.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"))
        if previous is not None and previous != label and segments:
            aside = self.directory / f"{FOREIGN_PREFIX}{self._clock.now_ns():020d}"
            aside.mkdir()
            for path in segments:
                path.rename(aside / path.name)
            (aside / STORE_FILE).write_text(previous + "\n")
            self.foreign_segments += len(segments)
            self.last_error = (
                f"{len(segments)} journal segments spilled for {previous} moved to {aside.name}/, "
                f"not replayed into {label}"
            )
            log.warning("history-writer: %s", self.last_error)
        if previous != label:
            tmp = marker.with_name(STORE_FILE + ".tmp")
            tmp.write_text(label + "\n")
            os.replace(tmp, marker)
            self._fsync_dir()

    def _forget(self, path: Path) -> None:
        self._rows.pop(path, None)
        self._bytes.pop(path, None)

    def _fsync_dir(self) -> None:
        with contextlib.suppress(OSError):
            dfd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
