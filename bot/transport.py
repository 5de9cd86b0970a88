"""httpx's client on aiohttp's connection pool: the transport the IVH client sends through.

httpcore's pool looks at every pooled connection on every request and every response (a
`select` each, through anyio): at 200 requests/s that was half a poller's CPU, and one process
could not reach the budget (bench/poll_cycle.py: 8.6 ms of CPU per poll, 4.4 ms through this).
aiohttp's pool, already in the process for Slack and the web server, does not. Requests and
answers stay httpx's, so the client's timeouts and errors keep their meaning.
"""

from __future__ import annotations

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
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(_text(exc), request=request) from exc
        except aiohttp.ClientConnectorError as exc:  # refused, unresolvable: nothing was sent
            raise httpx.ConnectError(_text(exc), request=request) from exc
        except aiohttp.SocketTimeoutError as exc:
            raise httpx.ReadTimeout(_text(exc), request=request) from exc
        except aiohttp.ClientResponseError as exc:  # not HTTP, or not HTTP we can read
            raise httpx.RemoteProtocolError(_text(exc), request=request) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:  # the request may have arrived
            raise httpx.ReadError(_text(exc), request=request) from exc
        return httpx.Response(
            answer.status,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.raw_headers],
            content=body,
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
