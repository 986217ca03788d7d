from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession

from apex.audit import service as audit
from apex.identity import apikeys, invitations, refresh, service, verification
from apex.identity.deps import CacheDep, CurrentPerson, Principal, RequirePermission
from apex.identity.models import Role, TokenPurpose
from apex.identity.oidc import BINDING_COOKIE
from apex.identity.repository import (
    ApiKeyRepository,
    MemberRepository,
    MembershipRepository,
    UserRepository,
)
from apex.identity.schemas import (
    ApiKeyOut,
    InvitationOut,
    LoginRequest,
    MailSent,
    MemberOut,
    MembershipOut,
    NewApiKey,
    NewApiKeyOut,
    NewInvitation,
    NewInvitationOut,
    OrganizationOut,
    OrganizationUpdate,
    PasswordResetConfirm,
    PasswordResetRequest,
    ProviderOut,
    RefreshRequest,
    RoleChange,
    SessionInfo,
    SessionOut,
    SessionToken,
    SignupRequest,
    SwitchOrganization,
    TokenIn,
    TokenResponse,
    UserOut,
)
from apex.identity.sessions import COOKIE, LIVE_TOKENS_PER_SESSION, BrowserSession, TooManyTokens
from apex.identity.tokens import issue_access_token
from apex.kit.deps import SessionDep
from apex.kit.digest import sha256_hex
from apex.kit.error_handlers import error_response
from apex.kit.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    RateLimited,
    Unauthorized,
)
from apex.kit.mail import send_after_commit

router = APIRouter(prefix="/api/v1", tags=["identity"])


async def _token_pair(
    request: Request,
    session: AsyncSession,
    user_id: uuid.UUID,
    organization_id: uuid.UUID,
    family_id: uuid.UUID | None = None,
    refresh_token: str | None = None,
) -> TokenResponse:
    state = request.app.state
    settings, now = state.settings, state.clock.now()
    if refresh_token is None:
        refresh_token, row = await refresh.issue(
            session,
            user_id=user_id,
            organization_id=organization_id,
            family_id=family_id,
            now=now,
            ttl_seconds=settings.refresh_token_ttl_seconds,
        )
        family_id = row.family_id
    access = issue_access_token(
        state.keyring,
        user_id=user_id,
        organization_id=organization_id,
        family_id=family_id,
        now=now,
        ttl_seconds=settings.access_token_ttl_seconds,
    )
    return TokenResponse(
        access_token=access,
        refresh_token=refresh_token,
        expires_in=settings.access_token_ttl_seconds,
        user_id=user_id,
        organization_id=organization_id,
    )


SENT = "Check your mail: it says how to go on."


@router.post("/auth/signup", status_code=202, response_model=MailSent)
async def signup(body: SignupRequest, request: Request, session: SessionDep) -> MailSent:
    """Ask for an account with its own organisation on the Free tier. The same answer
    whether or not the address has an account: a new address is mailed a verification
    token (the account is created by `POST /auth/verify`), a known one a note to sign in."""
    state = request.app.state
    now = state.clock.now()
    token = await verification.request_signup(session, body, now)
    purpose = TokenPurpose.VERIFY_SIGNUP
    if await state.mail_limit.allows(purpose, body.email, now.timestamp()):
        if token is None:
            subject, text = "You already have an Apex account", verification.ALREADY_REGISTERED_TEXT
        else:
            app_url = _app_url(request)
            subject = "Confirm your address for Apex"
            text = verification.verification_text(token, app_url)
        send_after_commit(session, state.mailer, body.email, subject, text)
    return MailSent(email=body.email, detail=SENT)


@router.post("/auth/verify", status_code=201, response_model=TokenResponse)
async def verify(body: TokenIn, request: Request, session: SessionDep) -> TokenResponse:
    """Spend a sign-up's verification token: the account, its organisation (Free), its
    owner membership and welcome thread are created in one transaction; returns tokens."""
    state = request.app.state
    user, organization = await verification.verify_signup(
        session, body.token, state.clock.now(), state.failpoints
    )
    return await _token_pair(request, session, user.id, organization.id)


