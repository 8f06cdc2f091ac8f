"""NATS-only bus behaviour: wire layout, idempotent set-up, filter changes, and a server restart."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from bus_helpers import Recorder, wait_until
from conftest import free_port
from intents_mm.bus import make_bus
from intents_mm.bus.nats import NatsBus
from intents_mm.errors import BusError

NATS_SERVER = "/usr/sbin/nats-server"


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class PrivateNats:
    """A nats-server of this test's own (never the shared one on 4222), restartable on one port and store."""

    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.store = store
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not _port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"private nats-server on port {self.port} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[PrivateNats]:
    server = PrivateNats(tmp_path / "jetstream")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def nbus(nats_server_url: str, stream_prefix: str) -> AsyncIterator[NatsBus]:
    bus = NatsBus(nats_server_url, stream=f"{stream_prefix}_S", subject_prefix=stream_prefix.lower())
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


async def test_wire_layout_prefix_header_and_stream_limits(nats_server_url: str, stream_prefix: str) -> None:
    prefix = stream_prefix.lower()
    stream = f"{stream_prefix}_S"
    bus = NatsBus(
        nats_server_url,
        stream=stream,
        subject_prefix=prefix,
        max_age_s=3600,
        max_bytes=10_000_000,
        duplicate_window_s=30,
    )
    await bus.start()
    nc = await nats.connect(nats_server_url)
    try:
        await bus.publish("demand.swap_request", b"wire", msg_id="wire-1")
        js = nc.jetstream()
        info = await js.stream_info(stream)
        assert info.config.subjects == [f"{prefix}.>"]
        assert info.config.max_age == pytest.approx(3600)
        assert info.config.max_bytes == 10_000_000
        assert info.config.duplicate_window == pytest.approx(30)
        assert info.state.messages == 1
        raw = await js.get_msg(stream, 1)
        assert raw.subject == f"{prefix}.demand.swap_request"
        assert raw.data == b"wire"
        assert raw.headers is not None
        assert raw.headers["Nats-Msg-Id"] == "wire-1"
        described = bus.describe()
        assert described["backend"] == "nats"
        assert described["stream"] == stream
    finally:
        await nc.close()
        await bus.close()


async def test_start_is_idempotent_and_updates_limits(nats_server_url: str, stream_prefix: str) -> None:
    stream = f"{stream_prefix}_S"
    prefix = stream_prefix.lower()
    first = NatsBus(nats_server_url, stream=stream, subject_prefix=prefix, max_age_s=3600)
    same = NatsBus(nats_server_url, stream=stream, subject_prefix=prefix, max_age_s=3600)
    changed = NatsBus(nats_server_url, stream=stream, subject_prefix=prefix, max_age_s=7200)
    try:
        await first.start()
        await first.publish("portfolio.metrics", b"kept", msg_id="k1")
        await same.start()
        await changed.start()
        nc = await nats.connect(nats_server_url)
        try:
            info = await nc.jetstream().stream_info(stream)
        finally:
            await nc.close()
        assert info.config.max_age == pytest.approx(7200)
        assert info.state.messages == 1  # nothing was lost by re-declaring the stream
    finally:
        for bus in (first, same, changed):
            await bus.close()


async def test_changing_a_durables_subjects_keeps_its_position(nbus: NatsBus) -> None:
    first = Recorder()
    sub = await nbus.subscribe(["demand.swap_request"], "moving", first.handler)
    for i in range(5):
        await nbus.publish("demand.swap_request", b"a", msg_id=f"a{i}")
    await wait_until(lambda: len(first.got) == 5, what="5 deliveries")
    await sub.stop()
    await nbus.publish("demand.swap_request", b"a", msg_id="a5")
    await nbus.publish("demand.quote_status", b"b", msg_id="b0")
    second = Recorder()
    await nbus.subscribe(["demand.swap_request", "demand.quote_status"], "moving", second.handler)
    await wait_until(lambda: len(second.got) >= 2, what="the 2 new messages")
    await asyncio.sleep(0.3)
    assert second.ids() == ["a5", "b0"]


