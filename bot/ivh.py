"""Tencent IVH customization API: signing, envelopes, response models and the one client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx
from pydantic import ValidationError

from bot.circuit import Circuit
from bot.logs import log_context
from bot.model import REASON_MAX, Operate, Progress, strict_json
from bot.redact import redact
from bot.transport import AiohttpTransport

log = logging.getLogger(__name__)

ACTION_PATH = "/v2/ivh/assetmanager/customservice/"
GET_PROGRESS = "getprogress"
CUSTOMER_CONFIRM = "customerconfirm"

CODE_INTERNAL = 100000
CODE_UNAUTHORIZED = 100005
CODE_TOO_FREQUENT = 100012
CODE_NOT_FOUND = 110006
TRANSIENT_CODES = frozenset({CODE_INTERNAL, CODE_TOO_FREQUENT})

_HINTS = {
    CODE_UNAUTHORIZED: (
        "unauthorized: check IVH_APPKEY / IVH_ACCESS_TOKEN, this host's clock, and that"
        " customization is enabled for the app key in the IVH console"
    ),
    CODE_NOT_FOUND: "IVH does not know this task id",
}

# --- signing -------------------------------------------------------------------------------


def sign(appkey: str, access_token: str, timestamp: int) -> str:
    """The request signature: Base64 of HMAC-SHA256 over the sorted, unsigned query string."""
    message = f"appkey={appkey}&timestamp={timestamp}"
    digest = hmac.new(access_token.encode(), message.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def signed_params(appkey: str, access_token: str, timestamp: int) -> dict[str, str]:
    """Query parameters for one request; httpx URL-encodes the signature's `+`, `/` and `=`."""
    return {
        "appkey": appkey,
        "timestamp": str(timestamp),
        "signature": sign(appkey, access_token, timestamp),
    }


# --- errors --------------------------------------------------------------------------------


class IvhError(Exception):
    """Any failed IVH call. `code` is Header.Code, or None when no valid answer came back."""

    def __init__(
        self,
        code: int | None,
        message: str,
        request_id: str,
        *,
        transient: bool,
        outcome_unknown: bool = False,
    ) -> None:
        self.code = code
        self.message = redact(message)  # shown in Slack and logs: never a signed URL
        self.request_id = request_id
        self.transient = transient
        self.outcome_unknown = outcome_unknown
        super().__init__(str(self))

    def __str__(self) -> str:
        code = "no code" if self.code is None else f"code {self.code}"
        return f"IVH {code}: {self.message} (RequestID {self.request_id})"

    @property
    def not_found(self) -> bool:
        return self.code == CODE_NOT_FOUND


def error_for_code(code: int, message: str, request_id: str) -> IvhError:
    hint = _HINTS.get(code)
    text = f"{message} — {hint}" if hint and message else (hint or message or "unknown error")
    # Negative codes are the gateway's internal errors: as transient as 100000.
    transient = code in TRANSIENT_CODES or code < 0
    return IvhError(code, text, request_id, transient=transient)


# --- the client ----------------------------------------------------------------------------


# Told of every answer (or failure): the action, Header.Code (None: no valid answer), seconds.
Observer = Callable[[str, int | None, float], None]


class Limiter(Protocol):
    async def acquire(self, *, priority: bool = False) -> None: ...