@router.post("/auth/password-reset", status_code=202, response_model=MailSent)
async def request_password_reset(
    body: PasswordResetRequest, request: Request, session: SessionDep
) -> MailSent:
    """Mail a single-use reset token to the address if an active account uses it. The same
    answer either way."""
    state = request.app.state
    now = state.clock.now()
    token = await verification.request_reset(session, body.email, now)
    purpose = TokenPurpose.RESET_PASSWORD
    if token is not None and await state.mail_limit.allows(purpose, body.email, now.timestamp()):
        text = verification.reset_text(token, _app_url(request))
        send_after_commit(session, state.mailer, body.email, "Reset your Apex password", text)
    return MailSent(email=body.email, detail=SENT)


@router.post("/auth/password-reset/confirm", status_code=204)
async def confirm_password_reset(
    body: PasswordResetConfirm, request: Request, session: SessionDep
) -> None:
    """Set a new password with a reset token. Every session and refresh token of the
    account ends, and its sign-in delays are cleared."""
    state = request.app.state
    now = state.clock.now()
    user = await verification.reset_password(session, body.token, body.password, now)
    await refresh.revoke_user(session, user.id, now)
    await state.sessions.revoke_all(user.id)
    await state.login_throttle.cleared(user.email)


def client_address(request: Request) -> str:
    """The client's address (uvicorn puts the X-Forwarded-For of a trusted proxy here)."""
    return request.client.host if request.client else "unknown"


@router.post("/auth/token", response_model=TokenResponse)
async def login(body: LoginRequest, request: Request, session: SessionDep) -> TokenResponse:
    """Email and password → tokens. Repeated failures slow further attempts (429 with
    Retry-After), the same whether or not the account exists."""
    throttle = request.app.state.login_throttle
    address, now = client_address(request), request.app.state.clock.now().timestamp()
    try:
        await throttle.before_attempt(body.email, address, now)
    except RateLimited:
        await _audit_refused_login(request, body.email, "auth.throttled")
        raise
    try:
        user, organization_id = await service.authenticate(
            session, body.email, body.password, body.organization_id
        )
    except Unauthorized:
        await throttle.failed(body.email, address, now)
        await _audit_refused_login(request, body.email, "auth.login_failed")
        raise
    await throttle.succeeded(body.email, address)
    await audit.record(
        session, "auth.login", now=request.app.state.clock.now(),
        organization_id=organization_id, actor_id=user.id, method="password",
    )  # fmt: skip
    return await _token_pair(request, session, user.id, organization_id)


async def _audit_refused_login(request: Request, email: str, action: str) -> None:
    """In the trail of every organisation the account belongs to (the request's own
    transaction rolls back with the refusal): the owners see attempts on their members.
    An address with no account goes to the installation's trail, as a digest."""
    state = request.app.state
    async with state.database.unit_of_work(primary=True) as session:
        user = await UserRepository(session).get_by_email(email)
        organizations = (
            [m.organization_id for m in await MembershipRepository(session).for_user(user.id)]
            if user is not None
            else [None]
        )
        unknown = None if user is not None else sha256_hex(email.lower())
        for organization_id in organizations:
            await audit.record(
                session, action, now=state.clock.now(), organization_id=organization_id,
                actor_id=None if user is None else user.id,
                address=client_address(request), email_sha256=unknown,
            )  # fmt: skip


@router.post(
    "/auth/refresh", response_model=TokenResponse, responses={401: {"description": "Refused"}}
)
async def refresh_tokens(
    body: RefreshRequest, request: Request, session: SessionDep
) -> TokenResponse | JSONResponse:
    """Trade a refresh token for a new pair. Each refresh token works once: presenting a used
    one revokes every token of its family (someone else has a copy)."""
    now = request.app.state.clock.now()
    ttl = request.app.state.settings.refresh_token_ttl_seconds
    rotation = await refresh.rotate(session, body.refresh_token, now=now, ttl_seconds=ttl)
    if rotation.token is None or rotation.row is None:
        detail = (
            "This refresh token was already used: its whole family is now revoked."
            if rotation.reused
            else "Invalid, expired or revoked refresh token."
        )
        # Returned, not raised: the family revocation must commit with this answer.
        return error_response(Unauthorized(detail))
    row = rotation.row
    return await _token_pair(
        request, session, row.user_id, row.organization_id, row.family_id, rotation.token
    )


