"""Demo-video downloads: only allowed hosts, never the internal network, capped in size and time.

The servers are real, on loopback. Where a test needs a name under a `*.domain` pattern that
resolves to loopback, it passes a stand-in for DNS (`resolve=`): the system resolver here knows
only `localhost`, and a poisoned or rebinding DNS answer is exactly the attack being tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import DEFAULT_VIDEO_HOSTS, SettingsError, load_settings
from bot.hosts import HostPolicy, is_public_address
from bot.video import (
    VideoError,
    copy_to_thread,
    download,
    looks_like_video,
    resolve_host,
)
from tests.conftest import serving
from tests.fake_slack import fake_slack

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40
PAGE = b"<!DOCTYPE html><html><body>Access denied</body></html>" * 50
MB = 1_000_000


# --- the policy ----------------------------------------------------------------------------


def test_an_exact_entry_matches_that_host_only():
    policy = HostPolicy.parse("media.example.com, 127.0.0.1")
    assert policy.allows("media.example.com") and policy.allows("MEDIA.Example.com.")
    assert not policy.allows("a.media.example.com")
    assert not policy.allows("example.com")
    assert policy.explicit("media.example.com") and policy.explicit("127.0.0.1")


def test_a_wildcard_matches_names_under_its_domain_but_not_the_domain_itself():
    policy = HostPolicy.parse("*.example.com")
    assert policy.allows("a.example.com") and policy.allows("a.b.example.com")
    assert not policy.allows("example.com")
    assert not policy.allows("badexample.com")
    assert not policy.allows("example.com.evil.net")
    assert not policy.explicit("a.example.com")
    both = HostPolicy.parse(["*.example.com", "example.com"])
    assert both.allows("example.com") and both.explicit("example.com")


def test_an_address_matches_only_an_exact_entry():
    assert not HostPolicy.parse("*.0.1").allows("127.0.0.1")
    v6 = HostPolicy.parse("[::1]")
    assert v6.allows("::1") and v6.allows("0:0::1") and v6.explicit("::1")
    assert not HostPolicy.parse("localhost").allows("127.0.0.1")


def test_including_adds_one_exact_entry():
    policy = HostPolicy.parse("*.myqcloud.com").including("127.0.0.1")
    assert policy.explicit("127.0.0.1") and policy.allows("b.cos.ap-nanjing.myqcloud.com")
    simulator = HostPolicy.parse("*.myqcloud.com").including("127.0.0.1", 8900)
    assert simulator.explicit("127.0.0.1", 8900, "http") and simulator.allows("127.0.0.1", 8900)
    assert not simulator.allows("127.0.0.1") and not simulator.allows("127.0.0.1", 8901)


def test_an_entry_without_a_port_allows_the_default_ports_only():
    policy = HostPolicy.parse("media.example.com, 127.0.0.1, [::1], *.example.net")
    for host in ("media.example.com", "127.0.0.1", "::1", "cdn.example.net"):
        assert policy.allows(host, None, "https") and policy.allows(host, None, "http")
        assert policy.allows(host, 443, "https") and policy.allows(host, 80, "http")
        assert not policy.allows(host, 8900, "http") and not policy.allows(host, 22, "https")
        assert not policy.allows(host, 443, "http") and not policy.allows(host, 80, "https")
    assert not policy.explicit("127.0.0.1", 6379, "http")  # no way to a local service


@pytest.mark.parametrize(
    ("entry", "host"),
    [("127.0.0.1:8900", "127.0.0.1"), ("[::1]:8900", "::1"), ("Host.Example:8900", "host.example"),
     ("*.example.com:8900", "cdn.example.com")],
)  # fmt: skip
def test_an_entry_with_a_port_allows_that_port_only(entry, host):
    policy = HostPolicy.parse(entry)
    assert policy.allows(host, 8900, "http") and policy.allows(host, 8900, "https")
    assert not policy.allows(host, None, "https") and not policy.allows(host, 8901, "http")
    assert policy.explicit(host, 8900, "http") == (not entry.startswith("*."))


def test_a_port_written_as_the_default_one_means_that_port_in_either_scheme():
    policy = HostPolicy.parse("media.example.com:443")
    assert policy.allows("media.example.com", None, "https")
    assert policy.allows("media.example.com", 443, "http")
    assert not policy.allows("media.example.com", None, "http")  # port 80


@pytest.mark.parametrize(
    "entry",
    ["https://a.example.com", "a.example.com/x", "*", "*.", "a.*.com",
     "*.10.0.0.1", "exa mple.com", "-a.example.com", "a.example.com:", "a.example.com:0",
     "a.example.com:65536", "a.example.com:443x", "*.example.com:https", ":443", "[::1]:",
     "[a.example.com]:443", "127.0.0.1:80:80"],
)  # fmt: skip
def test_a_malformed_entry_is_refused(entry):
    with pytest.raises(ValueError, match="expected host names"):
        HostPolicy.parse(entry)


@pytest.mark.parametrize(
    "address",
    ["10.1.2.3", "172.16.5.4", "192.168.1.1", "127.0.0.1", "169.254.169.254", "0.0.0.0",
     "224.0.0.1", "100.64.0.1", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1",
     "fc00::1", "fd12:3456::1", "ff02::1", "fec0::1", "::ffff:127.0.0.1",
     "64:ff9b::a9fe:a9fe", "2002:7f00:1::1"],
)  # fmt: skip
def test_internal_addresses_are_not_public(address):
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"])
def test_internet_addresses_are_public(address):
    assert is_public_address(address)


def test_video_hosts_setting_defaults_to_tencent_media_and_names_a_bad_entry():
    defaults = load_settings(_env_file=None)
    assert defaults.VIDEO_HOSTS == ["*.myqcloud.com", "*.tencentcos.cn", "*.ivh.qq.com"]
    assert tuple(defaults.VIDEO_HOSTS) == DEFAULT_VIDEO_HOSTS
    settings = load_settings(_env_file=None, VIDEO_HOSTS="127.0.0.1, *.example.com")
    assert settings.VIDEO_HOSTS == ["127.0.0.1", "*.example.com"]
    assert settings.video_hosts.explicit("127.0.0.1")
    ported = load_settings(_env_file=None, VIDEO_HOSTS="127.0.0.1:8900, *.example.com:8443")
    assert ported.video_hosts.explicit("127.0.0.1", 8900, "http")
    assert ported.video_hosts.allows("cdn.example.com", 8443) and not ported.video_hosts.allows(
        "cdn.example.com"
    )
    with pytest.raises(SettingsError, match="VIDEO_HOSTS"):
        load_settings(_env_file=None, VIDEO_HOSTS="https://cdn.example.com/videos")
    with pytest.raises(SettingsError, match=r"VIDEO_HOSTS.*:port \(1-65535\)"):
        load_settings(_env_file=None, VIDEO_HOSTS="127.0.0.1:99999")


async def test_the_system_resolver_is_asked_without_blocking():
    assert "127.0.0.1" in await resolve_host("localhost", 80)


# --- a media server on loopback ------------------------------------------------------------


@dataclass
class Media:
    url: str  # http://127.0.0.1:PORT
    port: int
    hosts: list[str] = field(default_factory=list)  # Host headers of the requests served

    def at(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def listed(self, host: str = "127.0.0.1") -> str:
        """The VIDEO_HOSTS entry for this server: it is not on a default port."""
        return f"{host}:{self.port}"


def media_app(seen: list[str]) -> web.Application:
    async def video(request: web.Request) -> web.Response:
        seen.append(request.host)
        return web.Response(body=VIDEO, content_type="video/mp4")

    async def hop(request: web.Request) -> web.Response:
        seen.append(request.host)
        left = int(request.match_info["n"])
        raise web.HTTPFound("/video" if left == 0 else f"/hop/{left - 1}")

    async def to(request: web.Request) -> web.Response:
        seen.append(request.host)
        raise web.HTTPFound(request.query["url"])

    async def announced_huge(request: web.Request) -> web.StreamResponse:
        seen.append(request.host)
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = 10**12
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            await response.write(b"x" * 1024)
        return response

    async def endless(request: web.Request) -> web.StreamResponse:
        seen.append(request.host)
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            await response.write(VIDEO[:8])  # a video, as far as the first bytes tell
            for _ in range(1000):  # 64 MB at most, if nobody hung up
                await response.write(b"x" * 65536)
        return response

    async def trickle(request: web.Request) -> web.StreamResponse:
        # A video that never ends, a byte every 50 ms: no single read waits long, and only a
        # deadline on the whole download stops it (without one, the test hangs until its bound).
        seen.append(request.host)
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            await response.write(VIDEO[:8])  # a video, as far as the first bytes tell
            while True:
                await asyncio.sleep(0.05)
                await response.write(b"x")
        return response

    async def compressed(request: web.Request) -> web.Response:
        seen.append(request.host)
        return web.Response(body=gzip.compress(VIDEO), headers={"Content-Encoding": "gzip"})

    async def empty(request: web.Request) -> web.Response:
        seen.append(request.host)
        return web.Response(body=b"", content_type="video/mp4")

    async def page(request: web.Request) -> web.Response:
        seen.append(request.host)
        return web.Response(body=PAGE, content_type="text/html", charset="utf-8")

    async def mislabelled(request: web.Request) -> web.Response:
        seen.append(request.host)
        headers = {"Content-Type": request.query.get("type", "video/mp4")}
        return web.Response(body=PAGE, headers=headers)

    async def tiny(request: web.Request) -> web.Response:
        seen.append(request.host)
        return web.Response(body=b"\x00\x00\x00", content_type="video/mp4")

    app = web.Application()
    app.add_routes(
        [
            web.get("/video", video),
            web.get(r"/hop/{n:\d+}", hop),
            web.get("/to", to),
            web.get("/huge", announced_huge),
            web.get("/endless", endless),
            web.get("/trickle", trickle),
            web.get("/gzip", compressed),
            web.get("/empty", empty),
            web.get("/page", page),
            web.get("/mislabelled", mislabelled),
            web.get("/tiny", tiny),
        ]
    )
    return app


@pytest.fixture
async def media() -> AsyncIterator[Media]:
    seen: list[str] = []
    async with serving(media_app(seen)) as url:
        yield Media(url, int(url.rsplit(":", 1)[1]), seen)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # follow_redirects=True as a careless caller might set it: download() never lets the client
    # follow a redirect on its own, every hop goes through the checks.
    async with httpx.AsyncClient(trust_env=False, follow_redirects=True) as client:
        yield client


Fetch = Callable[..., Awaitable[int]]


@pytest.fixture
def fetch(http: httpx.AsyncClient, tmp_path: Path) -> Fetch:
    """download() into a temp file with test-sized defaults."""

    async def run(url: str, hosts: str, **options: object) -> int:
        options = {"max_bytes": MB, "time_limit": 5.0} | options
        return await download(
            http, url, tmp_path / "demo.mp4", hosts=HostPolicy.parse(hosts), **options
        )

    return run


def dns(answers: dict[str, list[str]]) -> Callable[[str, int], Awaitable[list[str]]]:
    """A stand-in for DNS that answers from a table, as a spoofed or rebinding resolver could."""

    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    return resolve


# --- allowed and refused hosts -------------------------------------------------------------


async def test_an_explicitly_listed_loopback_server_is_downloaded(media, fetch, tmp_path):
    assert await fetch(media.at("/video"), media.listed()) == len(VIDEO)
    assert (tmp_path / "demo.mp4").read_bytes() == VIDEO


async def test_a_listed_name_is_fetched_from_its_checked_address_under_its_own_name(media, fetch):
    assert await fetch(media.at("/video", "localhost"), media.listed("localhost")) == len(VIDEO)
    assert media.hosts == [f"localhost:{media.port}"]


@pytest.mark.parametrize(
    ("host", "hosts"),
    [
        ("127.0.0.1", "*.example.com:{port}"),
        ("localhost", "*.example.com:{port}, 127.0.0.1:{port}"),
        ("[::1]", "*.example.com:{port}, 127.0.0.1:{port}"),
        ("169.254.169.254", "*.example.com:{port}"),
        ("10.0.0.1", "*.0.0.1:{port}"),
    ],
)
async def test_a_host_not_listed_is_refused(media, fetch, host, hosts):
    with pytest.raises(VideoError, match="is not allowed"):
        await fetch(media.at("/video", host), hosts.format(port=media.port))
    assert media.hosts == []


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/demo.mp4", "file:///etc/passwd"])
async def test_other_schemes_are_refused(fetch, url):
    with pytest.raises(VideoError, match=r"not an http\(s\) URL"):
        await fetch(url, "127.0.0.1")


@pytest.mark.parametrize(
    "answer",
    [["127.0.0.1"], ["169.254.169.254"], ["::1"], ["10.0.0.7"], ["93.184.216.34", "127.0.0.1"],
     ["::ffff:127.0.0.1"]],
)  # fmt: skip
async def test_a_wildcard_name_resolving_to_an_internal_address_is_refused(
    media, http, tmp_path, answer
):
    with pytest.raises(VideoError, match="private or local address"):
        await download(
            http,
            media.at("/video", "cdn.example.com"),
            tmp_path / "demo.mp4",
            max_bytes=MB,
            time_limit=5,
            hosts=HostPolicy.parse(media.listed("*.example.com")),
            resolve=dns({"cdn.example.com": answer}),
        )
    assert media.hosts == []


async def test_only_an_exact_entry_lets_a_name_resolve_to_loopback(media, http, tmp_path):
    resolve = dns({"media.example.com": ["127.0.0.1"]})
    url = media.at("/video", "media.example.com")
    exact = HostPolicy.parse(media.listed("media.example.com"))
    size = await download(
        http, url, tmp_path / "a.mp4", max_bytes=MB, time_limit=5, hosts=exact, resolve=resolve
    )
    assert size == len(VIDEO) and media.hosts == [f"media.example.com:{media.port}"]
    wildcard = HostPolicy.parse(media.listed("*.example.com"))
    with pytest.raises(VideoError, match="private or local address"):
        await download(
            http,
            url,
            tmp_path / "b.mp4",
            max_bytes=MB,
            time_limit=5,
            hosts=wildcard,
            resolve=resolve,
        )


async def test_an_unresolvable_name_is_refused(http, tmp_path):
    with pytest.raises(VideoError, match="could not be resolved"):
        await download(
            http,
            "https://gone.example.com/demo.mp4",
            tmp_path / "demo.mp4",
            max_bytes=MB,
            time_limit=5,
            hosts=HostPolicy.parse("*.example.com"),
            resolve=dns({"gone.example.com": []}),
        )


# --- redirects -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "refusal"),
    [
        ("http://169.254.169.254/latest/meta-data/", "is not allowed"),
        ("http://localhost:{port}/video", "is not allowed"),
        ("file:///etc/passwd", r"not an http\(s\) URL"),
    ],
)
async def test_a_redirect_to_a_host_not_listed_is_refused(media, fetch, target, refusal):
    location = target.format(port=media.port)
    with pytest.raises(VideoError, match=refusal):
        await fetch(media.at("/to") + "?" + str(httpx.QueryParams(url=location)), media.listed())
    assert media.hosts == [f"127.0.0.1:{media.port}"]  # the redirect only, nothing after it


async def test_a_listed_host_on_another_port_is_refused_before_any_request(media, fetch):
    with pytest.raises(VideoError, match=f"host 127.0.0.1 port {media.port} is not allowed"):
        await fetch(media.at("/video"), "127.0.0.1, 127.0.0.1:1")
    with pytest.raises(VideoError, match="is not allowed"):
        await fetch(media.at("/video", "localhost"), f"localhost, 127.0.0.1:{media.port}")
    assert media.hosts == []


async def test_a_redirect_to_another_port_of_a_listed_host_is_refused(media, fetch):
    with pytest.raises(VideoError, match="port 8 is not allowed"):
        await fetch(media.at("/to?url=http://127.0.0.1:8/video"), media.listed())
    assert media.hosts == [f"127.0.0.1:{media.port}"]  # the redirect only


async def test_a_redirect_within_the_listed_hosts_is_followed(media, fetch):
    assert await fetch(media.at("/to?url=/video"), media.listed()) == len(VIDEO)


async def test_three_redirects_are_followed_and_a_fourth_is_refused(media, fetch):
    assert await fetch(media.at("/hop/2"), media.listed()) == len(VIDEO)  # 3 redirects
    media.hosts.clear()
    with pytest.raises(VideoError, match="redirected more than 3 times"):
        await fetch(media.at("/hop/3"), media.listed())  # 4 redirects
    assert len(media.hosts) == 4  # the last redirect is not followed


# --- size, time, content -------------------------------------------------------------------


async def test_an_announced_size_over_the_cap_is_refused_before_reading(media, fetch, tmp_path):
    with pytest.raises(VideoError, match="larger than 1 MB"):
        await fetch(media.at("/huge"), media.listed())
    assert not (tmp_path / "demo.mp4").exists()


async def test_a_chunked_stream_over_the_cap_is_cut_off(media, fetch, tmp_path):
    with pytest.raises(VideoError, match="larger than 1 MB"):
        await fetch(media.at("/endless"), media.listed())
    assert (tmp_path / "demo.mp4").stat().st_size <= MB


async def test_a_small_cap_is_stated_in_bytes(media, fetch):
    with pytest.raises(VideoError, match="larger than 1000 bytes"):
        await fetch(media.at("/video"), media.listed(), max_bytes=1000)


async def test_the_deadline_covers_the_whole_download_not_each_read(media, fetch):
    """The stream never ends and each byte comes well within any per-read timeout: only the
    deadline on the whole download can end it. The outer bound only bounds a hang."""
    async with asyncio.timeout(30):
        with pytest.raises(VideoError, match=r"took longer than 0\.5 s"):
            await fetch(media.at("/trickle"), media.listed(), time_limit=0.5)


@pytest.mark.parametrize(
    ("path", "refusal"),
    [("/gzip", "compressed file"), ("/empty", "empty file"), ("/missing", "HTTP 404")],
)
async def test_a_bad_answer_is_explained(media, fetch, path, refusal):
    with pytest.raises(VideoError, match=refusal):
        await fetch(media.at(path), media.listed())


# --- a video, not whatever the link serves -------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"\x00\x00\x00\x20ftypisom",  # MP4
        b"\x00\x00\x00\x14ftypqt  ",  # QuickTime with a file type box
        b"\x00\x00\x00\x08wide\x00\x01\x00\x00mdat",  # older QuickTime
        b"\x00\x00\x2f\x00moov",
        b"\x00\x00\x00\x01mdat" + b"\x00" * 8,  # a 64-bit size follows
        b"\x00\x00\x00\x00mdat",  # to the end of the file
        b"\x00\x00\x00\x10free",
        b"\x00\x00\x00\x10skip",
        b"\x00\x00\x00\x14pnot",
    ],
)
def test_mp4_and_quicktime_files_look_like_videos(head):
    assert looks_like_video(head)


@pytest.mark.parametrize(
    "head",
    [b"<!DOCTYPE html>", b"<html><head>", b'{"error": "expired"}', b"\x1aE\xdf\xa3webm",
     b"GIF89a......", b"\x00\x00\x00\x04ftyp", b"\x00\x00\x00\x20FTYP", b"\x00\x00\x00\x20ftp",
     b""],
)  # fmt: skip
def test_other_files_do_not(head):
    assert not looks_like_video(head)


@pytest.mark.parametrize(
    ("path", "refusal"),
    [
        ("/page", "the demo link served text/html, not a video"),
        ("/mislabelled", "the demo link's file is not an MP4 or QuickTime video"),
        ("/mislabelled?type=application/octet-stream", "is not an MP4 or QuickTime video"),
        ("/mislabelled?type=application/json;%20charset=utf-8", "served application/json, not"),
        ("/mislabelled?type=<b>bold</b>", "is not an MP4 or QuickTime video"),
        ("/tiny", "is not an MP4 or QuickTime video"),
    ],
)
async def test_what_is_not_a_video_is_refused_saying_what_it_is(media, fetch, path, refusal):
    with pytest.raises(VideoError) as refused:
        await fetch(media.at(path), media.listed())
    assert refusal in str(refused.value)


async def test_a_page_instead_of_a_video_is_not_uploaded(media, http):
    async with fake_slack() as fake:
        client = AsyncWebClient(token="xoxb-test-token", base_url=fake.api_url)
        parent = await client.chat_postMessage(channel="C1", text="Demo ready")
        with pytest.raises(VideoError, match="served text/html, not a video"):
            await copy_to_thread(
                client,
                http,
                media.at("/page"),
                max_bytes=MB,
                hosts=HostPolicy.parse(media.listed()),
                time_limit=5,
                filename="demo.mp4",
                channel="C1",
                thread_ts=parent["ts"],
                comment="Demo video",
            )
        assert fake.calls_to("files.getUploadURLExternal") == []
        assert fake.uploads == {} and fake.thread("C1", parent["ts"]) == []


# --- https: the checked address, the original name for SNI and the certificate -------------


@pytest.fixture(scope="module")
def localhost_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


@contextlib.asynccontextmanager
async def serving_tls(app: web.Application, cert: Path, key: Path, names: list[str]):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment]
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def test_https_connects_to_the_checked_address_and_verifies_the_name(
    localhost_cert, tmp_path
):
    cert, key = localhost_cert
    seen: list[str] = []
    sni: list[str] = []
    async with (
        serving_tls(media_app(seen), cert, key, sni) as port,
        httpx.AsyncClient(verify=ssl.create_default_context(cafile=cert), trust_env=False) as http,
    ):
        size = await download(
            http,
            f"https://localhost:{port}/video",
            tmp_path / "a.mp4",
            max_bytes=MB,
            time_limit=5,
            hosts=HostPolicy.parse(f"localhost:{port}"),
        )
        assert size == len(VIDEO)
        assert (seen, sni) == ([f"localhost:{port}"], ["localhost"])

        # The certificate names localhost, not the address: checked against the URL's host.
        with pytest.raises(VideoError, match="could not be downloaded"):
            await download(
                http,
                f"https://127.0.0.1:{port}/video",
                tmp_path / "b.mp4",
                max_bytes=MB,
                time_limit=5,
                hosts=HostPolicy.parse(f"127.0.0.1:{port}"),
            )


# --- the whole copy ------------------------------------------------------------------------


async def test_copy_to_thread_uploads_the_checked_download(media, http):
    async with fake_slack() as fake:
        client = AsyncWebClient(token="xoxb-test-token", base_url=fake.api_url)
        parent = await client.chat_postMessage(channel="C1", text="Demo ready")
        await copy_to_thread(
            client,
            http,
            media.at("/video"),
            max_bytes=MB,
            hosts=HostPolicy.parse(media.listed()),
            time_limit=5,
            filename="demo.mp4",
            channel="C1",
            thread_ts=parent["ts"],
            comment="Demo video",
        )
        [share] = fake.thread("C1", parent["ts"])
        [file] = share.files
        assert fake.uploads[file["id"]] == VIDEO
        [sent] = fake.calls_to("upload")
        assert sent.args["content_length"] == str(len(VIDEO))
        assert sent.args["transfer_encoding"] is None
