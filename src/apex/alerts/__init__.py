"""Customer alerts: rules an organisation sets over its own usage, evaluated by workers,
notified by mail, signed webhooks and Slack-compatible webhooks, with a delivery log."""
