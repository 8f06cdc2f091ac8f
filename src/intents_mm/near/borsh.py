"""Minimal Borsh: the little-endian integers, strings, byte vectors, options and vectors NEAR uses.

``BorshWriter`` appends; ``BorshReader`` consumes and raises ``InputError`` on truncated input,
out-of-range lengths, bad option tags or (via ``finish()``) trailing bytes.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from typing import TypeVar

from intents_mm.errors import InputError

T = TypeVar("T")

_U32_MAX = 2**32 - 1


class BorshWriter:
    """Accumulates Borsh bytes; every method returns ``self`` for chaining."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def _uint(self, value: int, size: int) -> BorshWriter:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"u{size * 8} value must be an int")
        if not 0 <= value < 1 << (size * 8):
            raise InputError(f"value {value} does not fit in u{size * 8}")
        self._buf += value.to_bytes(size, "little")
        return self

    def u8(self, value: int) -> BorshWriter:
        return self._uint(value, 1)

    def u32(self, value: int) -> BorshWriter:
        return self._uint(value, 4)

    def u64(self, value: int) -> BorshWriter:
        return self._uint(value, 8)

    def u128(self, value: int) -> BorshWriter:
        return self._uint(value, 16)

    def fixed_bytes(self, data: builtins.bytes, length: int) -> BorshWriter:
        """``[u8; length]``: raw bytes, no length prefix."""
        if len(data) != length:
            raise InputError(f"expected exactly {length} bytes, got {len(data)}")
        self._buf += data
        return self

    def bytes(self, data: builtins.bytes) -> BorshWriter:
        """``Vec<u8>``: u32 length then the bytes."""
        self.u32(len(data))
        self._buf += data
        return self

    def string(self, text: str) -> BorshWriter:
        """``String``: u32 UTF-8 byte length then the UTF-8 bytes."""
        return self.bytes(text.encode("utf-8"))

    def option(self, value: T | None, write: Callable[[BorshWriter, T], object]) -> BorshWriter:
        """``Option<T>``: ``0x00``, or ``0x01`` followed by ``write(self, value)``."""
        if value is None:
            return self.u8(0)
        self.u8(1)
        write(self, value)
        return self

    def vec(self, items: Sequence[T], write: Callable[[BorshWriter, T], object]) -> BorshWriter:
        """``Vec<T>``: u32 count then each item."""
        self.u32(len(items))
        for item in items:
            write(self, item)
        return self

    def getvalue(self) -> builtins.bytes:
        return builtins.bytes(self._buf)


class BorshReader:
    """Consumes Borsh bytes from the front; ``InputError`` on anything malformed."""

    def __init__(self, data: builtins.bytes) -> None:
        self._data = builtins.bytes(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _take(self, n: int) -> builtins.bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise InputError(f"borsh data truncated: need {n} bytes at offset {self._pos}")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def u8(self) -> int:
        return self._take(1)[0]

    def u32(self) -> int:
        return int.from_bytes(self._take(4), "little")

    def u64(self) -> int:
        return int.from_bytes(self._take(8), "little")

    def u128(self) -> int:
        return int.from_bytes(self._take(16), "little")

    def fixed_bytes(self, length: int) -> builtins.bytes:
        return self._take(length)

    def bytes(self) -> builtins.bytes:
        return self._take(self.u32())

    def string(self) -> str:
        raw = self.bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("borsh string is not valid UTF-8") from None

    def option(self, read: Callable[[BorshReader], T]) -> T | None:
        tag = self.u8()
        if tag == 0:
            return None
        if tag == 1:
            return read(self)
        raise InputError(f"invalid borsh option tag {tag}")

    def vec(self, read: Callable[[BorshReader], T]) -> list[T]:
        count = self.u32()
        if count > self.remaining:  # cheap guard: every item type used here takes at least one byte
            raise InputError(f"borsh vector length {count} exceeds the remaining data")
        return [read(self) for _ in range(count)]

    def finish(self) -> None:
        """Raise ``InputError`` if any bytes are left unread."""
        if self.remaining:
            raise InputError(f"{self.remaining} unexpected trailing bytes after borsh data")
