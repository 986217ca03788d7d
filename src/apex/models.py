"""Every domain's tables, imported once so `Base.metadata` describes the whole schema.

Alembic's environment and `alembic check` read the metadata from here: a new domain adds
its `models` import below.
"""

from apex.agents.models import AgentRun, AgentStep
from apex.alerts.models import AlertDelivery, AlertEvent, AlertRule
from apex.audit.models import AuditRecord
from apex.billing.models import (
    GatewayEvent,
    Invoice,
    InvoiceLine,
    Payment,
    Refund,
    Subscription,
    SubscriptionEvent,
)
from apex.chat.models import Message, Thread
from apex.findings.models import Finding, SavingsMeasurement
from apex.identity.models import (
    ApiKey,
    Invitation,
    Membership,
    Organization,
    RefreshToken,
    SigningKey,
    User,
)
from apex.kit.models import Base
from apex.kit.outbox import OutboxMessage
from apex.observability.models import TelemetryPoint
from apex.usage.models import PriceOverride, UsageRecord

metadata = Base.metadata

__all__ = [
    "AgentRun",
    "AgentStep",
    "AlertDelivery",
    "AlertEvent",
    "AlertRule",
    "ApiKey",
    "AuditRecord",
    "Base",
    "Finding",
    "GatewayEvent",
    "Invitation",
    "Invoice",
    "InvoiceLine",
    "Membership",
    "Message",
    "Organization",
    "OutboxMessage",
    "Payment",
    "PriceOverride",
    "RefreshToken",
    "Refund",
    "SavingsMeasurement",
    "SigningKey",
    "Subscription",
    "SubscriptionEvent",
    "TelemetryPoint",
    "Thread",
    "UsageRecord",
    "User",
    "metadata",
]