async def test_disjoint_patterns_get_one_consumer_each_and_no_foreign_deliveries(
    nbus: NatsBus, nats_server_url: str, stream_prefix: str
) -> None:
    rec = Recorder()
    sub = await nbus.subscribe(["exec.trade_result", "cmd.*"], "multi", rec.handler)
    await nbus.publish("market.reference_price", b"skip", msg_id="s1")
    await nbus.publish("cmd.execute_trade", b"take", msg_id="t1")
    await nbus.publish("exec.trade_result", b"take", msg_id="t2")
    await nbus.publish("cmd.execute_trade", b"take", msg_id="t3")
    await wait_until(lambda: len(rec.got) >= 3, what="3 matching deliveries")
    await asyncio.sleep(0.3)
    ids = rec.ids()
    assert sorted(ids) == ["t1", "t2", "t3"]
    assert ids.index("t1") < ids.index("t3")  # publish order per subject
    counters = nbus.describe()["counters"]
    assert isinstance(counters, dict)
    assert counters["filtered"] == 0  # the server filtered: nothing foreign was delivered and acked
    nc = await nats.connect(nats_server_url)
    try:
        js = nc.jetstream()
        prefix = stream_prefix.lower()
        consumers = {c.name: c.config.filter_subject for c in await js.consumers_info(f"{stream_prefix}_S")}
        assert consumers == {
            "multi--exec_dtrade__result": f"{prefix}.exec.trade_result",
            "multi--cmd_d_s": f"{prefix}.cmd.*",
        }
    finally:
        await nc.close()
    # a restart resumes each consumer where it was
    await sub.stop()
    await nbus.publish("exec.trade_result", b"take", msg_id="t4")
    again = Recorder()
    await nbus.subscribe(["exec.trade_result", "cmd.*"], "multi", again.handler)
    await wait_until(lambda: len(again.got) >= 1, what="the message published while stopped")
    await asyncio.sleep(0.3)
    assert again.ids() == ["t4"]


async def test_overlapping_patterns_share_one_consumer_and_each_message_comes_once(nbus: NatsBus) -> None:
    rec = Recorder()
    await nbus.subscribe(["cmd.*", "cmd.execute_trade"], "overlap", rec.handler)
    await nbus.publish("market.reference_price", b"skip", msg_id="s1")
    await nbus.publish("cmd.execute_trade", b"take", msg_id="t1")
    await wait_until(lambda: len(rec.got) >= 1, what="1 matching delivery")
    await asyncio.sleep(0.3)
    assert rec.ids() == ["t1"]
    counters = nbus.describe()["counters"]
    assert isinstance(counters, dict)
    assert counters["filtered"] == 1  # one consumer over the prefix, the other subject skipped


async def test_unreachable_server_fails_start_with_bus_error() -> None:
    bus = make_bus(f"nats://user:secret@127.0.0.1:{free_port()}", connect_timeout_s=1)
    with pytest.raises(BusError) as err:
        await bus.start()
    assert "secret" not in str(err.value)
    assert "127.0.0.1" in str(err.value)
    assert not bus.healthy()
    assert "secret" not in str(bus.describe())


async def test_server_restart_loses_nothing_acked_and_consumers_continue(private_nats: PrivateNats) -> None:
    bus = NatsBus(private_nats.url, stream="RESTART", subject_prefix="rs", reconnect_wait_s=0.1)
    await bus.start()
    try:
        rec = Recorder()
        await bus.subscribe([">"], "survivor", rec.handler, ack_wait_s=1.0)
        acked: list[str] = []

        async def producer(start: int, stop: int) -> None:
            for i in range(start, stop):
                await bus.publish("exec.trade_result", str(i).encode(), msg_id=f"p{i}")
                acked.append(f"p{i}")
                await asyncio.sleep(0.002)

        await producer(0, 50)
        await wait_until(lambda: {f"p{i}" for i in range(50)} <= set(rec.ids()), what="first 50 consumed")

        # publishes in flight while the server dies and comes back
        task = asyncio.create_task(producer(50, 150))
        await wait_until(lambda: len(acked) >= 70, what="publishing under way")
        private_nats.kill()
        await wait_until(lambda: not bus.healthy(), what="disconnect noticed")
        await asyncio.sleep(0.5)
        private_nats.start()
        await asyncio.wait_for(task, timeout=30)
        await wait_until(bus.healthy, what="reconnected")

        await producer(150, 160)  # the consumer keeps going after the restart
        want = {f"p{i}" for i in range(160)}
        await wait_until(lambda: want <= set(rec.ids()), timeout_s=30, what="every acked publish consumed")
        assert set(rec.ids()) == want

        nc = await nats.connect(private_nats.url)
        try:
            info = await nc.jetstream().stream_info("RESTART")
        finally:
            await nc.close()
        assert info.state.messages == 160  # each msg id stored once despite publish retries
        counters = bus.describe()["counters"]
        assert isinstance(counters, dict)
        assert counters["reconnects"] >= 1
    finally:
        await bus.close()
        with contextlib.suppress(Exception):
            private_nats.kill()


async def test_close_while_server_is_down_ends_retrying_publishes(private_nats: PrivateNats) -> None:
    bus = NatsBus(private_nats.url, stream="DOWN", subject_prefix="down", reconnect_wait_s=0.1)
    await bus.start()
    rec = Recorder()
    await bus.subscribe(["demand.swap_request"], "down", rec.handler, ack_wait_s=1.0)
    private_nats.kill()
    await wait_until(lambda: not bus.healthy(), what="disconnect noticed")
    pending = asyncio.create_task(bus.publish("demand.swap_request", b"x", msg_id="never"))
    await asyncio.sleep(0.3)
    assert not pending.done()  # still retrying while the server is away
    await asyncio.wait_for(bus.close(), 10)
    with pytest.raises(BusError):
        await asyncio.wait_for(pending, 10)
    assert not bus.healthy()
