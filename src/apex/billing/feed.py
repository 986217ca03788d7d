"""The live revenue feed: every subscription change, published on the operators' channel
once its transaction has committed (by whichever process made it: a server, the worker,
`apex billing cycle`), for an operator's WebSocket connection that follows it."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from apex.billing.models import SubscriptionEvent
from apex.billing.money import dollars
from apex.kit.channels import Channels, envelope

REVENUE_CHANNEL = "operator:revenue"
_PENDING = "revenue_events"


def publish_after_commit(session: AsyncSession, event: SubscriptionEvent) -> None:
    session.info.setdefault(_PENDING, []).append(
        envelope(
            "revenue_event",
            {
                "organization_id": str(event.organization_id),
                "kind": event.kind,
                "from_tier": event.from_tier,
                "to_tier": event.to_tier,
                "status": event.status,
                "mrr_before_usd": str(dollars(event.mrr_before_cents)),
                "mrr_after_usd": str(dollars(event.mrr_after_cents)),
                "mrr_change_usd": str(dollars(event.mrr_after_cents - event.mrr_before_cents)),
                "occurred_at": event.occurred_at.isoformat(),
            },
            event.occurred_at,
        )
    )


class RevenueFeed:
    """The database's after-commit hook that publishes what `publish_after_commit` noted."""

    def __init__(self, channels: Channels) -> None:
        self.channels = channels

    async def after_commit(self, info: dict[str, Any]) -> None:
        for frame in info.pop(_PENDING, []):
            await self.channels.publish(REVENUE_CHANNEL, frame)
