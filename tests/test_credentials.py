"""A signed IVH URL is a credential: no transport failure may carry it out of the request.

Every way a request can fail (refused, connect timeout, pool timeout, read timeout, reset, TLS)
is forced on loopback; the error's text, its traceback, the log, Slack, `/tasks` and `/ivh status`
are searched for the signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import sys
import traceback
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from bot.ivh import IvhClient, IvhError, RetryPolicy, signed_params
from bot.redact import RedactingFilter, redact
from bot.sim import RunningSimulator
from bot.transport import AiohttpTransport
from tests.conftest import free_port, wait_for
from tests.fake_slack import FakeSlack
from tests.harness import INTAKE, run_bot

APPKEY, TOKEN = "leak-appkey", "leak-access-token"
ONCE = RetryPolicy(attempts=1)
QUICK = httpx.Timeout(0.5, connect=0.5, pool=0.5)


def no_credentials(text: str) -> None:
    assert "signature" not in text.lower(), text
    assert TOKEN not in text


# --- servers that fail in every way ------------------------------------------------------------


@contextlib.contextmanager
def full_accept_queue() -> Iterator[int]:
    """A loopback port whose accept queue is full: a connect to it hangs until its timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for sock in [*fillers, listener]:
            sock.close()


@contextlib.asynccontextmanager
async def raw_server(behaviour: str, arrived: asyncio.Event | None = None) -> AsyncIterator[int]:
    """A TCP server that reads a request and then: `silent` (never answers), `reset` (RST),
    or `plain` (answers plain bytes, which a TLS client cannot read). `arrived` is set when a
    connection comes in."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        if arrived is not None:
            arrived.set()
        if behaviour == "plain":
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4)
            await writer.drain()
            writer.close()
            return
        with contextlib.suppress(ConnectionError):
            await reader.read(65536)
        if behaviour == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


async def fail_once(base_url: str, **options: object) -> IvhError:
    """Call both endpoints against `base_url`; return the confirmation's error."""
    async with IvhClient(
        base_url,
        APPKEY,
        TOKEN,
        retry=ONCE,
        timeout=options.pop("timeout", QUICK),  # type: ignore[arg-type]
        transport=options.pop("transport", AiohttpTransport()),  # type: ignore[arg-type]
    ) as client:
        with pytest.raises(IvhError) as polled:
            await client.get_progress("task_1")
        with pytest.raises(IvhError) as confirmed:
            await client.customer_confirm("task_1", "REJECT", "too dark")
    for error in (polled.value, confirmed.value):
        no_credentials(str(error))
        no_credentials(repr(error))
        no_credentials("".join(traceback.format_exception(error)))
    return confirmed.value


async def test_a_refused_connection_names_the_host_not_the_url() -> None:
    port = free_port()
    error = await fail_once(f"http://127.0.0.1:{port}")
    assert f"127.0.0.1:{port}" in error.message and "connection refused" in error.message
    assert not error.outcome_unknown


async def test_a_connect_timeout_does_not_quote_the_url() -> None:
    """aiohttp's own text for this one is "Connection timeout to host <the signed URL>"."""
    with full_accept_queue() as port:
        error = await fail_once(f"http://127.0.0.1:{port}")
    assert "connect timeout" in error.message


async def test_a_pool_timeout_does_not_quote_the_url() -> None:
    arrived = asyncio.Event()
    async with raw_server("silent", arrived) as port:
        transport = AiohttpTransport(connections=1)
        timeout = httpx.Timeout(5.0, pool=0.3)
        async with IvhClient(
            f"http://127.0.0.1:{port}",
            APPKEY,
            TOKEN,
            retry=ONCE,
            timeout=timeout,
            transport=transport,
        ) as client:
            holder = asyncio.create_task(client.get_progress("holds_the_connection"))
            await arrived.wait()  # it holds the one connection
            with pytest.raises(IvhError) as waited:
                await client.get_progress("task_1")
            holder.cancel()
            await asyncio.gather(holder, return_exceptions=True)
    no_credentials(str(waited.value) + "".join(traceback.format_exception(waited.value)))
    assert "connect timeout" in waited.value.message


@pytest.mark.parametrize(
    ("behaviour", "words"),
    [("silent", "no answer in time"), ("reset", "connection")],
)
async def test_a_dropped_or_silent_connection_does_not_quote_the_url(behaviour, words) -> None:
    async with raw_server(behaviour) as port:
        error = await fail_once(f"http://127.0.0.1:{port}")
    assert words in error.message
    assert error.outcome_unknown  # the confirmation may have arrived


