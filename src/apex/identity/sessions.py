"""Browser sessions, kept in Redis so every instance shares them.

- The cookie holds only a random id (256 bits), `HttpOnly`, `SameSite=Lax`, `Secure` unless
  `APEX_SESSION_COOKIE_SECURE=false` (local http). Logging in always issues a new id and
  deletes the old session (no fixation).
- A session is bound to the user agent that created it: presented by another one, it is
  revoked on the spot (a stolen cookie is worth one failed request).
- It expires after `APEX_SESSION_IDLE_SECONDS` without use and, in any case,
  `APEX_SESSION_ABSOLUTE_SECONDS` after login, measured on the injected clock.
- Cookie-authenticated requests that change state must send the session's CSRF token in
  `X-CSRF-Token`.
- The short-lived access tokens a session mints for its WebSocket are remembered with it;
  when the session is logged out or revoked they go on the denylist, which closes their
  sockets on every instance at once. A session holds at most `LIVE_TOKENS_PER_SESSION`
  unexpired ones: past that, minting is refused (429) until the oldest expires, so a client
  cannot grow what Redis keeps for it (or what a logout must deny) without bound.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from apex.identity.denylist import Denylist
from apex.kit.clock import Clock
from apex.kit.digest import sha256_hex

COOKIE = "apex_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# One per open tab, renewed before it expires: far more than a person keeps open.
LIVE_TOKENS_PER_SESSION = 50

# KEYS[1] hash {jti: expires at}; ARGV: now, jti, expires at, cap, ttl s. Forgets the
# expired tokens, then remembers this one if fewer than `cap` are live. Returns 0 when
# remembered, else the seconds until the oldest live token expires.
_REMEMBER = """
local minted = redis.call('HGETALL', KEYS[1])
local now, live, oldest = tonumber(ARGV[1]), 0, nil
for i = 1, #minted, 2 do
  local expires = tonumber(minted[i + 1])
  if expires <= now then
    redis.call('HDEL', KEYS[1], minted[i])
  else
    live = live + 1
    if oldest == nil or expires < oldest then oldest = expires end
  end
