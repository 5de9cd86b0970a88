"""The IVH simulator: Tencent's two customization endpoints on a real aiohttp server."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import random
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.ivh import sign
from bot.sim.state import (
    CODE_INTERNAL,
    CODE_NOT_FOUND,
    CODE_OK,
    CODE_PARAM_FORMAT,
    CODE_PARAM_MISSING,
    CODE_UNAUTHORIZED,
    CREATE_FIELDS,
    CUSTOMER_CONFIRM,
    FAULT_FIELDS,
    GET_PROGRESS,
    MESSAGE_NOT_FOUND,
    TASK_ID,
    TRAIN_RECORD_READINGS,
    Fault,
    SimRefused,
    SimTask,
    TaskExists,
    checked,
)

API_PATH = "/v2/ivh/assetmanager/customservice/"
MAX_SKEW_SECONDS = 300
DEMO_MP4 = Path(__file__).parent.parent / "media" / "demo.mp4"
GATEWAY_PAGE = "<html><head><title>502 Bad Gateway</title></head><body>gateway</body></html>"
ERROR_PAGE = "<html><head><title>500 Internal Server Error</title></head><body>nginx</body></html>"
JSON = "application/json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Simulator:
    """The simulated IVH service: tasks, credentials, queued faults and a log of requests.

    Creating a task whose id already exists raises TaskExists (HTTP 409 at /_sim/tasks).
    With `auto_create`, an API request for an unknown (well-formed) TaskId creates it.
    """

    def __init__(
        self,
        appkey: str = "sim-appkey",
        access_token: str = "sim-access-token",
        *,
        audit_seconds: float = 5,
        train_seconds: float = 20,
        deliver_seconds: float = 2,
        latency_ms: float = 0,
        auto_create: bool = False,
        train_record: str = "current",
        resign_urls: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if train_record not in TRAIN_RECORD_READINGS:
            raise ValueError(f"train_record must be one of {', '.join(TRAIN_RECORD_READINGS)}")
        self.train_record = train_record  # which reading of TrainRecord to play
        self.resign_urls = resign_urls  # demo URLs with a new query on every read
        self._reads = itertools.count(1)
        self.appkey = appkey
        self.access_token = access_token
        self.audit_seconds = audit_seconds
        self.train_seconds = train_seconds
        self.deliver_seconds = deliver_seconds
        self.latency_ms = latency_ms
        self.auto_create = auto_create
        self.clock = clock
        self.media_base = ""  # where demo URLs point; set by make_app/start
        self.tasks: dict[str, SimTask] = {}
        self.faults: list[Fault] = []
        self.requests: list[dict[str, Any]] = []

    def create_task(
        self,
        task_id: str | None = None,
        *,
        kind: str = "IMAGE",
        audit_seconds: float | None = None,
        train_seconds: float | None = None,
        deliver_seconds: float | None = None,
        demos: int = 1,
        fail_at: str | None = None,
        fail_message: str = "training failed: the source video did not pass checks",
    ) -> SimTask:
        if task_id is None:
            task_id = self._new_id()
        elif not TASK_ID.fullmatch(task_id):
            raise ValueError("task ids are 1 to 64 letters, digits, '_' or '-'")
        if task_id in self.tasks:
            raise TaskExists(f"task {task_id} already exists")
        task = SimTask(
            task_id,
            kind,
            created_at=self.clock(),
            audit_seconds=self.audit_seconds if audit_seconds is None else audit_seconds,
            train_seconds=self.train_seconds if train_seconds is None else train_seconds,
            deliver_seconds=self.deliver_seconds if deliver_seconds is None else deliver_seconds,
            demos=demos,
            fail_at=fail_at,
            fail_message=fail_message,
        )
        self.tasks[task_id] = task
        return task

    def _new_id(self) -> str:
        while (task_id := f"1212_{random.randrange(100000):05d}_w") in self.tasks:
            pass
        return task_id

    def task(self, task_id: str) -> SimTask:
        """The task as of now; SimRefused(110006) when unknown."""
        task = self.tasks.get(task_id)
        if task is None:
            raise SimRefused(CODE_NOT_FOUND, MESSAGE_NOT_FOUND)
        task.settle(self.clock())
        return task

    def progress(self, task_id: str, media_base: str | None = None) -> dict[str, Any]:
        """The Payload getprogress answers with."""
        signed_as = str(next(self._reads)) if self.resign_urls else ""
        return self.task(task_id).payload(
            media_base or self.media_base, train_record=self.train_record, signed_as=signed_as
        )

    def advance(self, task_id: str) -> SimTask:
        """End the task's current phase now."""
        task = self.task(task_id)
        task.advance(self.clock())
        return task

    def confirm(
        self, task_id: str, operate: object, reason: object = None, *, source: str = "console"
    ) -> SimTask:
        """Apply a decision with the API's rules (default: as if made in the Tencent console)."""
        task = self.task(task_id)
        task.decide(self.clock(), operate, reason, source)
        return task

    def add_fault(self, fault: Fault) -> None:
        self.faults.append(fault)

    def take_fault(self, action: str, task_id: str | None) -> Fault | None:
        for fault in self.faults:
            if fault.matches(action, task_id):
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def answer(
        self, action: str, query: Mapping[str, str], body: object, media_base: str
    ) -> tuple[int, str, dict[str, Any]]:
        """Code, Message and Payload for one API request, as the real service decides them."""
        try:
            self._authorize(query)
            if not (
                isinstance(body, dict)
                and isinstance(body.get("Header"), dict)
                and isinstance(body.get("Payload"), dict)
            ):
                raise SimRefused(CODE_PARAM_FORMAT, "body must be JSON with Header and Payload")
            payload = body["Payload"]
            task_id = payload.get("TaskId")
            if not isinstance(task_id, str) or not task_id:
                raise SimRefused(CODE_PARAM_MISSING, "TaskId is required and must be a string")
            if self.auto_create and task_id not in self.tasks and TASK_ID.fullmatch(task_id):
                self.create_task(task_id)
            if action == GET_PROGRESS:
                return CODE_OK, "", self.progress(task_id, media_base)
            self.confirm(task_id, payload.get("Operate"), payload.get("Reason"), source="api")
            return CODE_OK, "ok", {}
        except SimRefused as refused:
            return refused.code, refused.message, {}

    def _authorize(self, query: Mapping[str, str]) -> None:
        appkey, timestamp, signature = (query.get(k) for k in ("appkey", "timestamp", "signature"))
        if not appkey or not timestamp or not signature:
            raise SimRefused(CODE_PARAM_FORMAT, "appkey, timestamp and signature are required")
        if not re.fullmatch(r"[0-9]{1,12}", timestamp):
            raise SimRefused(CODE_PARAM_FORMAT, "timestamp must be Unix seconds")
        if appkey != self.appkey:
            raise SimRefused(CODE_UNAUTHORIZED, "unauthorized operation: unknown appkey")
        skew = int(timestamp) - self.clock()
        if abs(skew) > MAX_SKEW_SECONDS:
            raise SimRefused(
                CODE_UNAUTHORIZED,
                f"unauthorized operation: timestamp expired (clock skew {skew:+.0f}s,"
                f" more than {MAX_SKEW_SECONDS}s)",
            )
        expected = sign(self.appkey, self.access_token, int(timestamp))
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            raise SimRefused(CODE_UNAUTHORIZED, "unauthorized operation: signature mismatch")