async def test_a_failed_tls_handshake_does_not_quote_the_url() -> None:
    async with raw_server("plain") as port:
        error = await fail_once(f"https://127.0.0.1:{port}")
    assert f"127.0.0.1:{port}" in error.message


async def test_another_transports_text_is_replaced_by_our_words() -> None:
    """A transport that quotes the URL (httpx's own do, on some errors) is not believed."""

    def quoting(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout(f"Connection timeout to host {request.url}", request=request)

    error = await fail_once("http://ivh.invalid", transport=httpx.MockTransport(quoting))
    assert "connect timeout" in error.message


# --- the safety net ----------------------------------------------------------------------------


def test_redact_removes_signed_queries_and_bare_signatures() -> None:
    signed = httpx.URL("https://gw.tvs.qq.com/v2/x", params=signed_params(APPKEY, TOKEN, 1))
    for text in (str(signed), f"failed: {signed} (ok)", "signature=abc%2B%3D&x=1"):
        no_credentials(redact(text))
    assert redact("no credentials here") == "no credentials here"


def test_the_log_filter_redacts_messages_and_tracebacks() -> None:
    signed = str(httpx.URL("https://ivh.example/x", params=signed_params(APPKEY, TOKEN, 1)))
    try:
        raise RuntimeError(f"boom at {signed}")
    except RuntimeError:
        record = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "calling %s", (signed,), exc_info=True
        )
        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    no_credentials(logging.Formatter().format(record))


# --- end to end: what Slack, /tasks and /ivh status show ---------------------------------------


class Gate:
    """A TCP front for the simulator that can be closed (refused) or jammed (connects hang)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: list[asyncio.StreamWriter] = []
        self._jam: contextlib.ExitStack | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._pipes += [writer, up_writer]

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))

    async def shut(self, how: str) -> None:
        """`refused`: nothing listens; `connect timeout`: a listener whose queue is full."""
        assert self._server is not None
        self._server.close()
        for writer in self._pipes:
            writer.transport.abort()
        await self._server.wait_closed()
        if how == "connect timeout":
            self._jam = contextlib.ExitStack()
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(0)
            self._jam.callback(listener.close)
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", self.port))
                self._jam.callback(filler.close)

    def close(self) -> None:
        if self._jam is not None:
            self._jam.close()
        if self._server is not None:
            self._server.close()


@pytest.mark.parametrize("how", ["refused", "connect timeout"])
async def test_no_signature_reaches_slack_tasks_status_or_logs(
    sim: RunningSimulator, fake: FakeSlack, redis_url: str, caplog, how: str
) -> None:
    gate = Gate(int(httpx.URL(sim.url).port or 80))
    await gate.open()
    sim.sim.create_task("leaky_1")
    caplog.set_level(logging.DEBUG)
    for quotes_urls in ("httpx", "httpcore"):  # as `ivh-approvals run` sets them (bot/cli.py)
        caplog.set_level(logging.WARNING, logger=quotes_urls)
    try:
        async with run_bot(sim, fake, redis_url, ivh_url=gate.url, IVH_TIMEOUT=1) as bot:
            await bot.track("leaky_1")
            record = await bot.posted("leaky_1")
            await gate.shut(how)
            value = json.dumps({"task": "leaky_1", "round": record.round}, separators=(",", ":"))
            assert (await bot.click("approve", value)).status_code == 200

            async def told() -> bool:
                return "did not reach Tencent" in json.dumps([c.args for c in fake.calls])

            async def poll_failed() -> bool:
                return bool((await bot.record("leaky_1")).error)

            await wait_for(told, 15)
            await wait_for(poll_failed, 15)
            status = await bot.command("status leaky_1")
            task = await bot.http.get(
                "/tasks/leaky_1", headers={"Authorization": f"Bearer {INTAKE}"}
            )
    finally:
        gate.close()
    shown = {
        "slack": json.dumps([c.args for c in fake.calls]),
        "status": status.text,
        "tasks": task.text,
        "log": caplog.text,
    }
    assert "IVH" in shown["status"] and "IVH" in shown["tasks"]  # the error is shown ...
    for text in shown.values():
        no_credentials(text)  # ... and no credential with it
