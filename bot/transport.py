"""httpx's client on aiohttp's connection pool: the transport the IVH client sends through.

httpcore's pool looks at every pooled connection on every request and every response (a
`select` each, through anyio): at 200 requests/s that was half a poller's CPU, and one process
could not reach the budget (bench/poll_cycle.py: 8.6 ms of CPU per poll, 4.4 ms through this).
aiohttp's pool, already in the process for Slack and the web server, does not. Requests and
answers stay httpx's, so the client's timeouts and errors keep their meaning.

Why not the `httpx-aiohttp` package, which does the same: tried against this project's tests
(2026-11-30, httpx-aiohttp 0.2.0), it sends the signature as signed, but its error mapping
makes every aiohttp ClientConnectionError a ConnectTimeout. A connection reset or closed
*after* the request went out then reads as "nothing was sent", and a confirmation that may
have reached Tencent would not be re-read as "outcome unknown". Its errors also carry
aiohttp's text, which quotes the signed URL. The mapping below is the part that matters.
"""

from __future__ import annotations

import errno
import functools
import ssl

import aiohttp
import certifi
import httpx
from yarl import URL

# Set by the session from the body it sends; httpx's own values would be sent twice.
_SESSION_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})


@functools.cache
def _tls() -> ssl.SSLContext:
    """httpx's trust store (certifi), loaded once per process: not the host's CA bundle."""
    return ssl.create_default_context(cafile=certifi.where())


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends each httpx request through one aiohttp session with up to `connections` open."""

    def __init__(self, connections: int = 100) -> None:
        self._connections = connections
        self._tls = _tls()  # loaded now, at start-up: not in the way of the first request
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use: aiohttp wants the running loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections, ssl=self._tls),
                auto_decompress=False,  # httpx decodes by Content-Encoding, as it always does
                cookie_jar=aiohttp.DummyCookieJar(),  # cookies are httpx's business
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        limits = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=limits.get("pool"),  # aiohttp's covers waiting for a pooled connection
            sock_connect=limits.get("connect"),
            sock_read=limits.get("read"),
        )
        headers = [
            (name, value)
            for name, value in request.headers.multi_items()
            if name.lower() not in _SESSION_HEADERS
        ]
        try:
            async with self._open().request(
                request.method,
                URL(str(request.url), encoded=True),  # as httpx encoded it: the signature's %2B
                data=await request.aread(),
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as answer:
                body = await answer.read()
        # aiohttp's texts quote the request URL, and with it the signature: each error below
        # says what happened in words of our own, and does not chain aiohttp's.
        except aiohttp.ConnectionTimeoutError:  # also a pooled connection not free in time
            raise httpx.ConnectTimeout("connect timeout", request=request) from None
        except aiohttp.ClientConnectorError as exc:  # refused, unresolvable: nothing was sent
            raise httpx.ConnectError(_cannot_connect(exc), request=request) from None
        except aiohttp.SocketTimeoutError:
            raise httpx.ReadTimeout("no answer in time", request=request) from None
        except aiohttp.ClientResponseError:  # not HTTP, or not HTTP we can read
            raise httpx.RemoteProtocolError("the answer is not HTTP", request=request) from None
        except (aiohttp.ClientError, TimeoutError) as exc:  # the request may have arrived
            raise httpx.ReadError(_dropped(exc), request=request) from None
        return httpx.Response(
            answer.status,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.raw_headers],
            content=body,
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _cannot_connect(exc: aiohttp.ClientConnectorError) -> str:
    if isinstance(exc, aiohttp.ClientSSLError | aiohttp.ClientConnectorCertificateError):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "host name not resolved"
    if isinstance(exc.os_error, ConnectionRefusedError):
        return "connection refused"
    code = errno.errorcode.get(exc.os_error.errno or 0)
    return f"cannot connect ({code})" if code else "cannot connect"


def _dropped(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed before the answer"
    if isinstance(exc, aiohttp.ClientConnectionResetError | ConnectionResetError) or (
        isinstance(exc, OSError) and exc.errno == errno.ECONNRESET
    ):
        return "connection reset"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "answer cut short"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"connection failed ({type(exc).__name__})"
