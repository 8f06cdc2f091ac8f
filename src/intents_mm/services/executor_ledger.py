"""The trade executor's signed-at-most-once ledger: an append-only local file, mirrored to the store.

Contract
--------
* :meth:`SignedLedger.append` writes ONE line per signed command with one ``write()`` on a file opened
  ``O_APPEND`` and returns only when the kernel has the bytes. The executor calls it after signing and
  before the ``quote_response`` leaves the process, so every quote that was sent is in the ledger:

  - a process crash (``kill -9``, OOM, a container restart) cannot lose a completed ``write()``: the
    bytes are in the page cache and reach the file whatever happens to the process;
  - a machine crash can lose what the page cache had not written back. A background ``fdatasync``
    every ``sync_interval_s`` (0.2 s) bounds that to the last fraction of a second, and the store's
    ``signed_commands`` table (mirrored asynchronously, batch by batch) holds all but the last batch.
    Every command lost that way was received before the crash, so its relay window (``relay_deadline_ns``,
    at most ``INGEST_RELAY_WINDOW_MS`` = 3 s by default after the ingest read it) closed long before the
    machine is back and an executor is started and armed; the executor never signs a command past its
    relay window (``dropped_late``, checked before the ledger). So no command is ever signed twice.
* A line is ``[command_id, quote_hash, nonce_b64, deadline_ns, signed_ts_ns]`` (JSON). A torn or
  unreadable line (the tail of a crash) is skipped and counted.
* :meth:`SignedLedger.open` reads the current file and the previous segment, keeps the commands signed
  within ``lookback_ns`` (15 min, far longer than any relay window) and rewrites them into a fresh
  segment (written, fsynced, then renamed over the old one). The executor also reads the store's
  ``signed_commands`` of the same period (a replacement machine has no local file) and adds them with
  :meth:`SignedLedger.remember`.
* The file is rotated (current → ``.prev``, a new current) once its segment is older than the lookback
  and larger than ``rotate_bytes``; the current and previous segments together always cover the lookback.
* One executor per ledger file (the deployments run one replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import msgspec

from intents_mm.clock import SYSTEM_CLOCK, Clock
from intents_mm.errors import StoreError

LOOKBACK_NS: Final = 15 * 60 * 1_000_000_000
ROTATE_BYTES: Final = 16 * 1024 * 1024
SYNC_INTERVAL_S: Final = 0.2
FILE_NAME: Final = "signed-commands.ledger"


class LedgerError(StoreError):
    """The local ledger file cannot be opened or written: nothing may be sent."""


class LedgerEntry(msgspec.Struct, array_like=True, frozen=True):
    """One signed command, as written on its line."""

    command_id: str
    quote_hash: str
    nonce_b64: str
    deadline_ns: int
    signed_ts_ns: int


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(LedgerEntry)


class SignedLedger:
    """The append-only ledger file of one executor; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock = SYSTEM_CLOCK,
        lookback_ns: int = LOOKBACK_NS,
        rotate_bytes: int = ROTATE_BYTES,
        sync_interval_s: float = SYNC_INTERVAL_S,
    ) -> None:
        self.path = path
        self.prev_path = path.with_name(path.name + ".prev")
        self._clock = clock
        self.lookback_ns = lookback_ns
        self.rotate_bytes = rotate_bytes
        self.sync_interval_s = sync_interval_s
        self._fd: int | None = None
        self._size = 0
        self._segment_start_ns = 0
        self._dirty = False
        self._ids: set[str] = set()
        self._order: deque[tuple[int, str]] = deque()  # (signed_ts_ns, id), oldest first, for pruning
        self.loaded = 0
        self.skipped_lines = 0
        self.appended = 0
        self.rotations = 0
        self.last_error: str | None = None
        self.write_failing = False  # the last append failed

    # ------------------------------------------------------------------ life cycle

    def open(self) -> list[LedgerEntry]:
        """Read both segments, compact the recent entries into a fresh file and open it for appending.

        Returns the entries signed within the lookback (oldest first). Raises :class:`LedgerError`."""
        now = self._clock.now_ns()
        since = now - self.lookback_ns
        entries: dict[str, LedgerEntry] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for segment in (self.prev_path, self.path):
                for entry in self._read(segment):
                    if entry.signed_ts_ns >= since:
                        entries.setdefault(entry.command_id, entry)
            kept = sorted(entries.values(), key=lambda e: e.signed_ts_ns)
            tmp = self.path.with_name(self.path.name + ".tmp")
            data = b"".join(_ENCODER.encode(e) + b"\n" for e in kept)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.prev_path)
            self._fsync_dir()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            self.last_error = f"signed-command ledger {self.path}: {exc.strerror or exc}"
            raise LedgerError(self.last_error) from None
        self._size = len(data)
        self._segment_start_ns = now
        for entry in kept:
            self._note(entry.command_id, entry.signed_ts_ns)
        self.loaded = len(kept)
        return kept

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def close(self) -> None:
        """Flush to disk and close (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(fd)
            os.close(fd)

    # ------------------------------------------------------------------ queries

    def __contains__(self, command_id: str) -> bool:
        return command_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def remember(self, command_id: str, signed_ts_ns: int) -> None:
        """Know ``command_id`` as signed without writing it (read back from the store's table)."""
        if command_id not in self._ids:
            self._note(command_id, signed_ts_ns)

    # ------------------------------------------------------------------ writes

    def append(self, entry: LedgerEntry) -> None:
        """Write ``entry`` (one ``write()`` on the ``O_APPEND`` file). Raises :class:`LedgerError`."""
        fd = self._fd
        if fd is None:
            raise LedgerError("the signed-command ledger is not open")
        line = _ENCODER.encode(entry) + b"\n"
        try:
            written = os.write(fd, line)
            if written != len(line):  # a short write on a regular file means the disk is full
                raise OSError(28, f"short write ({written} of {len(line)} bytes)")
        except OSError as exc:
            self.write_failing = True
            self.last_error = f"signed-command ledger {self.path}: {exc.strerror or exc}"
            raise LedgerError(self.last_error) from None
        self.write_failing = False
        self._size += written
        self._dirty = True
        self.appended += 1
        self._note(entry.command_id, entry.signed_ts_ns)
        if self._size > self.rotate_bytes and entry.signed_ts_ns - self._segment_start_ns > self.lookback_ns:
            self._rotate(entry.signed_ts_ns)

    async def sync_forever(self) -> None:
        """``fdatasync`` in a worker thread every ``sync_interval_s`` while there are new lines."""
        while True:
            await asyncio.sleep(self.sync_interval_s)
            fd = self._fd
            if fd is None or not self._dirty:
                continue
            self._dirty = False
            try:
                await asyncio.to_thread(os.fdatasync, fd)
            except OSError as exc:
                if self._fd is not None:  # not closed meanwhile
                    self.last_error = f"signed-command ledger fdatasync failed: {exc.strerror or exc}"

    # ------------------------------------------------------------------ internals

    def _note(self, command_id: str, signed_ts_ns: int) -> None:
        self._ids.add(command_id)
        order = self._order
        order.append((signed_ts_ns, command_id))
        cutoff = signed_ts_ns - self.lookback_ns
        while order and order[0][0] < cutoff:
            _, old = order.popleft()
            self._ids.discard(old)

    def _read(self, segment: Path) -> Iterator[LedgerEntry]:
        try:
            raw = segment.read_bytes()
        except FileNotFoundError:
            return
        for line in raw.split(b"\n"):
            if not line:
                continue
            try:
                yield _DECODER.decode(line)
            except msgspec.DecodeError:
                self.skipped_lines += 1

    def _rotate(self, now_ns: int) -> None:
        try:
            os.replace(self.path, self.prev_path)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._fsync_dir()
        except OSError as exc:  # keep appending to the current file (it was not renamed, or is .prev)
            self.last_error = f"signed-command ledger rotation failed: {exc.strerror or exc}"
            return
        old, self._fd = self._fd, fd
        if old is not None:
            with contextlib.suppress(OSError):
                os.fsync(old)
            os.close(old)
        self._size = 0
        self._segment_start_ns = now_ns
        self.rotations += 1

    def _fsync_dir(self) -> None:
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
