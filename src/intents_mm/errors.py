"""The project's own error types.

Errors raised by libraries (aiohttp, nats, SQLAlchemy, PyNaCl, ...) are translated into these at the
adapter seam, so callers handle one vocabulary. Every message is one line, fit to show an operator.
"""

from __future__ import annotations


class IntentsMMError(Exception):
    """Base of every error this project raises on purpose."""


class InputError(IntentsMMError, ValueError):
    """Malformed input: an amount, key, JSON document, request body or scenario file."""


class ConfigError(IntentsMMError):
    """The configuration is invalid; the message names the variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class SignatureError(IntentsMMError):
    """A signature does not verify, or a key cannot be used to sign."""


class TransportError(IntentsMMError):
    """A remote endpoint could not be reached, timed out or answered with a transport-level failure."""


class RpcError(IntentsMMError):
    """A JSON-RPC endpoint answered with an error (NEAR RPC, Solver Relay, PoA bridge)."""

    def __init__(self, message: str, *, code: int | str | None = None, data: object = None) -> None:
        self.code = code
        self.data = data
        super().__init__(message)


class ContractError(RpcError):
    """A contract view or call panicked (the Verifier said no)."""


class StoreError(IntentsMMError):
    """The history store failed (connection lost, migration missing)."""


class BusError(IntentsMMError):
    """The message bus failed (connection lost, stream missing)."""