end
if live >= tonumber(ARGV[4]) then
  return math.max(1, math.ceil(oldest - now))
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[5]) then
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
return 0
"""


def public_id(session_id: str) -> str:
    """How a session is named in lists and URLs: never the cookie value itself."""
    return sha256_hex(session_id)[:24]


@dataclass(frozen=True, slots=True)
class BrowserSession:
    id: str
    user_id: uuid.UUID
    organization_id: uuid.UUID
    csrf_token: str
    created_at: float
    last_seen: float
    user_agent: str

    @property
    def public_id(self) -> str:
        return public_id(self.id)


class SessionRejected(Exception):
    """The cookie names no usable session; `reason` says why (for the 401)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TooManyTokens(Exception):
    """The session already holds its quota of live tokens; one expires in `retry_after` s."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"{LIVE_TOKENS_PER_SESSION} live tokens; retry in {retry_after} s")
        self.retry_after = retry_after


class SessionStore:
    def __init__(
        self,
        redis: Redis,
        *,
        idle_seconds: int,
        absolute_seconds: int,
        denylist: Denylist,
        clock: Clock,
    ) -> None:
        self.redis = redis
        self.idle = idle_seconds
        self.absolute = absolute_seconds
        self.denylist = denylist
        self.clock = clock
        self._remember = redis.register_script(_REMEMBER)

    @staticmethod
    def _tokens(ref: str) -> str:
        return f"apex:session-tokens:{ref}"

    async def remember_token(self, ref: str, jti: str, expires_at: datetime) -> None:
        """A token session `ref` (its public id) minted: revoked with the session.

        Raises `TooManyTokens` (nothing remembered) when the session already holds
        `LIVE_TOKENS_PER_SESSION` unexpired tokens; the caller then hands out none."""
        now = self.clock.now()
        ttl = max(1, int((expires_at - now).total_seconds()) + 1)
        wait = await self._remember(
            keys=[self._tokens(ref)],
            args=[now.timestamp(), jti, expires_at.timestamp(), LIVE_TOKENS_PER_SESSION, ttl],
        )
        if int(wait):
            raise TooManyTokens(int(wait))

    async def _revoke_tokens(self, refs: list[str]) -> None:
        """Deny the tokens the ended sessions minted (their sockets close everywhere)."""
        now = self.clock.now()
        for ref in refs:
            minted = _strings(await self.redis.hgetall(self._tokens(ref)))
            for jti, expires in minted.items():
                await self.denylist.add(jti, datetime.fromtimestamp(float(expires), UTC), now)
            await self.redis.delete(self._tokens(ref))

    @staticmethod
    def _key(session_id: str) -> str:
        return f"apex:session:{sha256_hex(session_id)}"  # a Redis dump does not leak cookies

    @staticmethod
    def _index(user_id: uuid.UUID) -> str:
        return f"apex:user-sessions:{user_id}"

    def _ttl(self, created_at: float, now: float) -> int:
        return max(1, int(min(self.idle, self.absolute - (now - created_at))))

    async def create(
        self,
        *,
        user_id: uuid.UUID,
        organization_id: uuid.UUID,
        user_agent: str,
        now: datetime,
        replacing: str | None = None,
    ) -> BrowserSession:
        if replacing:
            await self.delete(replacing)
        stamp = now.timestamp()
        session = BrowserSession(
            id=secrets.token_urlsafe(32),
            user_id=user_id,
            organization_id=organization_id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=stamp,
            last_seen=stamp,
            user_agent=user_agent,
        )
        fields: dict[Any, Any] = {  # redis-py types mappings invariantly
            "user_id": str(user_id),
            "organization_id": str(organization_id),
            "csrf": session.csrf_token,
            "ua": sha256_hex(user_agent),
            "agent": user_agent[:200],
            "created_at": str(stamp),
            "last_seen": str(stamp),
            "public_id": session.public_id,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(session.id), mapping=fields)
            pipe.expire(self._key(session.id), self._ttl(stamp, stamp))
            pipe.hset(self._index(user_id), session.public_id, self._key(session.id))
            await pipe.execute()
        return session

    async def load(self, session_id: str, *, user_agent: str, now: datetime) -> BrowserSession:
        data = _strings(await self.redis.hgetall(self._key(session_id)))
        if not data:
            raise SessionRejected("Your session has ended; log in again.")
        stamp = now.timestamp()
        created, last_seen = float(data["created_at"]), float(data["last_seen"])
        user_id = uuid.UUID(data["user_id"])
        if not hmac.compare_digest(data["ua"], sha256_hex(user_agent)):
            await self.delete(session_id, user_id)
            raise SessionRejected(
                "This session was used from another browser and has been revoked."
            )
        if stamp - last_seen > self.idle or stamp - created > self.absolute:
            await self.delete(session_id, user_id)
            raise SessionRejected("Your session has expired; log in again.")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(session_id), "last_seen", str(stamp))
            pipe.expire(self._key(session_id), self._ttl(created, stamp))
            await pipe.execute()
        return BrowserSession(
            id=session_id,
            user_id=user_id,
            organization_id=uuid.UUID(data["organization_id"]),
            csrf_token=data["csrf"],
            created_at=created,
            last_seen=stamp,
            user_agent=data.get("agent", ""),
        )

    async def delete(self, session_id: str, user_id: uuid.UUID | None = None) -> None:
        key = self._key(session_id)
        if user_id is None:
            owner = await self.redis.hget(key, "user_id")
            user_id = uuid.UUID(str(owner)) if owner else None
        await self.redis.delete(key)
        if user_id is not None:
            await self.redis.hdel(self._index(user_id), public_id(session_id))
        await self._revoke_tokens([public_id(session_id)])

    async def list(self, user_id: uuid.UUID) -> list[dict[str, Any]]:
        index = _strings(await self.redis.hgetall(self._index(user_id)))
        sessions = []
        for ref, key in sorted(index.items()):
            data = _strings(await self.redis.hgetall(key))
            if not data:
                await self.redis.hdel(self._index(user_id), ref)  # expired meanwhile
                continue
            sessions.append(
                {
                    "id": ref,
                    "user_agent": data.get("agent", ""),
                    "created_at": datetime.fromtimestamp(
                        float(data["created_at"]), UTC
                    ).isoformat(),
                    "last_seen": datetime.fromtimestamp(float(data["last_seen"]), UTC).isoformat(),
                }
            )
        return sessions

    async def revoke(self, user_id: uuid.UUID, ref: str) -> bool:
        key = await self.redis.hget(self._index(user_id), ref)
        if key is None:
            return False
        await self.redis.delete(key)
        await self.redis.hdel(self._index(user_id), ref)
        await self._revoke_tokens([ref])
        return True

    async def revoke_all(self, user_id: uuid.UUID) -> int:
        index = _strings(await self.redis.hgetall(self._index(user_id)))
        if index:
            await self.redis.delete(*index.values())
        await self.redis.delete(self._index(user_id))
        await self._revoke_tokens(list(index))
        return len(index)


def _strings(mapping: Any) -> dict[str, str]:
    return {str(key): str(value) for key, value in mapping.items()}


def csrf_ok(session: BrowserSession, header_value: str | None) -> bool:
    return header_value is not None and hmac.compare_digest(session.csrf_token, header_value)
