"""Slack listeners: thin functions that ack, check and hand off to `bot/`."""

from __future__ import annotations

from collections.abc import Callable

from slack_bolt.async_app import AsyncApp

from bot.decisions import Decider
from bot.store import Store
from handlers import actions, commands, views


def register(
    app: AsyncApp, *, store: Store, decider: Decider, on_track: Callable[[], None]
) -> None:
    actions.register(app, store=store, decider=decider)
    views.register(app, store=store, decider=decider)
    commands.register(app, store=store, on_track=on_track)
