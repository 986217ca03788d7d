"""Who is calling: `CurrentPrincipal`, and `RequirePermission(...)` for endpoints."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from apex.billing.plans import plan_for
from apex.identity import apikeys
from apex.identity.policy import LEAST_ROLE, allows
from apex.identity.service import (
    is_operator,
    organization_key,
    organization_view,
    role_in,
    role_key,
)
from apex.identity.sessions import (
    COOKIE,
    CSRF_HEADER,
    SAFE_METHODS,
    BrowserSession,
    SessionRejected,
    csrf_ok,
)
from apex.identity.tokens import AccessClaims, decode_access_token
from apex.kit.cache import TwoLevelCache
from apex.kit.deps import SessionDep
from apex.kit.errors import Forbidden, RateLimited, Unauthorized

_bearer = HTTPBearer(auto_error=False)
log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. The organisation comes from here, never from a request body.

    A person carries `claims` (their access token, or `session` for a browser) and a `role`.
    An API key carries the `key_permissions` it was created with and acts for its creator:
    `role` is the creator's role *now*, so a key holds its scopes only while its creator
    does (demote or remove the creator and the key loses those rights on the next request).
    """

    user_id: uuid.UUID
    organization_id: uuid.UUID
    role: str
    claims: AccessClaims | None = None
    key_permissions: frozenset[str] | None = None
    session: BrowserSession | None = None

    @property
    def is_api_key(self) -> bool:
        return self.key_permissions is not None

    def may(self, permission: str) -> bool:
        """A key's rights are its scopes intersected with its creator's current role."""
        in_scope = self.key_permissions is None or permission in self.key_permissions
        return in_scope and allows(self.role, permission)


async def get_cache(request: Request) -> TwoLevelCache:  # async: no thread-pool hop
    cache: TwoLevelCache = request.app.state.cache
    return cache


CacheDep = Annotated[TwoLevelCache, Depends(get_cache)]