@router.post("/auth/logout", status_code=204)
async def logout(
    principal: CurrentPerson, request: Request, response: Response, session: SessionDep
) -> None:
    """Revoke this access token on every instance, and its refresh token family; with a
    session cookie, end that browser session."""
    state = request.app.state
    if principal.session is not None:
        await state.sessions.revoke(principal.user_id, principal.session.public_id)
        response.delete_cookie(COOKIE)
        return
    claims = principal.claims
    if claims is None:  # unreachable: a person has a token or a session
        raise BadRequest("Nothing to log out.")
    await state.denylist.add(claims.token_id, claims.expires_at, state.clock.now())
    if claims.family_id is not None:
        await refresh.revoke_family(session, uuid.UUID(claims.family_id), state.clock.now())


@router.post("/auth/session", response_model=SessionOut)
async def start_session(
    body: LoginRequest, request: Request, response: Response, session: SessionDep
) -> SessionOut:
    """Log in a browser: sets the session cookie (a new id every time) and returns the CSRF
    token to send with state-changing requests."""
    state = request.app.state
    user, organization_id = await service.authenticate(
        session, body.email, body.password, body.organization_id
    )
    browser = await state.sessions.create(
        user_id=user.id,
        organization_id=organization_id,
        user_agent=request.headers.get("user-agent", ""),
        now=state.clock.now(),
        replacing=request.cookies.get(COOKIE),
    )
    await audit.record(
        session, "auth.login", now=state.clock.now(), organization_id=organization_id,
        actor_id=user.id, method="browser_session",
    )  # fmt: skip
    _set_session_cookie(request, response, browser.id)
    return _session_out(browser)


# A browser session's WebSocket token lives this long at most: a session that is logged out
# or revoked denies its tokens at once; one that lapses (idle, absolute timeout) leaves its
# socket open no longer than this.
SESSION_TOKEN_TTL_SECONDS = 300


def _app_url(request: Request) -> str:
    """Where people open the browser app (links in mails)."""
    return str(request.app.state.settings.public_url).rstrip("/")


def _session_out(browser: BrowserSession) -> SessionOut:
    return SessionOut(
        id=browser.public_id,
        user_id=browser.user_id,
        organization_id=browser.organization_id,
        csrf_token=browser.csrf_token,
    )


def _browser_session(principal: Principal) -> BrowserSession:
    if principal.session is None:
        raise Unauthorized("This needs a browser session: sign in at POST /api/v1/auth/session.")
    return principal.session


@router.get("/auth/session", response_model=SessionOut)
async def current_session(principal: CurrentPerson) -> SessionOut:
    """The browser session the cookie names, with its CSRF token: how the app picks up a
    session after a reload or an OpenID Connect login (a page of another origin cannot
    read this answer)."""
    browser = _browser_session(principal)
    return _session_out(browser)


@router.post("/auth/session/switch", response_model=SessionOut)
async def switch_organization(
    body: SwitchOrganization,
    principal: CurrentPerson,
    request: Request,
    response: Response,
    session: SessionDep,
) -> SessionOut:
    """Act for another organisation you belong to: a new browser session (new cookie, new
    CSRF token) replaces this one; no password again, the person is the same."""
    memberships = await MembershipRepository(session).for_user(principal.user_id)
    if body.organization_id not in {m.organization_id for m in memberships}:
        raise Forbidden("You are not a member of that organisation.", field="organization_id")
    browser = _browser_session(principal)
    state = request.app.state
    switched = await state.sessions.create(
        user_id=browser.user_id,
        organization_id=body.organization_id,
        user_agent=request.headers.get("user-agent", ""),
        now=state.clock.now(),
        replacing=request.cookies.get(COOKIE),
    )
    _set_session_cookie(request, response, switched.id)
    return _session_out(switched)


@router.post("/auth/session/token", response_model=SessionToken)
async def session_token(principal: CurrentPerson, request: Request) -> SessionToken:
    """An access token for this browser session's WebSocket (CSRF-checked like any change)."""
    browser = _browser_session(principal)
    state = request.app.state
    ttl = min(SESSION_TOKEN_TTL_SECONDS, state.settings.access_token_ttl_seconds)
    now, token_id = state.clock.now(), uuid.uuid4().hex
    token = issue_access_token(
        state.keyring,
        user_id=browser.user_id,
        organization_id=browser.organization_id,
        family_id=None,
        now=now,
        ttl_seconds=ttl,
        token_id=token_id,
    )
    try:  # remembered before it is handed out: a logout always reaches it
        await state.sessions.remember_token(
            browser.public_id, token_id, now + timedelta(seconds=ttl)
        )
    except TooManyTokens as full:
        raise RateLimited(
            f"This session already holds {LIVE_TOKENS_PER_SESSION} live WebSocket tokens; "
            "one expires shortly.",
            retry_after=full.retry_after,
        ) from None
    return SessionToken(access_token=token, expires_in=ttl)


