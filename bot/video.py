"""Copying a demo video into a Slack thread: a guarded, capped download, then Slack's upload.

Demo links come from Tencent's answers and are treated as untrusted: only http(s), only hosts
that VIDEO_HOSTS allows, never a private, loopback or link-local address unless the host is
listed by exact name, redirects followed by hand and checked again, a size cap, one deadline.
What comes back is uploaded only if it starts like an MP4 or QuickTime file.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.hosts import HostPolicy, is_public_address, normalize_host, parse_ip

CHUNK = 256 * 1024
MAX_REDIRECTS = 3
REDIRECTS = frozenset({301, 302, 303, 307, 308})

Resolver = Callable[[str, int], Awaitable[list[str]]]
Sharing = Callable[[str], Awaitable[None]]  # told a file's id before it is shared

_SHOWABLE = re.compile(r"[a-z0-9.:_-]{1,100}")
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,40}/[a-z0-9][a-z0-9.+-]{0,60}")
# The box (atom) types an MP4 (ISO BMFF) or QuickTime file starts with: `ftyp` in every MP4,
# `moov`, `mdat`, `wide`, `free`, `skip`, `pnot` in older QuickTime files.
VIDEO_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
HEAD = 8  # a box header: 4 bytes of size, 4 of type


class VideoError(Exception):
    """The video could not be copied; the message says why in words for the thread."""


# --- which addresses -----------------------------------------------------------------------


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, from the event loop's non-blocking getaddrinfo."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _shown(host: str) -> str:
    """The host as it may appear in Slack: plain characters only, else a neutral word."""
    return host if _SHOWABLE.fullmatch(host) else "its host"


async def _checked_addresses(url: httpx.URL, hosts: HostPolicy, resolve: Resolver) -> list[str]:
    """The addresses `url` may be fetched from, or VideoError saying why none may."""
    if url.scheme not in ("http", "https"):
        raise VideoError("the demo link is not an http(s) URL")
    name = url.raw_host.decode("ascii")
    if not name:
        raise VideoError("the demo link has no host")
    if not hosts.allows(name, url.port, url.scheme):
        shown = _shown(name) if url.port is None else f"{_shown(name)} port {url.port}"
        raise VideoError(f"the demo link's host {shown} is not allowed (VIDEO_HOSTS)")
    literal = parse_ip(normalize_host(name))
    if literal is not None:
        addresses = [str(literal)]
    else:
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = await resolve(name, port)
        except (OSError, UnicodeError):
            addresses = []
        if not addresses:
            raise VideoError(f"the demo link's host {_shown(name)} could not be resolved")
    if not hosts.explicit(name, url.port, url.scheme) and not all(
        is_public_address(a) for a in addresses
    ):
        raise VideoError(f"the demo link's host {_shown(name)} is a private or local address")
    return addresses


# --- the download --------------------------------------------------------------------------


def _pinned(http: httpx.AsyncClient, url: httpx.URL, address: str) -> httpx.Request:
    """A GET for `url` sent to the already checked `address`, so DNS cannot change in between.

    The URL carries the address; the Host header and, for https, the TLS SNI and certificate
    check keep the original name (the `sni_hostname` request extension of httpx/httpcore).
    `Connection: close` keeps the connection out of the pool: the pool knows connections by
    address, so a later request for another name there could reuse one verified for this name.
    """
    target = httpx.URL(scheme=url.scheme, host=address, port=url.port, raw_path=url.raw_path)
    name = url.raw_host.decode("ascii")
    extensions: dict[str, str] = {}
    if url.scheme == "https" and parse_ip(normalize_host(name)) is None:
        extensions["sni_hostname"] = name
    headers = {
        "Host": url.netloc.decode("ascii"),
        "Accept-Encoding": "identity",
        "Connection": "close",
    }
    return http.build_request("GET", target, headers=headers, extensions=extensions)


@contextlib.asynccontextmanager
async def _get(
    http: httpx.AsyncClient, url: httpx.URL, addresses: list[str]
) -> AsyncIterator[httpx.Response]:
    """The streamed response from the first of `addresses` that accepts a connection."""
    failure: httpx.ConnectError | None = None
    for address in addresses:
        try:
            response = await http.send(
                _pinned(http, url, address), stream=True, follow_redirects=False
            )
        except httpx.ConnectError as error:
            failure = error
            continue
        try:
            yield response
        finally:
            await response.aclose()
        return
    assert failure is not None
    raise failure


def _too_big(max_bytes: int) -> VideoError:
    limit = f"{max_bytes // 1_000_000} MB" if max_bytes >= 1_000_000 else f"{max_bytes} bytes"
    return VideoError(f"the video is larger than {limit}")


def looks_like_video(head: bytes) -> bool:
    """Whether a file starting with `head` is an MP4 or QuickTime video: a box at offset 0."""
    if len(head) < HEAD:
        return False
    size = int.from_bytes(head[:4], "big")  # 0: to the end of the file, 1: a 64-bit size follows
    return head[4:HEAD] in VIDEO_BOXES and (size in (0, 1) or size >= HEAD)


def _not_a_video(response: httpx.Response) -> VideoError:
    served = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if _MEDIA_TYPE.fullmatch(served) and not served.startswith(("video/", "application/oct")):
        return VideoError(f"the demo link served {served}, not a video")
    return VideoError("the demo link's file is not an MP4 or QuickTime video")


async def _save(response: httpx.Response, dest: Path, max_bytes: int) -> int:
    if response.status_code != 200:
        raise VideoError(f"the demo link answered HTTP {response.status_code}")
    if response.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
        # Decoding would let a small compressed body expand in memory; a video needs none.
        raise VideoError("the demo link sent a compressed file instead of a video")
    announced = response.headers.get("Content-Length", "").strip()
    digits = announced.isascii() and announced.isdigit()
    if digits and (len(announced) > 18 or int(announced) > max_bytes):
        raise _too_big(max_bytes)
    size = 0
    head = b""  # checked as soon as it is complete: an HTML page is not downloaded further
    with dest.open("wb") as out:
        async for chunk in response.aiter_raw(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise _too_big(max_bytes)
            if len(head) < HEAD:
                head = (head + chunk)[:HEAD]
                if len(head) == HEAD and not looks_like_video(head):
                    raise _not_a_video(response)
            await asyncio.to_thread(out.write, chunk)
    if size == 0:
        raise VideoError("the demo link returned an empty file")
    if not looks_like_video(head):
        raise _not_a_video(response)
    return size


async def _fetch(
    http: httpx.AsyncClient,
    url: httpx.URL,
    dest: Path,
    max_bytes: int,
    hosts: HostPolicy,
    resolve: Resolver,
) -> int:
    for _hop in range(MAX_REDIRECTS + 1):
        addresses = await _checked_addresses(url, hosts, resolve)
        async with _get(http, url, addresses) as response:
            if response.status_code not in REDIRECTS:
                return await _save(response, dest, max_bytes)
            location = response.headers.get("Location")
            if not location:
                raise VideoError(f"the demo link answered HTTP {response.status_code}")
            url = url.join(location)
    raise VideoError(f"the demo link redirected more than {MAX_REDIRECTS} times")


async def download(
    http: httpx.AsyncClient,
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    hosts: HostPolicy,
    time_limit: float,
    resolve: Resolver = resolve_host,
) -> int:
    """Stream `url` into `dest` within `time_limit` seconds in all; refuse more than `max_bytes`.

    Every hop (the link and each redirect) must pass `hosts` and the address check. `http`
    supplies the TLS settings and default headers; its redirect setting is not used.
    Returns the size.
    """
    try:
        async with asyncio.timeout(time_limit):
            return await _fetch(http, httpx.URL(url), dest, max_bytes, hosts, resolve)
    except (TimeoutError, httpx.TimeoutException):
        raise VideoError(f"downloading the video took longer than {time_limit:g} s") from None
    except httpx.InvalidURL:
        raise VideoError("the demo link is not a valid URL") from None
    except httpx.HTTPError as error:
        raise VideoError(f"the video could not be downloaded ({type(error).__name__})") from None


# --- the upload ----------------------------------------------------------------------------


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as source:
        while chunk := await asyncio.to_thread(source.read, CHUNK):
            yield chunk


async def upload(
    client: AsyncWebClient,
    http: httpx.AsyncClient,
    path: Path,
    size: int,
    *,
    filename: str,
    channel: str,
    thread_ts: str,
    comment: str,
    sharing: Sharing | None = None,
) -> str:
    """Slack's upload flow, streamed from disk: get a URL, send the bytes, share into the thread.

    `sharing` learns the file's id just before it is shared, so that a process killed after
    the share can be told apart from one killed before it."""
    try:
        ticket = await client.files_getUploadURLExternal(filename=filename, length=size)
        await _send_bytes(http, str(ticket["upload_url"]), path, size)
        file_id = str(ticket["file_id"])
        if sharing is not None:
            await sharing(file_id)
        await client.files_completeUploadExternal(
            files=[{"id": file_id, "title": filename}],
            channel_id=channel,
            thread_ts=thread_ts,
            initial_comment=comment,
        )
    except SlackApiError as error:
        code = error.response.get("error", "unknown_error")
        explained = {
            "file_uploads_disabled": "this workspace does not allow file uploads",
            "file_upload_size_restricted": "the file is over this workspace's upload limit",
            "not_in_channel": "the bot is not in the channel (invite it)",
        }
        raise VideoError(explained.get(code, f"Slack answered {code}")) from None
    except httpx.HTTPError as error:
        raise VideoError(f"sending the video to Slack failed ({type(error).__name__})") from None
    return file_id


UPLOAD_ATTEMPTS = 4


async def _send_bytes(http: httpx.AsyncClient, url: str, path: Path, size: int) -> None:
    """POST the file to Slack's upload URL, waiting out 429s (Retry-After) and 5xx.

    Streamed from disk with its length announced, as slack_sdk sends its own uploads: given
    a Content-Length, httpx sends the body as it is instead of chunked."""
    headers = {"Content-Length": str(size)}
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        sent = await http.post(url, content=_chunks(path), headers=headers)
        if sent.status_code == 200:
            return
        retryable = sent.status_code == 429 or sent.status_code >= 500
        if not retryable or attempt == UPLOAD_ATTEMPTS:
            raise VideoError(f"Slack refused the upload (HTTP {sent.status_code})")
        wait = sent.headers.get("Retry-After", "")
        await asyncio.sleep(min(60, int(wait)) if wait.isdigit() else 2**attempt)


async def copy_to_thread(
    client: AsyncWebClient,
    http: httpx.AsyncClient,
    url: str,
    *,
    max_bytes: int,
    hosts: HostPolicy,
    time_limit: float,
    filename: str,
    channel: str,
    thread_ts: str,
    comment: str,
    resolve: Resolver = resolve_host,
    sharing: Sharing | None = None,
) -> str:
    with tempfile.TemporaryDirectory(prefix="ivh-video-") as folder:
        path = Path(folder) / "demo.mp4"
        size = await download(
            http,
            url,
            path,
            max_bytes=max_bytes,
            hosts=hosts,
            time_limit=time_limit,
            resolve=resolve,
        )
        return await upload(
            client,
            http,
            path,
            size,
            filename=filename,
            channel=channel,
            thread_ts=thread_ts,
            comment=comment,
            sharing=sharing,
        )
