"""INTENTS_MM_EVENT_LOOP: uvloop by default, the standard loop on request, a clear error otherwise."""

from __future__ import annotations

import asyncio
import builtins
import sys
from typing import Any

import pytest
import uvloop

from intents_mm import eventloop
from intents_mm.config import load_config
from intents_mm.errors import ConfigError, InputError


async def _loop_type() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_run_uses_the_chosen_loop() -> None:
    assert eventloop.run(_loop_type(), "uvloop").startswith("uvloop")
    assert eventloop.run(_loop_type(), "asyncio").startswith("asyncio")
    assert eventloop.run(_loop_type()).startswith("uvloop")  # the default


def test_config_default_and_validation() -> None:
    assert load_config({}, dotenv=None)["INTENTS_MM_EVENT_LOOP"] == "uvloop"
    assert (
        load_config({"INTENTS_MM_EVENT_LOOP": " AsyncIO "}, dotenv=None)["INTENTS_MM_EVENT_LOOP"] == "asyncio"
    )
    with pytest.raises(ConfigError, match="INTENTS_MM_EVENT_LOOP must be one of uvloop, asyncio"):
        load_config({"INTENTS_MM_EVENT_LOOP": "trio"}, dotenv=None)


def test_missing_uvloop_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError("No module named 'uvloop'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "uvloop")
    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    coro = _loop_type()
    with pytest.raises(InputError, match="set INTENTS_MM_EVENT_LOOP=asyncio"):
        eventloop.run(coro, "uvloop")
    assert coro.cr_frame is None  # closed, not left un-awaited
    assert uvloop is not None
