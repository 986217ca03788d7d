"""The WebSocket gateway: connections, the hub that fans channels out across instances
through Redis, and the protocol. It relays streams and owns no domain data (chat/ does)."""
