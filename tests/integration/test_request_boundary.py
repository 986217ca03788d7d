"""The request boundary owns the transaction, and every error has the documented body.

The routes below are a thin trigger mounted on the real application: what is under test is
Apex's session dependency, repository base, error translation and handlers, on PostgreSQL
and on SQLite.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from apex.app import create_app
from apex.identity.models import Organization
from apex.kit.db import call_after_commit, call_after_rollback
from apex.kit.deps import SessionDep
from apex.kit.errors import RateLimited
from apex.kit.repository import Repository
from apex.settings import Settings


class OrganizationRepository(Repository[Organization]):
    model = Organization


class NewOrganization(BaseModel):
    name: str = Field(min_length=1)
    slug: str = Field(pattern=r"^[a-z0-9-]+$")
    fail_after_flush: bool = False


router = APIRouter(prefix="/t")


@router.post("/orgs", status_code=201)
async def create_orgs(
    body: list[NewOrganization], session: SessionDep, request: Request
) -> dict[str, int]:
    repository = OrganizationRepository(session)
    app = request.app

    async def announce() -> None:  # a side effect outside the transaction: sees it committed
        app.state.announced.append(await _count(app))

    async def undo() -> None:  # what was done outside the transaction: sees it rolled back
        app.state.undone.append(await _count(app))

    call_after_commit(session, announce)
    call_after_rollback(session, undo)
    for item in body:
        await repository.add(Organization(name=item.name, slug=item.slug))
        if item.fail_after_flush:
            raise RuntimeError("boom after flush")
    return {"created": len(body)}


@router.get("/orgs/{org_id}")
async def get_org(org_id: uuid.UUID, session: SessionDep) -> dict[str, str]:
    org = await OrganizationRepository(session).get_or_raise(org_id)
    return {"slug": org.slug, "tier": org.tier}


@router.get("/limited")
async def limited() -> None:
    raise RateLimited("Too many requests for the Free tier.", retry_after=42.4, upgrade_to="early")


@pytest.fixture(params=["postgresql", "sqlite"])
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FastAPI]:
    if request.param == "postgresql":
        url = request.getfixturevalue("database_url")
        settings = Settings(database_url=url, environment="test")
    else:
        settings = Settings(data_dir=tmp_path, environment="test")
    application = create_app(settings)
    application.include_router(router)
    application.state.announced = []
    application.state.undone = []
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://apex.test") as http:
        yield http


async def _count(app: FastAPI) -> int:
    async with app.state.database.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(Organization)) or 0)


async def test_success_commits_before_the_response(app: FastAPI, client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/t/orgs", json=[{"name": "A", "slug": "a"}, {"name": "B", "slug": "b"}]
    )
    assert response.status_code == 201
    assert response.json() == {"created": 2}
    assert await _count(app) == 2
    assert app.state.announced == [2]  # called once, after the commit
    assert app.state.undone == []


async def test_error_after_flush_rolls_everything_back(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        "/t/orgs",
        json=[{"name": "A", "slug": "a"}, {"name": "B", "slug": "b", "fail_after_flush": True}],
    )
    assert response.status_code == 500
    # The ids to report it with, in the body and the headers, as for any other response.
    request_id, trace_id = response.headers["x-request-id"], response.headers["x-trace-id"]
    assert len(trace_id) == 32
    assert response.json() == {
        "error": "InternalError",
        "detail": "An unexpected error occurred; it has been logged.",
        "request_id": request_id,
        "trace_id": trace_id,
    }
    assert "boom" not in response.text  # internals never leak to the client
    assert await _count(app) == 0
    assert app.state.announced == []  # never called for a rolled-back transaction
    assert app.state.undone == [0]  # called once, after the rollback


async def test_constraint_violation_is_a_conflict_and_keeps_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    assert (await client.post("/t/orgs", json=[{"name": "A", "slug": "taken"}])).status_code == 201
    response = await client.post(
        "/t/orgs", json=[{"name": "B", "slug": "fresh"}, {"name": "C", "slug": "taken"}]
    )
    assert response.status_code == 409
    body = response.json()
    assert body["error"] == "Conflict"
    assert body["detail"] == "The change conflicts with existing data."
    assert await _count(app) == 1  # "fresh" was rolled back with the failed one
    assert app.state.announced == [1]  # the failed commit announced nothing
    assert app.state.undone == [1]  # and undid its side effects


def _ids(response: httpx.Response) -> dict[str, str]:
    """Every error body carries the ids a report is found by: the same as the headers."""
    return {
        "request_id": response.headers["x-request-id"],
        "trace_id": response.headers["x-trace-id"],
    }


async def test_domain_error_has_the_documented_body(client: httpx.AsyncClient) -> None:
    missing = uuid.uuid4()
    response = await client.get(f"/t/orgs/{missing}")
    assert response.status_code == 404
    assert response.json() == {
        "error": "NotFound",
        "detail": f"Organization {missing} was not found.",
        **_ids(response),
    }

    response = await client.get("/t/limited")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "42"
    assert response.json() == {
        "error": "RateLimited",
        "detail": "Too many requests for the Free tier.",
        "retry_after": 42.4,
        "upgrade_to": "early",
        **_ids(response),
    }


async def test_validation_error_names_each_field(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/t/orgs", json=[{"name": "", "slug": "ok"}, {"name": "x", "slug": "Bad Slug!"}]
    )
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "ValidationFailed"
    assert [e["field"] for e in body["errors"]] == ["[0].name", "[1].slug"]
    assert "[0].name" in body["detail"]
    assert "[1].slug" in body["detail"]

    response = await client.get("/t/orgs/not-a-uuid")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "org_id"


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    # Every error body carries the ids a report is found by, the same as the headers.
    ids = {
        "request_id": response.headers["x-request-id"],
        "trace_id": response.headers["x-trace-id"],
    }
    assert response.json() == {"error": "NotFound", "detail": "Not Found", **ids}
    response = await client.delete("/health/live")
    assert response.status_code == 405
    assert response.json()["error"] == "MethodNotAllowed"


async def test_every_response_carries_a_request_id(client: httpx.AsyncClient) -> None:
    echoed = await client.get("/health/live", headers={"X-Request-ID": "req-123"})
    assert echoed.headers["x-request-id"] == "req-123"
    generated = await client.get("/health/live", headers={"X-Request-ID": "bad id\\n"})
    assert generated.headers["x-request-id"] != "bad id\\n"
    assert len(generated.headers["x-request-id"]) == 32


async def test_cors_allows_only_the_configured_origins(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, cors_origins=["https://app.example.test"]))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://apex.test") as http,
    ):
        preflight = {
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "X-CSRF-Token",
        }
        allowed = await http.options(
            "/health/live", headers={"Origin": "https://app.example.test", **preflight}
        )
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.test"
        assert allowed.headers["access-control-allow-credentials"] == "true"
        foreign = await http.options(
            "/health/live", headers={"Origin": "https://evil.example", **preflight}
        )
        assert "access-control-allow-origin" not in foreign.headers
