"""Realtime: chat threads and messages (the WebSocket gateway comes later)."""
