"""Chat: an organisation's threads and the messages in them (REST history, the agents'
reports, and what the WebSocket gateway relays)."""