def _navigation(request: Request) -> bool:
    """A browser following a redirect (it asks for a page), not an API client."""
    return "text/html" in request.headers.get("accept", "")


def _set_session_cookie(request: Request, response: Response, session_id: str) -> None:
    settings = request.app.state.settings
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=settings.session_absolute_seconds,
        httponly=True,
        secure=settings.session_cookie_secure,
        samesite="lax",
    )


@router.get("/auth/providers", response_model=list[ProviderOut])
async def identity_providers(request: Request) -> list[ProviderOut]:
    """The OpenID Connect providers this installation signs in with (the sign-in page's
    buttons); public, like the login page that shows them."""
    return [
        ProviderOut(name=p.name, display_name=p.name.replace("-", " ").title())
        for p in request.app.state.settings.oidc_providers
    ]


@router.get("/auth/oidc/{provider}/login", status_code=302, response_class=RedirectResponse)
async def oidc_login(provider: str, request: Request) -> RedirectResponse:
    """Start an OpenID Connect login: redirects the browser to the identity provider."""
    url, binding = await request.app.state.oidc.begin(provider)
    response = RedirectResponse(url, status_code=302)
    response.set_cookie(
        BINDING_COOKIE,
        binding,
        max_age=600,
        httponly=True,
        secure=request.app.state.settings.session_cookie_secure,
        samesite="lax",
    )
    return response


@router.get(
    "/auth/oidc/{provider}/callback",
    response_model=SessionOut,
    responses={303: {"description": "A browser's navigation: back to the app, signed in."}},
)
async def oidc_callback(
    provider: str,
    request: Request,
    response: Response,
    session: SessionDep,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
) -> SessionOut | RedirectResponse:
    """Finish the login: verify the provider's answer, then open a browser session (a
    browser is sent back to the app; an API client gets the session as JSON)."""
    request.app.state.oidc.provider(provider)  # 404 for an unknown one, before anything else
    if error or not code or not state:
        raise Unauthorized(
            f"The identity provider did not complete the login ({error or 'no code'})."
        )
    identity = await request.app.state.oidc.finish(
        provider, code=code, state=state, binding=request.cookies.get(BINDING_COOKIE)
    )
    user, organization_id = await service.account_for_identity(
        session, identity.email, identity.name
    )
    apex = request.app.state
    browser = await apex.sessions.create(
        user_id=user.id,
        organization_id=organization_id,
        user_agent=request.headers.get("user-agent", ""),
        now=apex.clock.now(),
        replacing=request.cookies.get(COOKIE),
    )
    if _navigation(request):  # the browser app: back to it, which reads the session
        redirect = RedirectResponse("/#/", status_code=303)
        _set_session_cookie(request, redirect, browser.id)
        redirect.delete_cookie(BINDING_COOKIE)
        return redirect
    _set_session_cookie(request, response, browser.id)
    response.delete_cookie(BINDING_COOKIE)
    return _session_out(browser)


@router.get("/auth/sessions", response_model=list[SessionInfo])
async def list_sessions(principal: CurrentPerson, request: Request) -> list[SessionInfo]:
    """Your browser sessions, on every device."""
    rows = await request.app.state.sessions.list(principal.user_id)
    return [SessionInfo.model_validate(row) for row in rows]


@router.delete("/auth/sessions/{session_id}", status_code=204)
async def revoke_session(session_id: str, principal: CurrentPerson, request: Request) -> None:
    if not await request.app.state.sessions.revoke(principal.user_id, session_id):
        raise NotFound("No such session.")


@router.post("/auth/logout-everywhere", status_code=204)
async def logout_everywhere(
    principal: CurrentPerson, request: Request, response: Response, session: SessionDep
) -> None:
    """End every browser session of yours and revoke all your refresh tokens."""
    state = request.app.state
    await state.sessions.revoke_all(principal.user_id)
    await refresh.revoke_user(session, principal.user_id, state.clock.now())
    if principal.claims is not None:
        await state.denylist.add(
            principal.claims.token_id, principal.claims.expires_at, state.clock.now()
        )
    response.delete_cookie(COOKIE)


