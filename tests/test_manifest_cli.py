"""`ivh-approvals manifest`: run as a user runs it, in a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def manifest_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "manifest", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("example.com/slack/events", "absolute https:// URL"),
        ("//example.com/slack/events", "absolute https:// URL"),
        ("http://example.com/slack/events", "requires an https://"),
        ("ftp://example.com/slack/events", "requires an https://"),
        ("https:///slack/events", "absolute https:// URL"),
        ("https://:443/slack/events", "with a host"),
        ("https://example.com:99999/slack/events", "port"),
        ("https://exa mple.com/slack/events", "spaces"),
    ],
)
def test_an_http_url_slack_would_refuse_is_one_line_on_stderr_and_exit_2(url, says):
    run = manifest_cli("--http", url)
    assert run.returncode == 2
    assert run.stdout == ""
    [line] = run.stderr.splitlines()
    assert line.startswith("error: --http: ") and says in line and repr(url) in line


def test_an_https_url_gives_the_http_mode_manifest():
    run = manifest_cli("--http", "https://bot.example.com/slack/events")
    assert run.returncode == 0, run.stderr
    settings = json.loads(run.stdout)["settings"]
    assert settings["socket_mode_enabled"] is False
    assert settings["interactivity"]["request_url"] == "https://bot.example.com/slack/events"
