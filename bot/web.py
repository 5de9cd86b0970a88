"""The HTTP surface: /tasks (intake), /healthz, /readyz, /metrics, and Slack's Request URL
when in HTTP mode."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import SecretStr, ValidationError
from redis.exceptions import RedisError
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from bot.intake import TrackRequest, describe_errors, track_task
from bot.model import check_task_id
from bot.store import Store

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # POST /tasks
MAX_SLACK_BODY = 1024 * 1024  # interaction payloads carry whole messages and views

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STORE: web.AppKey[Store] = web.AppKey("store")
INTAKE_TOKEN: web.AppKey[SecretStr | None] = web.AppKey("intake_token")
HEALTH: web.AppKey[Callable[[], Awaitable[dict[str, bool]]]] = web.AppKey("health")
ON_TRACK: web.AppKey[Callable[[], None]] = web.AppKey("on_track")
READY: web.AppKey[Callable[[], Awaitable[dict[str, bool]]]] = web.AppKey("ready")
METRICS: web.AppKey[Callable[[], Awaitable[bytes]]] = web.AppKey("metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text format


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _authorized(request: web.Request) -> bool:
    token = request.app[INTAKE_TOKEN]
    if token is None:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    try:
        # aiohttp decodes header bytes as UTF-8 with surrogateescape: this gives back the
        # bytes sent, and a header that is not UTF-8 is compared as the bytes it is.
        sent = given.strip().encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no byte decodes to: not our token
        return False
    expected = token.get_secret_value().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(sent, expected)


@web.middleware
async def redis_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RedisError as error:
        log.warning("%s %s: Redis unavailable: %s", request.method, request.path, error)
        return _error(503, "temporarily unavailable (storage); try again shortly")


async def post_task(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _error(401, "missing or wrong bearer token (INTAKE_TOKEN)")
    if (request.content_length or 0) > MAX_BODY:
        return _error(413, f"body larger than {MAX_BODY} bytes")
    raw = await request.read()  # bounded by the app's client_max_size when chunked
    if len(raw) > MAX_BODY:
        return _error(413, f"body larger than {MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return _error(400, 'body must be JSON: {"task_id": "...", "channel"?, "title"?}')
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object with a task_id")
    try:
        track = TrackRequest.model_validate(body)
    except ValidationError as error:
        return _error(422, describe_errors(error))
    record, started = await track_task(request.app[STORE], track, tracked_by="api")
    if started:
        request.app[ON_TRACK]()
    return web.json_response(
        {"task": record.model_dump(mode="json"), "polling_started": started}, status=202
    )


async def get_task(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _error(401, "missing or wrong bearer token (INTAKE_TOKEN)")
    task_id = request.match_info["task_id"]
    try:
        check_task_id(task_id)
    except ValueError as error:
        return _error(422, f"task_id: {error}")
    store = request.app[STORE]
    record = await store.get(task_id)
    if record is None:
        return _error(404, f"task {task_id} is not tracked")
    return web.json_response(
        {"task": record.model_dump(mode="json"), "history": await store.history(task_id)}
    )


async def healthz(request: web.Request) -> web.Response:
    checks = await request.app[HEALTH]()
    return web.json_response(checks, status=200 if all(checks.values()) else 503)


async def readyz(request: web.Request) -> web.Response:
    checks = await request.app[READY]()
    return web.json_response(checks, status=200 if all(checks.values()) else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus' text format. Unauthenticated, like /healthz: counts, no task data."""
    body = await request.app[METRICS]()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def add_slack_route(app: web.Application, bolt: AsyncApp, signing_secret: str) -> None:
    """Slack's one Request URL (HTTP mode): events, commands and interactivity."""
    verifier = SignatureVerifier(signing_secret)

    async def slack_events(request: web.Request) -> web.Response:
        raw = await request.read()
        # Check the signature before parsing anything: a forged or replayed request,
        # malformed or not, gets 401 and costs no work.
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        signature = request.headers.get("X-Slack-Signature", "")
        try:
            valid = verifier.is_valid(raw, timestamp, signature)
        except ValueError:  # a timestamp that is not a number, a body that is not UTF-8
            valid = False
        if not valid:
            return _error(401, "invalid signature or stale request")
        try:
            bolt_request = AsyncBoltRequest(
                body=raw.decode("utf-8"),
                query=request.query_string,
                headers=dict(request.headers),
            )
        except (ValueError, TypeError, AttributeError, RecursionError):
            log.warning("a signed Slack request could not be parsed; refused")
            return _error(400, "malformed request")
        return await to_aiohttp_response(await bolt.async_dispatch(bolt_request))

    app.router.add_post("/slack/events", slack_events)


def make_web_app(
    store: Store,
    *,
    intake_token: SecretStr | None,
    health: Callable[[], Awaitable[dict[str, bool]]],
    ready: Callable[[], Awaitable[dict[str, bool]]] | None = None,
    render_metrics: Callable[[], Awaitable[bytes]] | None = None,
    on_track: Callable[[], None] = lambda: None,
) -> web.Application:
    app = web.Application(client_max_size=MAX_SLACK_BODY, middlewares=[redis_unavailable])
    app[STORE] = store
    app[INTAKE_TOKEN] = intake_token
    app[HEALTH] = health
    app[ON_TRACK] = on_track
    app[READY] = ready or health
    app.router.add_post("/tasks", post_task)
    app.router.add_get("/tasks/{task_id}", get_task)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if render_metrics is not None:
        app[METRICS] = render_metrics
        app.router.add_get("/metrics", metrics)
    return app