@router.get("/users/me", response_model=UserOut)
async def me(principal: CurrentPerson, session: SessionDep) -> UserOut:
    user = await UserRepository(session).get_or_raise(principal.user_id)
    memberships = await MembershipRepository(session).with_organization_names(user.id)
    return UserOut(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        memberships=[
            MembershipOut(organization_id=org_id, organization_name=name, role=role)
            for org_id, name, role in memberships
        ],
    )


@router.get("/organizations/current", response_model=OrganizationOut)
async def current_organization(
    principal: Annotated[Principal, RequirePermission("org:read")],
    session: SessionDep,
    cache: CacheDep,
) -> OrganizationOut:
    view = await service.organization_view(session, cache, principal.organization_id)
    if view is None:
        raise NotFound("Your organisation no longer exists.")
    return OrganizationOut.model_validate(view)


@router.patch("/organizations/current", response_model=OrganizationOut)
async def update_organization(
    body: OrganizationUpdate,
    principal: Annotated[Principal, RequirePermission("org:manage")],
    session: SessionDep,
) -> OrganizationOut:
    org = await service.rename_organization(session, principal.organization_id, body.name)
    return OrganizationOut.model_validate(org)


MEMBERS = "/organizations/current/members"


@router.get(MEMBERS, response_model=list[MemberOut])
async def list_members(
    principal: Annotated[Principal, RequirePermission("org:read")], session: SessionDep
) -> list[MemberOut]:
    rows = await MemberRepository(session, principal.organization_id).all()
    return [MemberOut(user_id=m.user_id, email=email, role=Role(m.role)) for m, email in rows]


@router.patch(MEMBERS + "/{user_id}", response_model=MemberOut)
async def change_member_role(
    user_id: uuid.UUID,
    body: RoleChange,
    request: Request,
    principal: Annotated[Principal, RequirePermission("members:manage")],
    session: SessionDep,
) -> MemberOut:
    membership = await service.change_role(
        session,
        principal.organization_id,
        actor_role=principal.role,
        user_id=user_id,
        role=body.role,
    )
    await audit.record(
        session, "member.role_changed", now=request.app.state.clock.now(),
        organization_id=principal.organization_id, actor_id=principal.user_id,
        target=("user", user_id), role=membership.role,
    )  # fmt: skip
    user = await UserRepository(session).get_or_raise(user_id)
    return MemberOut(user_id=user_id, email=user.email, role=Role(membership.role))


@router.delete(MEMBERS + "/{user_id}", status_code=204)
async def remove_member(
    user_id: uuid.UUID,
    request: Request,
    principal: Annotated[Principal, RequirePermission("members:manage")],
    session: SessionDep,
) -> None:
    await service.remove_member(
        session, principal.organization_id, actor_role=principal.role, user_id=user_id
    )
    await audit.record(
        session, "member.removed", now=request.app.state.clock.now(),
        organization_id=principal.organization_id, actor_id=principal.user_id,
        target=("user", user_id),
    )  # fmt: skip


INVITATIONS = "/organizations/current/invitations"


@router.get(INVITATIONS, response_model=list[InvitationOut])
async def list_invitations(
    request: Request,
    principal: Annotated[Principal, RequirePermission("org:read")],
    session: SessionDep,
) -> list[InvitationOut]:
    pending = await invitations.InvitationRepository(session, principal.organization_id).pending(
        request.app.state.clock.now()
    )
    return [InvitationOut.model_validate(invitation) for invitation in pending]


@router.post(INVITATIONS, status_code=201, response_model=NewInvitationOut)
async def invite(
    body: NewInvitation,
    request: Request,
    principal: Annotated[Principal, RequirePermission("members:manage")],
    session: SessionDep,
    cache: CacheDep,
) -> NewInvitationOut:
    """Invite an email address (with or without an account yet): the invitee is mailed the
    token once the invitation is stored (it is also in this answer, once)."""
    service.check_may_grant(principal.role, body.role)
    invitation, token = await invitations.invite(
        session,
        principal.organization_id,
        invited_by=principal.user_id,
        email=body.email,
        role=body.role,
        now=request.app.state.clock.now(),
    )
    await audit.record(
        session, "invitation.created", now=request.app.state.clock.now(),
        organization_id=principal.organization_id, actor_id=principal.user_id,
        target=("invitation", invitation.id), email=invitation.email, role=invitation.role,
    )  # fmt: skip
    organization = await service.organization_view(session, cache, principal.organization_id)
    name = organization["name"] if organization else "an organisation"
    send_after_commit(
        session,
        request.app.state.mailer,
        invitation.email,
        f"You are invited to {name} on Apex",
        invitations.invitation_text(name, invitation.role, token, invitation.expires_at),
    )
    return NewInvitationOut(**InvitationOut.model_validate(invitation).model_dump(), token=token)


