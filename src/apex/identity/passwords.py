"""Password hashing (argon2id). Hashing is deliberately slow, so it runs off the event loop,
on a pool of its own bounded to half the cores: a flood of sign-in attempts queues here and
cannot take the CPU from every other request. Past `MAX_PENDING` queued hashes, new ones are
refused at once with a 503 to retry, rather than waiting minutes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from apex.kit.errors import ServiceUnavailable

T = TypeVar("T")
_hasher = PasswordHasher()
# Verified against when the email is unknown, so both paths cost the same (no user enumeration).
# A hash of a random password thrown away, made with the hasher's parameters; hashing one at
# import instead cost every process start (CLI included) 0.1 s. Should the parameters change,
# a fresh one is made, so an unknown email never verifies faster than a known one.
_DUMMY_HASH = "$argon2id$v=19$m=65536,t=3,p=4$2IufhBSGzKIL/3jUZM0ODw$8y/1KTYy64pa19SpvvZXM0NyJtPamSqET38RnHNwak0"  # noqa: E501
if _hasher.check_needs_rehash(_DUMMY_HASH):
    _DUMMY_HASH = _hasher.hash(os.urandom(16).hex())
POOL_SIZE = max(1, (os.cpu_count() or 2) // 2)
MAX_PENDING = 64
_pool = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="apex-argon2")
_pending = 0


async def _on_pool(work: Callable[[], T]) -> T:
    global _pending
    if _pending >= MAX_PENDING:
        raise ServiceUnavailable("Too many sign-ins at once; try again shortly.", retry_after=1)
    _pending += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(_pool, work)
    finally:
        _pending -= 1


async def hash_password(password: str) -> str:
    return await _on_pool(lambda: _hasher.hash(password))


async def verify_password(password_hash: str | None, password: str) -> bool:
    def verify() -> bool:
        try:
            return (
                _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
            )
        except (VerificationError, InvalidHashError):
            return False

    return await _on_pool(verify)
