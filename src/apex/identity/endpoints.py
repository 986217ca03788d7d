from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Request

from apex.identity import service
from apex.identity.deps import CacheDep, CurrentPrincipal, Principal, RequirePermission
from apex.identity.models import User
from apex.identity.repository import MembershipRepository, UserRepository
from apex.identity.schemas import (
    LoginRequest,
    MembershipOut,
    OrganizationOut,
    OrganizationUpdate,
    SignupRequest,
    TokenResponse,
    UserOut,
)
from apex.identity.tokens import issue_access_token
from apex.kit.db import SessionDep
from apex.kit.errors import NotFound

router = APIRouter(prefix="/api/v1", tags=["identity"])


def _token(request: Request, user: User, organization_id: uuid.UUID) -> TokenResponse:
    settings = request.app.state.settings
    ttl = settings.access_token_ttl_seconds
    token = issue_access_token(
        secret=settings.signing_secret,
        user_id=user.id,
        organization_id=organization_id,
        now=request.app.state.clock.now(),
        ttl_seconds=ttl,
    )
    return TokenResponse(
        access_token=token, expires_in=ttl, user_id=user.id, organization_id=organization_id
    )


@router.post("/auth/signup", status_code=201, response_model=TokenResponse)
async def signup(body: SignupRequest, request: Request, session: SessionDep) -> TokenResponse:
    """Create an account with its own organisation on the Free tier."""
    user, organization = await service.signup(session, body, request.app.state.failpoints)
    return _token(request, user, organization.id)


@router.post("/auth/token", response_model=TokenResponse)
async def login(body: LoginRequest, request: Request, session: SessionDep) -> TokenResponse:
    user, organization_id = await service.authenticate(session, body.email, body.password)
    return _token(request, user, organization_id)


@router.get("/users/me", response_model=UserOut)
async def me(principal: CurrentPrincipal, session: SessionDep) -> UserOut:
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
