"""The plan catalogue (BRIEF §4b): every tier limit is read from here, nowhere else."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from apex.identity.models import Tier

UNLIMITED = None

ALL_ANALYSES = frozenset(
    {
        "spend_breakdown",
        "error_waste",
        "model_right_sizing",
        "prompt_caching",
        "response_caching",
        "batch_api",
        "prompt_trimming",
    }
)


@dataclass(frozen=True, slots=True)
class Plan:
    tier: Tier
    base_fee_usd: Decimal
    savings_share: Decimal
    records_per_month: int | None
    agent_runs_per_day: int | None
    concurrent_agent_runs: int
    api_requests_per_hour: int | None
    websocket_messages_per_minute: int
    seats: int | None
    retention_days: int
    analyses: frozenset[str]
    trial_days: int
    # Findings shown in full in a report; the rest are counted and valued (None: all).
    findings_shown: int | None = None
    # Metered: the tokens of the usage records Apex analyses (every category), billed for
    # each period in arrears from the first token (the base fee is the platform).
    analysed_tokens_per_million_usd: Decimal = Decimal(0)
    # Metered: each agent run that finished with a report, billed in arrears.
    agent_run_usd: Decimal = Decimal(0)

    @property
    def next_tier(self) -> Tier | None:
        order = list(Tier)
        index = order.index(self.tier)
        return order[index + 1] if index + 1 < len(order) else None


PLANS: dict[Tier, Plan] = {
    Tier.FREE: Plan(
        Tier.FREE, Decimal(0), Decimal(0), 100_000, 3, 1, 100, 10, 1, 30,
        ALL_ANALYSES, 0, findings_shown=1,
    ),
    Tier.EARLY: Plan(
        Tier.EARLY, Decimal(99), Decimal("0.15"), 5_000_000, 100, 2, 1_000, 100, 5, 180,
        ALL_ANALYSES, 14, analysed_tokens_per_million_usd=Decimal("0.50"),
        agent_run_usd=Decimal("0.20"),
    ),
    Tier.MID: Plan(
        Tier.MID, Decimal(499), Decimal("0.20"), 50_000_000, 1_000, 5, 10_000, 300, 25, 365,
        ALL_ANALYSES, 14, analysed_tokens_per_million_usd=Decimal("0.40"),
        agent_run_usd=Decimal("0.15"),
    ),
    Tier.ENTERPRISE: Plan(
        Tier.ENTERPRISE, Decimal(2500), Decimal("0.10"), UNLIMITED, UNLIMITED, 20, UNLIMITED,
        1_000, UNLIMITED, 7 * 365, ALL_ANALYSES, 0,
        analysed_tokens_per_million_usd=Decimal("0.25"), agent_run_usd=Decimal("0.10"),
    ),
}  # fmt: skip


# The catalogue on sale. A published catalogue is never edited: a price change is a new
# version added below, and a subscription keeps the prices of the version it was bought
# under (`subscriptions.catalogue_version`) until it changes plan or starts again.
CATALOGUE_VERSION = "2026-11-26"
CATALOGUES: dict[str, dict[Tier, Plan]] = {CATALOGUE_VERSION: PLANS}


def plan_for(tier: str, version: str | None = None) -> Plan:
    """The plan of `tier` in the catalogue `version` (default: the one on sale)."""
    try:
        catalogue = CATALOGUES[version or CATALOGUE_VERSION]
    except KeyError:
        raise ValueError(f"unknown catalogue version {version!r}") from None
    return catalogue[Tier(tier)]


def upgrade_for_findings(plan: Plan) -> Plan | None:
    """The first tier above `plan` that shows every finding (the Free report's upsell)."""
    for tier in list(Tier)[list(Tier).index(plan.tier) + 1 :]:
        if PLANS[tier].findings_shown is None:
            return PLANS[tier]
    return None
