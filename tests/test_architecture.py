"""The shape of the code, checked: the pure layer stays pure, and imports point one way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
CLIENTS = ("httpx", "aiohttp", "redis", "slack_sdk", "slack_bolt")


def test_the_model_and_the_message_builders_load_no_client_library() -> None:
    """What renders a message or derives an event can be imported (and tested) alone."""
    probe = (
        "import sys, bot.model, bot.messages, bot.home_tab, bot.events, bot.state, bot.config\n"
        f"print(','.join(m for m in {CLIENTS!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""


def test_the_import_contracts_hold() -> None:
    """pyproject.toml's import-linter contracts (also run by CI as `lint-imports`)."""
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


def test_run_does_not_load_the_simulator() -> None:
    """bot.sim is for `demo`, `simulate` and the tests: the bot's own path never loads it."""
    probe = "import sys, bot.app, bot.cli; print('bot.sim' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "False"
