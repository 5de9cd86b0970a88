"""Settings: read once from the environment and `.env`, validated before anything starts."""

from __future__ import annotations

import errno
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.hosts import HostPolicy
from bot.model import QuietHours, category_problem, check_channel, describe_errors

DEFAULT_IVH_BASE_URL = "https://gw.tvs.qq.com"
DEFAULT_SLACK_API_URL = "https://slack.com/api/"
# Where IVH's media live: COS buckets (<bucket>.cos.<region>.myqcloud.com, also served as
# <bucket>.cos.<region>.tencentcos.cn, CDN <bucket>.file.myqcloud.com) and IVH's own
# resource hosts (videomaker-resources.ivh.qq.com).
DEFAULT_VIDEO_HOSTS = ("*.myqcloud.com", "*.tencentcos.cn", "*.ivh.qq.com")
MAX_REQUIRED_APPROVALS = 20  # more approvers than a team can gather on one demo
DEFAULT_REJECT_CATEGORIES = (
    "Lip sync",
    "Voice",
    "Face / likeness",
    "Outline / artifacts",
    "Background",
    "Motion",
    "Other",
)


class SettingsError(Exception):
    """A setting is missing or malformed; the message is one line that names it."""


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every setting the bot reads. Field names are the environment variable names."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        case_sensitive=True,
    )

    SLACK_BOT_TOKEN: SecretStr | None = None
    SLACK_SIGNING_SECRET: SecretStr | None = None
    SLACK_APP_TOKEN: SecretStr | None = None
    SLACK_API_URL: str = DEFAULT_SLACK_API_URL
    SLACK_CHANNEL: str | None = None
    SLACK_POSTS_PER_SECOND: float = Field(default=1.0, gt=0, le=100)

    IVH_APPKEY: str | None = None
    IVH_ACCESS_TOKEN: SecretStr | None = None
    IVH_BASE_URL: str = DEFAULT_IVH_BASE_URL
    IVH_MAX_QPS: float = Field(default=5.0, gt=0, le=10_000)
    IVH_TIMEOUT: float = Field(default=10.0, gt=0, le=120)

    POLL_INTERVAL: float = Field(default=30.0, gt=0, le=86_400)
    POLL_SLOW_INTERVAL: float = Field(default=300.0, gt=0, le=86_400)
    TRAIN_MIN_SECONDS: float = Field(default=0.0, ge=0, le=30 * 86_400)
    REDIS_URL: str | None = None
    DATA_DIR: str = ".data"

    VIDEO_MAX_BYTES: int = Field(default=300_000_000, gt=0)
    VIDEO_TIMEOUT: float = Field(default=120.0, gt=0, le=3600)
    VIDEO_HOSTS: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_VIDEO_HOSTS)
    )

    # Recovery timings (see README, "Recovery rules"); the defaults suit production.
    DECISION_CLAIM_SECONDS: float = Field(default=120.0, gt=0, le=3600)
    DECISION_SETTLE_SECONDS: float = Field(default=30.0, ge=0, le=3600)
    EVENT_RECLAIM_SECONDS: float = Field(default=60.0, gt=0, le=3600)

    APPROVERS: Annotated[list[str], NoDecode] = Field(default_factory=list)
    APPROVER_GROUP: str | None = None
    REQUIRED_APPROVALS: int = Field(default=1, ge=1, le=MAX_REQUIRED_APPROVALS)
    PREVENT_SELF_APPROVAL: bool = False
    REJECT_CATEGORIES: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_REJECT_CATEGORIES)
    )

    # Reminders and escalation of rounds nobody decides (README, "For approvers").
    REMIND_AFTER: float = Field(default=14_400.0, ge=0, le=30 * 86_400)  # 0: no reminders
    REMIND_EVERY: float | None = Field(default=None, gt=0, le=30 * 86_400)
    ESCALATE_AFTER: float | None = Field(default=None, gt=0, le=90 * 86_400)
    ESCALATE_TO: Annotated[list[str], NoDecode] = Field(default_factory=list)
    QUIET_HOURS: str | None = None
    REMIND_TZ: str = "UTC"
    # The App Home's refresh for its recent viewers, at most this often (views.publish: Tier 4).
    HOME_REFRESH_SECONDS: float = Field(default=30.0, gt=0, le=3600)

    INTAKE_TOKEN: SecretStr | None = None
    PORT: int = Field(default=3000, ge=1, le=65_535)
    HOST: str = "0.0.0.0"
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    LOG_FORMAT: Literal["text", "json"] = "text"
    AUDIT_RETENTION_DAYS: int = Field(default=365, ge=1, le=36_500)

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("LOG_FORMAT", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("APPROVERS", "ESCALATE_TO", mode="before")
    @classmethod
    def _ids(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("ESCALATE_TO")
    @classmethod
    def _mentionable(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not re.fullmatch(r"[UWS][A-Z0-9]{2,30}", entry):
                raise ValueError(
                    f"expected Slack user ids (U…) or user group ids (S…), got {entry!r}"
                )
        return value

    @field_validator("QUIET_HOURS")
    @classmethod
    def _quiet(cls, value: str | None) -> str | None:
        if value:
            QuietHours.parse(value, "UTC")  # the zone is checked on its own
        return value or None

    @field_validator("REMIND_TZ")
    @classmethod
    def _zone(cls, value: str) -> str:
        QuietHours.parse("0-0", value)
        return value

    @property
    def quiet_hours(self) -> QuietHours | None:
        return QuietHours.parse(self.QUIET_HOURS, self.REMIND_TZ) if self.QUIET_HOURS else None

    @field_validator("REJECT_CATEGORIES", mode="before")
    @classmethod
    def _categories_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("REJECT_CATEGORIES")
    @classmethod
    def _categories(cls, value: list[str]) -> list[str]:
        problem = category_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("VIDEO_HOSTS", mode="before")
    @classmethod
    def _video_hosts_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("VIDEO_HOSTS")
    @classmethod
    def _video_hosts(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("expected at least one host name or *.domain pattern")
        HostPolicy.parse(value)  # its ValueError names the malformed entry
        return value

    @field_validator("APPROVERS")
    @classmethod
    def _approver_ids(cls, value: list[str]) -> list[str]:
        for user in value:
            if not re.fullmatch(r"[UW][A-Z0-9]{2,}", user):
                raise ValueError(f"expected Slack user ids such as U012ABCDEF, got {user!r}")
        return value

    @field_validator("APPROVER_GROUP")
    @classmethod
    def _group_id(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"S[A-Z0-9]{2,}", value):
            raise ValueError(f"expected a Slack user group id such as S012ABCDEF, got {value!r}")
        return value or None

    @field_validator("IVH_BASE_URL", "SLACK_API_URL")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value

    @field_validator("SLACK_API_URL")
    @classmethod
    def _slack_api_slash(cls, value: str) -> str:
        return value if value.endswith("/") else value + "/"

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        scheme = urlsplit(value).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("SLACK_CHANNEL")
    @classmethod
    def _channel(cls, value: str | None) -> str | None:
        value = value.strip() if value else None
        return check_channel(value) if value else None

    @field_validator("SLACK_BOT_TOKEN")
    @classmethod
    def _bot_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xoxb-"):
            raise ValueError("expected a bot token starting with xoxb-")
        return value

    @field_validator("SLACK_APP_TOKEN")
    @classmethod
    def _app_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xapp-"):
            raise ValueError("expected an app-level token starting with xapp-")
        return value

    @model_validator(mode="after")
    def _pairs(self) -> Settings:
        if bool(self.IVH_APPKEY) != bool(self.IVH_ACCESS_TOKEN):
            missing = "IVH_ACCESS_TOKEN" if self.IVH_APPKEY else "IVH_APPKEY"
            raise ValueError(f"{missing}: required when the other IVH credential is set")
        if self.SLACK_BOT_TOKEN and not (self.SLACK_APP_TOKEN or self.SLACK_SIGNING_SECRET):
            raise ValueError(
                "SLACK_SIGNING_SECRET: required in HTTP mode"
                " (or set SLACK_APP_TOKEN for Socket Mode)"
            )
        if (self.SLACK_APP_TOKEN or self.SLACK_SIGNING_SECRET) and not self.SLACK_BOT_TOKEN:
            raise ValueError("SLACK_BOT_TOKEN: required when other Slack settings are set")
        if self.ESCALATE_AFTER is not None and not self.ESCALATE_TO:
            raise ValueError("ESCALATE_TO: required when ESCALATE_AFTER is set (who to tell)")
        recovery = self.DECISION_SETTLE_SECONDS + self.EVENT_RECLAIM_SECONDS
        if recovery >= self.DECISION_CLAIM_SECONDS:
            # Else a dead decider's claim is gone before a publisher settles its round, and a
            # decision Tencent took is shown as taken outside Slack instead of by its user.
            raise ValueError(
                f"DECISION_CLAIM_SECONDS: must be more than DECISION_SETTLE_SECONDS +"
                f" EVENT_RECLAIM_SECONDS ({recovery:g} s)"
            )
        return self

    @property
    def ivh_configured(self) -> bool:
        return bool(self.IVH_APPKEY and self.IVH_ACCESS_TOKEN)

    @property
    def slack_configured(self) -> bool:
        return self.SLACK_BOT_TOKEN is not None

    @property
    def video_hosts(self) -> HostPolicy:
        """VIDEO_HOSTS as the policy every demo-video download is checked against."""
        return HostPolicy.parse(self.VIDEO_HOSTS)

    @property
    def socket_mode(self) -> bool:
        return self.SLACK_APP_TOKEN is not None


def listen_error(setting: str, host: str, port: int, error: OSError) -> SettingsError:
    """One line for a port the server cannot listen on, naming the setting and the port."""
    if error.errno == errno.EADDRINUSE:
        why = "already in use (another process listens there); stop it or choose a free port"
    else:
        why = error.strerror or str(error)
    return SettingsError(f"configuration error: {setting}: cannot listen on {host}:{port}: {why}")


def load_settings(**overrides: object) -> Settings:
    """Read the settings, or raise SettingsError with one line naming what is wrong."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise SettingsError(f"configuration error: {describe_errors(error)}") from None