# --- the HTTP server -----------------------------------------------------------------------


class _Gate:
    """Where timeout and hold faults wait; shutdown lets every waiter go."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.closing = asyncio.Event()
        self.held = 0

    async def sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), seconds)

    async def hold(self) -> None:
        event = self.release
        self.held += 1
        try:
            await event.wait()
        finally:
            self.held -= 1

    def open(self) -> int:
        released, event = self.held, self.release
        self.release = asyncio.Event()
        event.set()
        return released

    async def close(self, app: web.Application) -> None:
        self.closing.set()
        self.release.set()


def _envelope(code: int, message: str, request_id: str, payload: dict[str, Any]) -> web.Response:
    header = {"Code": code, "Message": message, "RequestID": request_id}
    return web.json_response({"Header": header, "Payload": payload})


def _loads(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _field(obj: object, *keys: str) -> Any:
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _broken(kind: str, request_id: str) -> web.Response:
    """A gateway in trouble: none of these is an IVH envelope."""
    if kind == "http500":
        return web.Response(status=500, text=ERROR_PAGE, content_type="text/html")
    if kind == "html":
        return web.Response(text=GATEWAY_PAGE, content_type="text/html")
    truncated = json.dumps({"Header": {"Code": 0, "RequestID": request_id}})[:-7]
    return web.Response(text=truncated, content_type=JSON)


def make_app(sim: Simulator, *, media_base: str | None = None) -> web.Application:
    """The simulator's routes. Demo URLs use `media_base`, else each request's own origin."""
    fixed_base = media_base.rstrip("/") if media_base else None
    if fixed_base:
        sim.media_base = fixed_base
    gate = _Gate()

    def base_of(request: web.Request) -> str:
        return fixed_base or f"{request.scheme}://{request.host}"

    async def api(request: web.Request) -> web.Response:
        action = request.match_info["action"]
        body = _loads(await request.read())
        given_id = _field(body, "Header", "RequestID")
        request_id = given_id if isinstance(given_id, str) and given_id else f"sim-{uuid.uuid4()}"
        task_id, operate, reason = (
            _field(body, "Payload", k) for k in ("TaskId", "Operate", "Reason")
        )
        record: dict[str, Any] = {
            "t": sim.clock(),
            "action": action,
            "task_id": task_id if isinstance(task_id, str) else None,
            "operate": operate,
            "reason": reason,
            "request_id": request_id,
            "code": None,
            "http_status": 200,
        }
        sim.requests.append(record)
        fault = sim.take_fault(action, record["task_id"])
        if fault is None or fault.apply or action == GET_PROGRESS:
            code, message, payload = sim.answer(action, request.query, body, base_of(request))
        else:  # the decision is lost: nothing happened
            code, message, payload = CODE_INTERNAL, "internal error", {}
        if sim.latency_ms > 0:
            await asyncio.sleep(sim.latency_ms / 1000)
        if fault is None or fault.kind in ("timeout", "hold"):
            if fault is not None:
                await (gate.sleep(fault.seconds) if fault.kind == "timeout" else gate.hold())
            record["code"] = code
            return _envelope(code, message, request_id, payload)
        if fault.kind == "code":
            record["code"] = fault.code
            return _envelope(fault.code, fault.message, request_id, {})
        response = _broken(fault.kind, request_id)
        record["http_status"] = response.status
        return response

    async def media(request: web.Request) -> web.StreamResponse:
        task = sim.tasks.get(request.match_info["task_id"])
        round_, n = int(request.match_info["round"]), int(request.match_info["n"])
        if task is None:
            raise web.HTTPNotFound(text="no such task")
        task.settle(sim.clock())
        if not (1 <= round_ <= task.demo_rounds() and 1 <= n <= task.demos):
            raise web.HTTPNotFound(text="no such demo")
        return web.FileResponse(DEMO_MP4, headers={"Content-Type": "video/mp4"})

    async def healthz(request: web.Request) -> web.Response:
        """Answers once the simulator serves: what a script waits for before using it."""
        return web.json_response({"simulator": True, "tasks": len(sim.tasks)})

    routes = [
        web.get("/healthz", healthz),
        web.post(API_PATH + "{action:" + f"{GET_PROGRESS}|{CUSTOMER_CONFIRM}" + "}", api),
        web.get(r"/media/{task_id}/{round:\d+}/{n:\d+}.mp4", media),
        *admin_routes(sim, gate, base_of),
    ]
    app = web.Application()
    app.add_routes(routes)
    app.on_shutdown.append(gate.close)
    return app


def admin_routes(
    sim: Simulator, gate: _Gate, base_of: Callable[[web.Request], str]
) -> list[web.RouteDef]:
    """/_sim/: a loopback tool for tests and demos; no authentication."""

    def error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    async def json_object(request: web.Request) -> dict[str, Any]:
        body = _loads(await request.read()) if request.can_read_body else {}
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text='{"error": "a JSON object, please"}', content_type=JSON)
        return body

    def on_task(act: Callable[[str, dict[str, Any]], SimTask]) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            try:
                task = act(request.match_info["task_id"], await json_object(request))
            except SimRefused as refused:
                return error(404 if refused.code == CODE_NOT_FOUND else 409, refused.message)
            return web.json_response(task.describe(base_of(request)))

        return handler

    async def create(request: web.Request) -> web.Response:
        try:
            task = sim.create_task(**checked(await json_object(request), CREATE_FIELDS))
        except TaskExists as exists:
            return error(409, str(exists))
        except ValueError as invalid:
            return error(400, str(invalid))
        return web.json_response(task.describe(base_of(request)), status=201)

    async def add_fault(request: web.Request) -> web.Response:
        try:
            fault = Fault(**checked(await json_object(request), FAULT_FIELDS))
        except ValueError as invalid:
            return error(400, str(invalid))
        sim.add_fault(fault)
        return web.json_response(asdict(fault), status=201)

    async def clear_faults(request: web.Request) -> web.Response:
        sim.faults.clear()
        return web.json_response([])

    async def release(request: web.Request) -> web.Response:
        return web.json_response({"released": gate.open()})

    async def requests(request: web.Request) -> web.Response:
        return web.json_response(sim.requests)

    async def clear_requests(request: web.Request) -> web.Response:
        sim.requests.clear()
        return web.json_response([])

    return [
        web.post("/_sim/tasks", create),
        web.get("/_sim/tasks/{task_id}", on_task(lambda task_id, _: sim.task(task_id))),
        web.post("/_sim/tasks/{task_id}/advance", on_task(lambda task_id, _: sim.advance(task_id))),
        web.post(
            "/_sim/tasks/{task_id}/confirm",
            on_task(
                lambda task_id, body: sim.confirm(task_id, body.get("operate"), body.get("reason"))
            ),
        ),
        web.post("/_sim/faults", add_fault),
        web.delete("/_sim/faults", clear_faults),
        web.post("/_sim/release", release),
        web.get("/_sim/requests", requests),
        web.delete("/_sim/requests", clear_requests),
    ]


@dataclass
class RunningSimulator:
    url: str
    port: int
    sim: Simulator
    _runner: web.AppRunner

    async def close(self) -> None:
        await self._runner.cleanup()


async def start(sim: Simulator, host: str = "127.0.0.1", port: int = 0) -> RunningSimulator:
    """Serve the simulator on host:port (a free port for 0)."""
    wildcard = host in ("", "0.0.0.0", "::")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound = int(sock.getsockname()[1])
    url_host = "127.0.0.1" if wildcard else (f"[{host}]" if ":" in host else host)
    url = f"http://{url_host}:{bound}"
    # Behind a wildcard address, demo URLs follow the Host each client used to reach us.
    app = make_app(sim, media_base=None if wildcard else url)
    if wildcard:
        sim.media_base = url
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return RunningSimulator(url, bound, sim, runner)
