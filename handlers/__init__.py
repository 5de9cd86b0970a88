"""Slack listeners: thin functions that ack, check and hand off to `bot/`."""
