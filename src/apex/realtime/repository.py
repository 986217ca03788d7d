from __future__ import annotations

from apex.kit.repository import Repository
from apex.realtime.models import Message, Thread


class ThreadRepository(Repository[Thread]):
    model = Thread


class MessageRepository(Repository[Message]):
    model = Message
