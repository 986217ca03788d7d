"""FastAPI dependencies every domain's endpoints share (the identity ones are in
`apex.identity.deps`). Apart from `apex.kit.db`, so that code outside a request (the CLI,
the worker) uses the database without importing the web framework."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from apex.kit.db import Database


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    database: Database = request.app.state.database
    async with database.unit_of_work() as session:
        yield session


# scope="function": commit (or roll back) before the response is sent, so a client that
# got a 2xx can read its write from any instance, and a failed commit is an error response.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
