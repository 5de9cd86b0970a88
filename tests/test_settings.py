"""Settings: a wrong one stops start-up with one line that names it."""

import os
from pathlib import Path

import pytest

from bot.config import Settings, SettingsError, load_settings
from tests.conftest import clean_env, is_setting, run_cli


@pytest.fixture(autouse=True)
def no_settings(monkeypatch, tmp_path):
    for name in list(os.environ):
        if is_setting(name):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_are_the_documented_ones():
    settings = load_settings()
    assert settings.IVH_BASE_URL == "https://gw.tvs.qq.com"
    assert settings.PORT == 3000
    assert settings.REDIS_URL is None
    assert not settings.ivh_configured and not settings.slack_configured
    assert settings.REQUIRED_APPROVALS == 1 and settings.PREVENT_SELF_APPROVAL is False
    assert settings.REJECT_CATEGORIES == [
        "Lip sync",
        "Voice",
        "Face / likeness",
        "Outline / artifacts",
        "Background",
        "Motion",
        "Other",
    ]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"IVH_MAX_QPS": "fast"}, "IVH_MAX_QPS"),
        ({"IVH_MAX_QPS": "0"}, "IVH_MAX_QPS"),
        ({"POLL_INTERVAL": "-1"}, "POLL_INTERVAL"),
        ({"PORT": "70000"}, "PORT"),
        ({"IVH_APPKEY": "key"}, "IVH_ACCESS_TOKEN"),
        ({"IVH_BASE_URL": "gw.tvs.qq.com"}, "IVH_BASE_URL"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL"),
        ({"SLACK_BOT_TOKEN": "xoxb-1"}, "SLACK_SIGNING_SECRET"),
        ({"SLACK_BOT_TOKEN": "xoxp-user"}, "SLACK_BOT_TOKEN"),
        ({"APPROVERS": "U0123ABC,alice"}, "APPROVERS"),
        ({"APPROVER_GROUP": "admins"}, "APPROVER_GROUP"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        ({"SLACK_CHANNEL": "#approvals"}, "SLACK_CHANNEL: expected a channel id"),
        ({"SLACK_CHANNEL": "approvals"}, "SLACK_CHANNEL: expected a Slack channel id"),
        ({"DECISION_CLAIM_SECONDS": "60"}, "DECISION_CLAIM_SECONDS"),  # <= 30 + 60
        ({"REQUIRED_APPROVALS": "0"}, "REQUIRED_APPROVALS"),
        ({"REQUIRED_APPROVALS": "two"}, "REQUIRED_APPROVALS"),
        ({"PREVENT_SELF_APPROVAL": "maybe"}, "PREVENT_SELF_APPROVAL"),
        ({"REJECT_CATEGORIES": " , "}, "REJECT_CATEGORIES"),
        ({"REJECT_CATEGORIES": "Voice,Voice"}, "REJECT_CATEGORIES"),
        ({"REJECT_CATEGORIES": "Voice,[Lip] sync"}, "REJECT_CATEGORIES"),
        ({"REJECT_CATEGORIES": "x" * 41}, "REJECT_CATEGORIES"),
    ],
)
def test_a_wrong_setting_is_named(monkeypatch, env, named):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert named in message
    assert "\n" not in message


def test_the_default_channel_is_an_id(monkeypatch):
    monkeypatch.setenv("SLACK_CHANNEL", " C0123ABCD ")
    assert load_settings().SLACK_CHANNEL == "C0123ABCD"


def test_secrets_are_never_echoed(monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", "not-a-bot-token-s3cr3t")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "s3cr3t" not in str(caught.value)
    monkeypatch.setenv("IVH_APPKEY", "k")
    monkeypatch.setenv("IVH_ACCESS_TOKEN", "t0ps3cr3t")
    monkeypatch.delenv("SLACK_BOT_TOKEN")
    assert "t0ps3cr3t" not in repr(load_settings())


def test_approvers_are_a_comma_separated_list(monkeypatch):
    monkeypatch.setenv("APPROVERS", "U0123ABC, W0456DEF")
    assert load_settings().APPROVERS == ["U0123ABC", "W0456DEF"]


def test_run_with_a_wrong_setting_prints_one_line_and_exits(tmp_path):
    env = clean_env(IVH_MAX_QPS="lots")
    result = run_cli("run", env=env, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "IVH_MAX_QPS" in lines[0] and "Traceback" not in result.stderr


def test_env_example_lists_every_setting_and_loads_as_defaults(monkeypatch, tmp_path):
    example = Path(__file__).parent.parent / ".env.example"
    listed = {
        line.split("=", 1)[0]
        for line in example.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert listed == set(Settings.model_fields)
    (tmp_path / ".env").write_text(example.read_text())
    assert load_settings() == load_settings(_env_file=None)