class _NoLimit:
    async def acquire(self, *, priority: bool = False) -> None:
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped."""

    attempts: int = 4
    base: float = 0.5
    cap: float = 10.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class IvhClient:
    """One per process: signs, sends the envelope, parses, retries what is safe to retry."""

    def __init__(
        self,
        base_url: str,
        appkey: str,
        access_token: str,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        limiter: Limiter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        circuit: Circuit | None = None,
        observe: Observer | None = None,
    ) -> None:
        self._appkey = appkey
        self._access_token = access_token
        self._retry = retry or RetryPolicy()
        self._limiter: Limiter = limiter or _NoLimit()
        self._clock = clock
        self._circuit = circuit or Circuit("IVH")
        self._observe = observe
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + ACTION_PATH,
            timeout=timeout,
            transport=transport or AiohttpTransport(connections=100),
            headers={"Content-Type": "application/json;charset=utf-8"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> IvhClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def get_progress(self, task_id: str) -> Progress:
        """Read a task's progress, retrying timeouts, 5xx, garbage and transient codes."""
        attempt = 0
        while True:
            try:
                payload = await self._call(GET_PROGRESS, {"TaskId": task_id})
                try:
                    return Progress.model_validate(payload.body)
                except (ValidationError, ValueError, RecursionError) as exc:
                    raise IvhError(
                        None,
                        f"malformed getprogress payload: {_short(exc)}",
                        payload.request_id,
                        transient=True,
                    ) from None
            except IvhError as error:
                attempt += 1
                if not error.transient or attempt >= self._retry.attempts:
                    raise
                delay = self._retry.delay(attempt)
                log.warning(
                    "getprogress %s failed, retry %d in %.2fs: %s", task_id, attempt, delay, error
                )
                await asyncio.sleep(delay)

    async def customer_confirm(
        self, task_id: str, operate: Operate, reason: str | None = None
    ) -> str:
        """Send the decision once; returns the RequestID. Never retried here: on an error with
        `outcome_unknown` the caller re-reads progress to learn whether it took effect."""
        payload: dict[str, Any] = {"TaskId": task_id, "Operate": operate}
        if operate == "REJECT":
            if not reason or not reason.strip() or len(reason) > REASON_MAX:
                raise ValueError(f"a REJECT needs a reason of 1 to {REASON_MAX} characters")
            payload["Reason"] = reason
        answer = await self._call(CUSTOMER_CONFIRM, payload, confirm=True)
        return answer.request_id

    async def _call(
        self, action: str, payload: dict[str, Any], *, confirm: bool = False
    ) -> _Answer:
        request_id = f"ivh-approvals-{uuid.uuid4().hex}"
        if not self._circuit.allow():
            raise IvhError(
                None,
                "IVH kept failing; calls are paused for a few seconds (circuit open)",
                request_id,
                transient=True,
            )
        await self._limiter.acquire(priority=confirm)  # a user waits for a confirmation
        started = time.monotonic()
        try:
            with log_context(request_id=request_id):
                answer = await self._send(action, payload, request_id, confirm=confirm)
        except IvhError as error:
            self._told(action, error.code, started)
            if error.transient:
                self._circuit.failed()
            else:
                self._circuit.succeeded()  # a definite answer: IVH itself is up
            raise
        except BaseException:
            self._circuit.abandoned()  # cancelled or a bug: no verdict on IVH
            raise
        self._told(action, 0, started)
        self._circuit.succeeded()
        return answer

    @property
    def circuit(self) -> Circuit:
        return self._circuit

    def _told(self, action: str, code: int | None, started: float) -> None:
        if self._observe is not None:
            self._observe(action, code, time.monotonic() - started)

    async def _send(
        self, action: str, payload: dict[str, Any], request_id: str, *, confirm: bool
    ) -> _Answer:
        params = signed_params(self._appkey, self._access_token, int(self._clock()))
        body = {"Header": {"RequestID": request_id}, "Payload": payload}
        # Error texts name the host and what went wrong in a few words (`_kind`): a library's
        # own text may quote the request URL, and the URL carries the signature.
        where = self._http.base_url.netloc.decode("ascii", "replace")
        try:
            response = await self._http.post(action, params=params, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise IvhError(
                None, f"cannot reach IVH at {where} ({_kind(exc)})", request_id, transient=True
            ) from None
        except httpx.TransportError as exc:
            # The request may have reached IVH: for a confirmation the outcome is unknown.
            raise IvhError(
                None,
                f"no answer from IVH at {where} ({_kind(exc)})",
                request_id,
                transient=True,
                outcome_unknown=confirm,
            ) from None
        return _parse(response, request_id, confirm=confirm, clock=self._clock)


@dataclass(frozen=True)
class _Answer:
    body: dict[str, Any]
    request_id: str


def _parse(
    response: httpx.Response, request_id: str, *, confirm: bool, clock: Callable[[], float]
) -> _Answer:
    try:
        envelope = strict_json(response.content)
        header = envelope["Header"]
        code = int(header["Code"])
        message = str(header.get("Message") or "")
        request_id = str(header.get("RequestID") or request_id)
        body = envelope.get("Payload") or {}
        if not isinstance(body, dict):
            raise TypeError("Payload is not an object")
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
        raise IvhError(
            None,
            f"HTTP {response.status_code} with a body that is not an IVH envelope",
            request_id,
            transient=True,
            outcome_unknown=confirm,
        ) from None
    if code == CODE_UNAUTHORIZED and (skew := _clock_skew(response, clock)) is not None:
        message = f"{message} (this host's clock is {skew:+.0f} s off IVH's: check NTP)"
    if code != 0:
        raise error_for_code(code, message, request_id)
    return _Answer(body, request_id)


def _clock_skew(response: httpx.Response, clock: Callable[[], float]) -> float | None:
    """How far our clock is from the gateway's, when that could explain a refused signature."""
    try:
        theirs = parsedate_to_datetime(response.headers["Date"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None
    skew = clock() - theirs
    return skew if abs(skew) > 60 else None


_KINDS: tuple[tuple[type[httpx.TransportError], str], ...] = (
    (httpx.ConnectTimeout, "connect timeout"),
    (httpx.PoolTimeout, "no free connection in time"),
    (httpx.ConnectError, "cannot connect"),
    (httpx.ReadTimeout, "no answer in time"),
    (httpx.WriteTimeout, "sending timed out"),
    (httpx.RemoteProtocolError, "the answer is not HTTP"),
    (httpx.ReadError, "connection dropped"),
    (httpx.WriteError, "connection dropped while sending"),
)


def _kind(exc: httpx.TransportError) -> str:
    """What went wrong in a few words: bot.transport writes its errors in our own words; any
    other text that is long (it may quote the URL) gives way to a word for the error's class,
    and IvhError redacts whatever is left."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if text and len(text) <= 60 and "://" not in text:
        return text
    return next((words for kind, words in _KINDS if isinstance(exc, kind)), type(exc).__name__)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