async def get_principal(
    request: Request,
    session: SessionDep,
    cache: CacheDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    principal = await _authenticated(request, session, cache, credentials)
    # Every later line of this request (its access line included) names the organisation.
    structlog.contextvars.bind_contextvars(organization_id=str(principal.organization_id))
    await _within_plan_api_limit(request, session, cache, principal.organization_id)
    return principal


API_WINDOW_SECONDS = 3600
# Never refused by the plan's API limit: an organisation at its limit can always upgrade.
BILLING_PATHS = "/api/v1/billing/"


async def _within_plan_api_limit(
    request: Request, session: AsyncSession, cache: TwoLevelCache, organization_id: uuid.UUID
) -> None:
    """Count the request against the organisation's plan (API requests an hour, across every
    instance); the answer carries RateLimit headers, and past the limit it is a 429 naming
    the next tier."""
    state = request.app.state
    if not state.settings.enforce_api_limits or request.url.path.startswith(BILLING_PATHS):
        return
    organization = await organization_view(session, cache, organization_id)
    plan = plan_for(organization["tier"] if organization else "free")
    if plan.api_requests_per_hour is None:
        return
    try:
        decision = await state.api_limiter.hit(
            "api",
            str(organization_id),
            limit=plan.api_requests_per_hour,
            window_seconds=API_WINDOW_SECONDS,
            now=state.clock.now().timestamp(),
        )
    except RedisError as exc:
        # The limit is a guard rail, not a dependency: with Redis unreachable, requests
        # are served (what works without Redis keeps working) and the lapse is logged.
        log.warning("api_limit_unavailable", error=type(exc).__name__)
        return
    request.state.response_headers = decision.headers(API_WINDOW_SECONDS)
    if not decision.allowed:
        upgrade = plan.next_tier.value if plan.next_tier else None
        raise RateLimited(
            f"Your plan allows {plan.api_requests_per_hour:,} API requests an hour"
            + (f"; the {upgrade.capitalize()} plan allows more." if upgrade else "."),
            retry_after=decision.reset_seconds,
            limit=plan.api_requests_per_hour,
            upgrade=upgrade,
        )


async def _authenticated(
    request: Request,
    session: AsyncSession,
    cache: TwoLevelCache,
    credentials: HTTPAuthorizationCredentials | None,
) -> Principal:
    state = request.app.state
    if credentials is None:
        return await _session_principal(request, session, cache)
    if apikeys.looks_like_api_key(credentials.credentials):
        key = await apikeys.authenticate(session, credentials.credentials, state.clock.now())
        creator_role = await role_in(session, cache, key.created_by_id, key.organization_id)
        if creator_role is None:
            raise Unauthorized(
                "This API key's creator is no longer a member of the organisation, so the key "
                "has no rights: create a new one."
            )
        return Principal(
            key.created_by_id,
            key.organization_id,
            creator_role,
            key_permissions=frozenset(key.permissions),
        )
    claims = decode_access_token(
        credentials.credentials,
        keyring=state.keyring,
        now=state.clock.now(),
        leeway=state.settings.token_leeway_seconds,
    )
    if await _revoked(state, session, cache, claims):
        raise Unauthorized("This access token was revoked (logged out).")
    # The role is read per request (through the cache), so a change applies on the next request.
    role = await role_in(session, cache, claims.user_id, claims.organization_id)
    if role is None:
        raise Unauthorized("You are no longer a member of this organisation.")
    await request.app.state.read_your_writes.apply(session, str(claims.user_id))
    return Principal(claims.user_id, claims.organization_id, role, claims)


async def _revoked(
    state: Any, session: AsyncSession, cache: TwoLevelCache, claims: AccessClaims
) -> bool:
    """Is the token on the denylist? Asked in the same Redis round trip as the cache versions
    of the caller's role and organisation, which every authenticated request reads next."""
    user, organization = claims.user_id, claims.organization_id
    try:
        (denied,) = await cache.read_versions(
            session,
            [role_key(user, organization), organization_key(organization)],
            also=[state.denylist.key(claims.token_id)],
        )
    except RedisError as exc:
        return bool(state.denylist.denied_here(claims.token_id, exc))
    return denied is not None


async def _session_principal(
    request: Request, session: AsyncSession, cache: TwoLevelCache
) -> Principal:
    """The caller behind a session cookie; state-changing requests must carry its CSRF token."""
    state = request.app.state
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        raise Unauthorized("Authentication required: send 'Authorization: Bearer <token>'.")
    try:
        browser = await state.sessions.load(
            cookie, user_agent=request.headers.get("user-agent", ""), now=state.clock.now()
        )
    except SessionRejected as rejected:
        raise Unauthorized(rejected.reason) from None
    if request.method not in SAFE_METHODS and not csrf_ok(
        browser, request.headers.get(CSRF_HEADER)
    ):
        raise Forbidden(f"Cookie-authenticated changes need the session's {CSRF_HEADER} header.")
    role = await role_in(session, cache, browser.user_id, browser.organization_id)
    if role is None:
        raise Unauthorized("You are no longer a member of this organisation.")
    return Principal(browser.user_id, browser.organization_id, role, session=browser)


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def _refuse_keys(principal: Principal) -> None:
    if principal.is_api_key:
        raise Forbidden(
            "API keys cannot use this endpoint: it acts on a person's account. "
            "Use a person's access token."
        )


async def get_person(principal: CurrentPrincipal) -> Principal:
    _refuse_keys(principal)
    return principal


# A person (access token or browser session), never an API key: profile, sessions, logout.
CurrentPerson = Annotated[Principal, Depends(get_person)]


def RequirePermission(permission: str, *, person_only: bool = False) -> Any:
    """`principal: Annotated[Principal, RequirePermission("org:manage")]`: the caller, if
    their role holds the permission; otherwise 403 naming it. `person_only` also refuses API
    keys (e.g. a key may not mint keys). The permission is kept on the dependency
    (`.permission`) so tests can list the protected routes."""
    if permission not in LEAST_ROLE:
        raise ValueError(f"unknown permission {permission!r}")

    async def check(principal: CurrentPrincipal) -> Principal:
        if person_only:
            _refuse_keys(principal)
        if not principal.may(permission):
            holder = "This API key" if principal.is_api_key else f"Your role ({principal.role})"
            raise Forbidden(f"{holder} lacks the permission {permission!r}.", permission=permission)
        return principal

    check.permission = permission  # type: ignore[attr-defined]
    return Depends(check)


async def get_operator(
    request: Request, principal: CurrentPerson, session: SessionDep
) -> Principal:
    if not await is_operator(
        session, principal.user_id, request.app.state.settings.operator_emails
    ):
        raise Forbidden("This is for the operators of this installation.")
    return principal


# A person who runs this installation (APEX_OPERATOR_EMAILS), never an API key.
CurrentOperator = Annotated[Principal, Depends(get_operator)]
