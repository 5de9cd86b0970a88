"""Which hosts demo videos may come from (VIDEO_HOSTS), and which addresses are public.

Pure: the standard library only, so that settings can parse VIDEO_HOSTS without loading the
download and upload code (httpx, slack_sdk) of bot.video, which checks every URL against it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def parse_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def normalize_host(host: str) -> str:
    """Lower case, no trailing dot, no IPv6 brackets, IP addresses in their canonical form."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    ip = parse_ip(host)
    return str(ip) if ip is not None else host


def _valid_name(host: str) -> bool:
    labels = host.split(".")
    return len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


DEFAULT_PORTS = {"http": 80, "https": 443}
_WITH_PORT = re.compile(r"(?P<host>\[[^\]]*\]|[^:\[\]]*):(?P<port>[0-9]{1,5})")
Entry = tuple[str, int | None]  # a host and its port; None: the scheme's default port only


def _split_port(entry: str) -> Entry:
    """`host:port`, `[v6]:port` or a bare host; an IPv6 address needs brackets to take a port."""
    if parse_ip(entry) is not None:
        return entry, None
    found = _WITH_PORT.fullmatch(entry)
    if found is None:
        return entry, None
    port = int(found["port"])
    if not 1 <= port <= 65_535:
        raise _bad_entry(entry)
    return found["host"], port


def _bad_entry(entry: str) -> ValueError:
    return ValueError(
        "expected host names, IP addresses or *.domain patterns, each with an optional"
        f" :port (1-65535), got {entry!r}"
    )


def _port_matches(listed: int | None, port: int | None, scheme: str) -> bool:
    """An entry without a port allows the scheme's default port only; one with a port, it."""
    default = DEFAULT_PORTS.get(scheme)
    if port is None or port == default:
        return listed is None or listed == default
    return listed == port


@dataclass(frozen=True)
class HostPolicy:
    """Which hosts demo videos may come from: the VIDEO_HOSTS setting.

    An entry is a host name or IP address, matched exactly, or `*.domain`, which matches every
    name under `domain` but not `domain` itself; either may end in `:port`. Without a port an
    entry allows the default ports only (80 for http, 443 for https); with one, that port only.
    Only an exact entry lets a host resolve to a private, loopback or link-local address: a
    wildcard never opens the internal network.
    """

    names: frozenset[Entry] = frozenset()
    domains: frozenset[Entry] = frozenset()

    @classmethod
    def parse(cls, entries: str | Iterable[str]) -> HostPolicy:
        """Read a comma-separated string or a list of entries; ValueError names a bad one."""
        if isinstance(entries, str):
            entries = entries.split(",")
        names: set[Entry] = set()
        domains: set[Entry] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            given, port = _split_port(entry)
            wildcard = given.startswith("*.")
            host = normalize_host(given[2:] if wildcard else given)
            address = parse_ip(host) is not None
            if given.startswith("[") and not address:
                raise _bad_entry(entry)  # brackets hold an IPv6 address, nothing else
            if wildcard and _valid_name(host) and not address:
                domains.add((host, port))
            elif not wildcard and (address or _valid_name(host)):
                names.add((host, port))
            else:
                raise _bad_entry(entry)
        return cls(frozenset(names), frozenset(domains))

    def allows(self, host: str, port: int | None = None, scheme: str = "https") -> bool:
        """Whether `scheme://host:port` may be fetched; `port` None is the scheme's default."""
        if self.explicit(host, port, scheme):
            return True
        host = normalize_host(host)
        if parse_ip(host) is not None:
            return False  # an address only ever matches an exact entry
        return any(
            host.endswith("." + domain) and _port_matches(listed, port, scheme)
            for domain, listed in self.domains
        )

    def explicit(self, host: str, port: int | None = None, scheme: str = "https") -> bool:
        """Listed by exact name or address: the only way to reach a non-public address."""
        host = normalize_host(host)
        return any(
            name == host and _port_matches(listed, port, scheme) for name, listed in self.names
        )

    def including(self, host: str, port: int | None = None) -> HostPolicy:
        """This policy plus one exact entry (the built-in simulator's host and port, say)."""
        return HostPolicy(self.names | {(normalize_host(host), port)}, self.domains)


def is_public_address(address: str) -> bool:
    """False for private, loopback, link-local, multicast, unspecified and reserved addresses.

    IPv6 forms that embed an IPv4 address (mapped, 6to4, NAT64) are judged by that address too.
    """
    ip = parse_ip(address.split("%", 1)[0])
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(str(embedded)):
            return False
        if ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_multicast or ip.is_private or ip.is_reserved or ip.is_loopback or ip.is_link_local
    )
