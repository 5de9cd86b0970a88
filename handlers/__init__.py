"""Slack listeners: thin functions that ack, check and hand off to `bot/`."""

from __future__ import annotations

from collections.abc import Callable

from slack_bolt.async_app import AsyncApp

from bot.approvers import Approvers
from bot.decisions import Decider
from bot.home import Home
from bot.store import Store
from handlers import actions, commands, events, views
from handlers.handoff import Handoff


def register(
    app: AsyncApp,
    *,
    store: Store,
    decider: Decider,
    approvers: Approvers,
    on_track: Callable[[], None],
    handoff: Handoff,
    home: Home,
) -> None:
    events.register(app, approvers=approvers, home=home, handoff=handoff)
    actions.register(app, store=store, decider=decider, handoff=handoff, home=home)
    views.register(app, store=store, decider=decider, handoff=handoff, home=home)
    commands.register(app, store=store, on_track=on_track, approvers=approvers)
