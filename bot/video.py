"""Copying a demo video into a Slack thread: a capped, streamed download, then Slack's upload."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

CHUNK = 256 * 1024


class VideoError(Exception):
    """The video could not be copied; the message says why in words for the thread."""


async def download(http: httpx.AsyncClient, url: str, dest: Path, *, max_bytes: int) -> int:
    """Stream `url` into `dest`; refuse anything over `max_bytes`. Returns the size."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise VideoError("the demo link is not an http(s) URL")
    size = 0
    try:
        async with http.stream("GET", url) as response:
            if response.status_code != 200:
                raise VideoError(f"the demo link answered HTTP {response.status_code}")
            announced = response.headers.get("Content-Length")
            if announced and announced.isdigit() and int(announced) > max_bytes:
                raise VideoError(f"the video is larger than {max_bytes // 1_000_000} MB")
            with dest.open("wb") as out:
                async for chunk in response.aiter_bytes(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise VideoError(f"the video is larger than {max_bytes // 1_000_000} MB")
                    await asyncio.to_thread(out.write, chunk)
    except httpx.TimeoutException:
        raise VideoError("downloading the video took too long") from None
    except httpx.HTTPError as error:
        raise VideoError(f"the video could not be downloaded ({type(error).__name__})") from None
    if size == 0:
        raise VideoError("the demo link returned an empty file")
    return size


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
) -> str:
    """Slack's upload flow, streamed from disk: get a URL, send the bytes, share into the thread."""
    try:
        ticket = await client.files_getUploadURLExternal(filename=filename, length=size)
        sent = await http.post(str(ticket["upload_url"]), content=_chunks(path))
        if sent.status_code != 200:
            raise VideoError(f"Slack refused the upload (HTTP {sent.status_code})")
        file_id = str(ticket["file_id"])
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


async def copy_to_thread(
    client: AsyncWebClient,
    http: httpx.AsyncClient,
    url: str,
    *,
    max_bytes: int,
    filename: str,
    channel: str,
    thread_ts: str,
    comment: str,
) -> str:
    with tempfile.TemporaryDirectory(prefix="ivh-video-") as folder:
        path = Path(folder) / "demo.mp4"
        size = await download(http, url, path, max_bytes=max_bytes)
        return await upload(
            client,
            http,
            path,
            size,
            filename=filename,
            channel=channel,
            thread_ts=thread_ts,
            comment=comment,
        )