@router.delete(INVITATIONS + "/{invitation_id}", status_code=204)
async def revoke_invitation(
    invitation_id: uuid.UUID,
    request: Request,
    principal: Annotated[Principal, RequirePermission("members:manage")],
    session: SessionDep,
) -> None:
    await invitations.revoke(
        session, principal.organization_id, invitation_id, request.app.state.clock.now()
    )
    await audit.record(
        session, "invitation.revoked", now=request.app.state.clock.now(),
        organization_id=principal.organization_id, actor_id=principal.user_id,
        target=("invitation", invitation_id),
    )  # fmt: skip


@router.post("/invitations/accept", response_model=MemberOut)
async def accept_invitation(
    body: TokenIn, request: Request, principal: CurrentPerson, session: SessionDep
) -> MemberOut:
    """Join the inviting organisation, as the account the invitation was addressed to."""
    if principal.key_permissions is not None:
        raise Forbidden("API keys cannot accept invitations: log in as the invited person.")
    membership = await invitations.accept(
        session, body.token, user_id=principal.user_id, now=request.app.state.clock.now()
    )
    await audit.record(
        session, "invitation.accepted", now=request.app.state.clock.now(),
        organization_id=membership.organization_id, actor_id=principal.user_id,
        target=("user", principal.user_id), role=membership.role,
    )  # fmt: skip
    user = await UserRepository(session).get_or_raise(principal.user_id)
    return MemberOut(user_id=user.id, email=user.email, role=Role(membership.role))


API_KEYS = "/organizations/current/api-keys"


@router.get(API_KEYS, response_model=list[ApiKeyOut])
async def list_api_keys(
    principal: Annotated[Principal, RequirePermission("org:read")], session: SessionDep
) -> list[ApiKeyOut]:
    keys = await ApiKeyRepository(session, principal.organization_id).all()
    return [ApiKeyOut.model_validate(key) for key in keys]


@router.post(API_KEYS, status_code=201, response_model=NewApiKeyOut)
async def create_api_key(
    body: NewApiKey,
    request: Request,
    principal: Annotated[Principal, RequirePermission("org:manage", person_only=True)],
    session: SessionDep,
) -> NewApiKeyOut:
    """Create a key limited to `permissions`. The key is in this answer only: store it now."""
    key, secret = await apikeys.create(
        session,
        organization_id=principal.organization_id,
        created_by=principal.user_id,
        creator_may=principal.may,
        name=body.name,
        permissions=body.permissions,
    )
    await audit.record(
        session, "api_key.created", now=request.app.state.clock.now(),
        organization_id=principal.organization_id, actor_id=principal.user_id,
        target=("api_key", key.id), name=key.name, permissions=sorted(body.permissions),
    )  # fmt: skip
    return NewApiKeyOut(**ApiKeyOut.model_validate(key).model_dump(), key=secret)


@router.delete(API_KEYS + "/{key_id}", status_code=204)
async def revoke_api_key(
    key_id: uuid.UUID,
    request: Request,
    principal: Annotated[Principal, RequirePermission("org:manage")],
    session: SessionDep,
) -> None:
    await apikeys.revoke(session, principal.organization_id, key_id, request.app.state.clock.now())
    await audit.record(
        session, "api_key.revoked", now=request.app.state.clock.now(),
        organization_id=principal.organization_id, actor_id=principal.user_id,
        target=("api_key", key_id),
    )  # fmt: skip


well_known = APIRouter(tags=["identity"])


@well_known.get("/.well-known/jwks.json")
async def jwks(request: Request) -> dict[str, Any]:
    """The public keys that verify Apex's access tokens (current and rotated-out ones)."""
    keys: dict[str, Any] = request.app.state.keyring.jwks()
    return keys
