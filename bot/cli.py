"""The `ivh-approvals` command: run, simulate, track, events."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.aio import LoopCrashed
from bot.config import Settings, SettingsError, listen_error, load_settings
from bot.logs import setup_logging

log = logging.getLogger("ivh_approvals")


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def _run(settings: Settings, *, demo: bool = False) -> None:
    from bot.app import serve

    stop = asyncio.Event()
    _stop_on_signals(stop)
    await serve(settings, stop, demo=demo)


def _demo_settings(settings: Settings) -> Settings:
    """The demo runs in Socket Mode; without any Slack settings it shows the Tencent side."""
    if settings.slack_configured:
        for name in ("SLACK_APP_TOKEN", "SLACK_CHANNEL"):
            if getattr(settings, name) is None:
                raise SettingsError(f"configuration error: {name}: required by the demo")
    return settings.model_copy(update={"POLL_INTERVAL": min(settings.POLL_INTERVAL, 5.0)})


async def _simulate(args: argparse.Namespace) -> None:
    from bot.sim import Simulator, start

    sim = Simulator(
        args.appkey,
        args.access_token,
        audit_seconds=args.audit_seconds,
        train_seconds=args.train_seconds,
        deliver_seconds=args.deliver_seconds,
        latency_ms=args.latency_ms,
        auto_create=args.auto_create,
        train_record=args.train_record,
        resign_urls=args.resign_urls,
    )
    for task_id in args.task:
        sim.create_task(task_id)
    try:
        running = await start(sim, args.host, args.port)
    except OSError as error:
        raise listen_error("--port", args.host, args.port, error) from None
    print(f"IVH simulator listening on {running.url}", file=sys.stderr)
    print(
        f"  use: IVH_BASE_URL={running.url} IVH_APPKEY={args.appkey}"
        f" IVH_ACCESS_TOKEN={args.access_token}",
        file=sys.stderr,
    )
    print(f"  create a task: curl -XPOST {running.url}/_sim/tasks -d '{{}}'", file=sys.stderr)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    await stop.wait()
    await running.close()


# How long `events -f` waits for Redis to announce a new event before it asks again.
EVENTS_WAIT_MS = 5_000


async def _redis_for_cli(settings: Settings, *, socket_timeout: float = 5.0) -> Redis:
    from bot.embedded import answers, embedded_url

    url = settings.REDIS_URL or embedded_url(settings.DATA_DIR)
    if settings.REDIS_URL is None and not await answers(url):
        raise SettingsError(
            "REDIS_URL: not set, and no embedded Redis is running under DATA_DIR"
            f" ({settings.DATA_DIR}); start `ivh-approvals run` or `demo` first, from the same"
            " directory, or set REDIS_URL"
        )
    return Redis.from_url(url, socket_connect_timeout=5, socket_timeout=socket_timeout)


async def _track(settings: Settings, args: argparse.Namespace) -> int:
    from bot.intake import TrackRequest, describe_errors, track_task
    from bot.store import Store

    try:
        request = TrackRequest(task_id=args.task_id, channel=args.channel, title=args.title)
    except ValidationError as error:
        print(f"error: {describe_errors(error)}", file=sys.stderr)
        return 2
    redis = await _redis_for_cli(settings)
    try:
        record, started = await track_task(Store(redis), request, tracked_by="cli")
    finally:
        await redis.aclose()
    print(json.dumps({"task": record.model_dump(mode="json"), "polling_started": started}))
    return 0


async def _audit_export(settings: Settings, args: argparse.Namespace) -> int:
    from bot.audit import csv_rows, jsonl, parse_when
    from bot.store import Store

    try:
        since = parse_when(args.since) if args.since else None
        until = parse_when(args.until, end=True) if args.until else None
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    redis = await _redis_for_cli(settings)
    try:
        entries = [entry async for entry in Store(redis).audit(since, until)]
    finally:
        await redis.aclose()
    write = csv_rows if args.format == "csv" else jsonl
    for text in write(entries):
        sys.stdout.write(text)
    sys.stdout.flush()
    return 0


async def _check(settings: Settings) -> int:
    from bot.check import run_checks
    from bot.embedded import answers, embedded_url

    url = settings.REDIS_URL
    if url is None and await answers(embedded_url(settings.DATA_DIR)):
        url = embedded_url(settings.DATA_DIR)
    results = await run_checks(settings, url)
    for result in results:
        print(result.line(), flush=True)
    return 0 if all(result.ok for result in results) else 1


async def _events(settings: Settings, args: argparse.Namespace) -> int:
    from bot.store import Store

    # The blocking read answers only after EVENTS_WAIT_MS when nothing happens: the socket
    # must wait longer than that, or every quiet wait ends in a timeout error.
    redis = await _redis_for_cli(settings, socket_timeout=EVENTS_WAIT_MS / 1000 + 5)
    store = Store(redis)
    last = "-"
    try:
        while True:
            start = last if last == "-" else f"({last}"
            for entry_id, event in await store.events(start=start):
                last = entry_id
                print(entry_id, event.model_dump_json(exclude_defaults=True), flush=True)
            if not args.follow:
                return 0
            await store.wait_for_events(
                after=last if last != "-" else "0-0", block_ms=EVENTS_WAIT_MS
            )
    finally:
        await redis.aclose()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ivh-approvals",
        description="Approve or reject Tencent IVH customization demos from Slack.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the bot: HTTP server, poller, publisher, Slack listeners")
    sub.add_parser(
        "demo",
        help="run the bot with the built-in IVH simulator and a demo task (Socket Mode)",
    )

    sim = sub.add_parser("simulate", help="run the IVH simulator (a fake Tencent IVH API)")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8900)
    sim.add_argument("--appkey", default="sim-appkey")
    sim.add_argument("--access-token", default="sim-access-token")
    sim.add_argument("--audit-seconds", type=float, default=5)
    sim.add_argument("--train-seconds", type=float, default=20)
    sim.add_argument("--deliver-seconds", type=float, default=2)
    sim.add_argument("--latency-ms", type=float, default=0)
    sim.add_argument("--task", action="append", default=[], help="create a task with this id")
    sim.add_argument(
        "--auto-create", action="store_true", help="create any unknown task id on first query"
    )
    # What Tencent's docs leave open, played either way (see the README's simulator section).
    sim.add_argument(
        "--train-record",
        choices=("current", "history"),
        default="current",
        help="TrainRecord lists the round awaiting confirmation too (current) or only the"
        " earlier ones (history)",
    )
    sim.add_argument(
        "--resign-urls",
        action="store_true",
        help="demo URLs carry a new query on every read, as links signed afresh would",
    )

    track = sub.add_parser("track", help="start tracking a task id")
    track.add_argument("task_id")
    track.add_argument("--channel", help="Slack channel for this task (else SLACK_CHANNEL)")
    track.add_argument("--title", help="a human name for the task")

    manifest = sub.add_parser("manifest", help="print the Slack app manifest (JSON)")
    mode = manifest.add_mutually_exclusive_group()
    mode.add_argument("--socket", action="store_true", help="Socket Mode (the default)")
    mode.add_argument("--http", metavar="URL", help="HTTP mode: the public .../slack/events URL")

    audit = sub.add_parser("audit", help="the audit trail of events and decisions")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    export = audit_sub.add_parser("export", help="write the audit trail to stdout")
    export.add_argument("--since", metavar="DATE", help="from this date or time (UTC)")
    export.add_argument("--until", metavar="DATE", help="up to this date or time (UTC)")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")

    sub.add_parser(
        "check",
        help="check the settings, Slack, the channels, IVH and Redis; exit 0 only if all pass",
    )

    events = sub.add_parser("events", help="print the events stream")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "manifest":
        from bot.manifest import check_request_url, manifest

        if args.http is not None:
            try:
                check_request_url(args.http)
            except ValueError as error:
                print(f"error: --http: {error}", file=sys.stderr)
                return 2
        print(json.dumps(manifest(request_url=args.http), indent=2))
        return 0
    try:
        settings = load_settings()
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    setup_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    try:
        if args.command == "run":
            asyncio.run(_run(settings))
        elif args.command == "demo":
            asyncio.run(_run(_demo_settings(settings), demo=True))
        elif args.command == "simulate":
            asyncio.run(_simulate(args))
        elif args.command == "track":
            return asyncio.run(_track(settings, args))
        elif args.command == "events":
            return asyncio.run(_events(settings, args))
        elif args.command == "check":
            return asyncio.run(_check(settings))
        elif args.command == "audit":
            return asyncio.run(_audit_export(settings, args))
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    except RedisError as error:
        print(f"error: Redis unavailable: {error}", file=sys.stderr)
        return 1
    except LoopCrashed as error:
        print(f"error: {error} stopped unexpectedly (see the log)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
