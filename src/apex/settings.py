"""Apex configuration: one `Settings` object, read from `APEX_*` environment variables.

With nothing set, Apex runs on the embedded default: a SQLite file under `APEX_DATA_DIR`,
an in-process Redis (fakeredis) and the offline LLM provider. Only the URLs differ in
production. `load_settings()` turns a validation failure into a `SettingsError` whose
message names each offending variable and says what it expects.
"""

from __future__ import annotations

import json
import re
import secrets
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

# The demo checkout's gateway (apex.billing.sandbox), served by Apex itself.
SANDBOX_PATH = "/sandbox/payments"
SANDBOX_API_KEY = "sk_test_apex_sandbox"
ENV_PREFIX = "APEX_"

_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}
_DATABASE_URL_HINT = (
    "a postgresql:// (or postgresql+asyncpg://) or sqlite:// URL, "
    "for example postgresql://apex:secret@db:5432/apex"
)


class OidcProviderConfig(BaseModel):
    """One OpenID Connect identity provider (Google, GitHub's OIDC, any issuer)."""

    name: str = Field(pattern=r"^[a-z0-9-]{1,40}$")
    issuer: str = Field(
        description="Its discovery document is at ISSUER/.well-known/openid-configuration."
    )
    client_id: str
    client_secret: SecretStr
    redirect_uri: str = Field(description="Apex's callback, exactly as registered at the provider.")
    scopes: str = "openid email profile"


class SettingsError(Exception):
    """Configuration is invalid; the message names every offending `APEX_*` variable."""


def normalise_database_url(value: str) -> str:
    """Parse a database URL and pin the async driver Apex uses for its backend."""
    try:
        url = make_url(value)
    except ArgumentError as exc:
        raise ValueError(f"expected {_DATABASE_URL_HINT}") from exc
    driver = _DRIVERS.get(url.drivername)
    if driver is None:
        raise ValueError(f"unsupported scheme {url.drivername!r}; expected {_DATABASE_URL_HINT}")
    if driver.startswith("postgresql") and not url.database:
        raise ValueError("the PostgreSQL URL names no database; expected .../<database>")
    return url.set(drivername=driver).render_as_string(hide_password=False)


def _split_list(value: Any) -> Any:
    """Accept a JSON list or a comma-separated string for list-valued variables."""
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            return json.loads(value)
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=None,
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Field(
        default=Path(".apex"),
        description="Where the embedded default keeps its SQLite file.",
    )

    # --- database -------------------------------------------------------------------------
    database_url: str | None = Field(
        default=None,
        description="Primary database. Unset: a SQLite file in APEX_DATA_DIR.",
    )
    database_replica_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Read replicas, comma-separated or a JSON list.",
    )
    db_pool_size: int = Field(default=10, ge=1, le=1000)
    db_max_overflow: int = Field(default=5, ge=0, le=1000)
    db_pool_timeout: float = Field(
        default=5.0, gt=0, description="Seconds to wait for a pooled connection."
    )
    db_pool_recycle: int = Field(
        default=1800, ge=-1, description="Seconds before a connection is replaced."
    )
    db_pool_pre_ping: bool = True
    db_pool_ping_idle_seconds: float = Field(
        default=1.0,
        ge=0,
        le=3600,
        description="With pre-ping on, ping only connections idle this long (0: every checkout).",
    )
    db_connect_timeout: float = Field(default=5.0, gt=0)
    db_command_timeout: float = Field(default=30.0, gt=0)
    db_echo: bool = False
    auto_migrate: bool | None = Field(
        default=None,
        description="Upgrade the schema at start-up. Unset: on for SQLite, off for PostgreSQL.",
    )

    replica_max_lag_seconds: float = Field(
        default=5.0, gt=0, description="A replica further behind than this serves no reads."
    )
    replica_retry_seconds: float = Field(
        default=5.0, gt=0, description="How long a failed replica is left alone before a retry."
    )
    read_your_writes_seconds: float = Field(
        default=5.0,
        ge=0,
        description="After a principal writes, its reads use the primary this long.",
    )
    migration_extra_locations: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra Alembic version folders (plugins, tests), comma-separated.",
    )

    # --- redis ----------------------------------------------------------------------------
    redis_url: str | None = Field(
        default=None,
        description="redis:// or rediss:// URL. Unset: an in-process fakeredis.",
    )
    redis_socket_timeout: float = Field(default=2.0, gt=0)
    redis_max_connections: int = Field(default=100, ge=1)
    cache_l1_ttl_seconds: float = Field(default=30.0, gt=0, description="Per-process cache bound.")
    cache_l1_max_entries: int = Field(default=10_000, ge=1)
    cache_l2_ttl_seconds: int = Field(default=300, ge=1, description="Redis cache entry lifetime.")

    # --- mail -----------------------------------------------------------------------------
    smtp_url: SecretStr | None = Field(
        default=None,
        description="smtp://user:pass@host:587 (STARTTLS when offered) or smtps:// (TLS). "
        "Unset: mail is written to APEX_DATA_DIR/mail/.",
    )
    mail_from: str = Field(default="Apex <no-reply@apex.invalid>", min_length=3, max_length=320)
    mails_per_address_per_hour: int = Field(
        default=5,
        ge=1,
        le=100_000,
        description="Sign-up and password-reset mails one address receives an hour, at most.",
    )

    # --- security -------------------------------------------------------------------------
    secret_key: SecretStr | None = Field(
        default=None,
        description="Signs sessions and tokens. Required outside the embedded default.",
    )

    session_idle_seconds: int = Field(
        default=1800, ge=1, description="Browser session idle timeout."
    )
    session_absolute_seconds: int = Field(
        default=86_400, ge=1, description="Browser session lifetime."
    )
    session_cookie_secure: bool = Field(default=True, description="Set false only for local http.")
    oidc_providers: list[OidcProviderConfig] = Field(
        default_factory=list, description="OpenID Connect providers, as a JSON list."
    )
    access_token_ttl_seconds: int = Field(default=900, ge=1, le=86_400)
    refresh_token_ttl_seconds: int = Field(default=30 * 86_400, ge=60)
    token_leeway_seconds: int = Field(default=30, ge=0, le=300, description="Clock skew allowed.")
    signing_key_overlap_seconds: int = Field(
        default=1800, ge=0, description="How long a rotated-out key still verifies tokens."
    )
    signing_keys_refresh_seconds: float = Field(
        default=10.0, gt=0, description="How often each instance reloads the signing keys."
    )

    # --- LLM ------------------------------------------------------------------------------
    llm_provider: Literal["offline", "openai", "anthropic"] = "offline"
    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = None
    llm_model: str | None = None
    llm_timeout_seconds: float = Field(default=60.0, gt=0, description="Per LLM call.")
    llm_fallback_provider: Literal["none", "openai", "anthropic"] = Field(
        default="none", description="Secondary provider tried before the offline one."
    )
    llm_fallback_base_url: str | None = None
    llm_fallback_api_key: SecretStr | None = None
    llm_fallback_model: str | None = None
    llm_retry_attempts: int = Field(default=3, ge=1, le=10, description="Per provider and call.")
    llm_retry_base_seconds: float = Field(default=0.5, ge=0)
    llm_retry_max_seconds: float = Field(default=20.0, ge=0)
    llm_breaker_threshold: int = Field(
        default=5, ge=1, description="Consecutive failures that open a provider's circuit."
    )
    llm_breaker_reset_seconds: float = Field(
        default=30.0, gt=0, description="How long an open circuit waits before one probe."
    )

    # --- agents ---------------------------------------------------------------------------
    agent_run_timeout_seconds: float = Field(default=600.0, gt=0)
    agent_step_timeout_seconds: float = Field(default=120.0, gt=0)
    agent_token_budget: int = Field(default=50_000, ge=1, description="Per run, all LLM calls.")
    agent_cost_budget_usd: Decimal = Field(default=Decimal("1.00"), ge=0)
    analysis_memory_limit_mb: int = Field(
        default=1024, ge=64, description="RLIMIT_AS of the analysis subprocess."
    )
    analysis_cpu_limit_seconds: int = Field(
        default=60, ge=1, description="RLIMIT_CPU of the analysis subprocess."
    )
    queue_name: str = Field(default="apex:jobs", description="The Redis stream of jobs.")
    websocket_drain_seconds: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="On SIGTERM, how long WebSocket connections get to receive what is queued "
        "for them before they are closed with 1013 (reconnect elsewhere).",
    )
    websocket_compression: bool = Field(
        default=False,
        description="Negotiate permessage-deflate with WebSocket clients that offer it. Off: "
        "each connection would compress every frame again, for frames of a few hundred bytes "
        "(the fan-out's largest cost, and ~40 KiB of zlib state a connection).",
    )
    websocket_ping_seconds: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="WebSocket heartbeat: a ping this often; a peer that has not answered "
        "this long after it is dropped (30: dead at 60 s).",
    )
    usage_maintenance_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="How often usage partitions are created ahead and retention applied "
        "(by `apex worker`; by `apex serve` on the embedded default).",
    )
    queue_redelivery_seconds: float = Field(
        default=300.0,
        gt=0,
        description="An unacknowledged job is given to another worker after this long.",
    )
    worker_heartbeat_seconds: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="How often each `apex worker` says it is alive; a worker silent for three "
        "heartbeats is counted as gone by the readiness check of the queue.",
    )

    # --- customer alerts ------------------------------------------------------------------
    alert_evaluation_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="How often workers evaluate the alert rules and send due notices.",
    )
    alert_delivery_attempts: int = Field(
        default=10, ge=1, le=50, description="Attempts per notice before it is marked failed."
    )
    alert_retry_base_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Wait before a notice's 2nd attempt; doubled per attempt, at most an hour.",
    )
    alert_delivery_timeout_seconds: float = Field(
        default=10.0, gt=0, le=60, description="Per webhook request or mail sent."
    )
    alert_webhooks_allow_private: bool = Field(
        default=False,
        description="Let alert webhooks go to loopback and private addresses (an internal "
        "receiver). Off: a customer cannot make Apex call into the network it runs in.",
    )

    # --- billing --------------------------------------------------------------------------
    stripe_api_key: SecretStr | None = Field(
        default=None, description="The payment gateway's secret key; unset: no payments."
    )
    stripe_api_base: str | None = Field(
        default=None,
        description="The gateway's API address (default Stripe's); tests and the demo point "
        "it at a local server speaking the same API.",
    )
    stripe_webhook_secret: SecretStr | None = Field(
        default=None, description="The secret the gateway signs its webhooks with (whsec_...)."
    )
    payments_sandbox: bool | None = Field(
        default=None,
        description="Serve a local gateway speaking Stripe's API under /sandbox/payments and "
        "pay through it (test cards, nothing charged): the demo checkout. Default: on for the "
        "embedded default without APEX_STRIPE_API_KEY; refused in production.",
    )
    stripe_timeout_seconds: float = Field(default=20.0, gt=0, le=120)
    stripe_network_retries: int = Field(
        default=2,
        ge=0,
        le=5,
        description="Retries of a gateway call, with the same idempotency key.",
    )
    billing_tax_rate: Decimal = Field(
        default=Decimal(0), ge=0, lt=1, description="Tax added to every invoice, e.g. 0.2."
    )
    billing_cycle_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How often the worker closes ended periods and collects due invoices.",
    )
    operator_emails: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="People who run this installation (comma-separated addresses): they see "
        "revenue analytics, over REST and live.",
    )
    public_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Where people reach Apex (the checkout returns them there). Default: "
        "this server's own address (APEX_HOST, APEX_PORT).",
    )

    # --- server and operations ------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    health_check_timeout: float = Field(
        default=2.0, gt=0, description="Seconds per readiness check."
    )
    health_probe_interval_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="How often remote dependencies (LLM providers, the payment gateway, mail) "
        "are probed in the background; readiness reports their latest result.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token Prometheus sends to scrape /metrics; without one, only "
        "loopback clients may scrape it.",
    )
    worker_metrics_port: int = Field(
        default=9464, ge=0, le=65535, description="Where `apex worker` serves /metrics (0: off)."
    )
    worker_metrics_host: str = Field(
        default="127.0.0.1",
        description="The address `apex worker` serves /metrics on (it has no token check: "
        "open it to the scraper's network deliberately).",
    )
    telemetry_buffer_points: int = Field(
        default=10_000,
        ge=100,
        le=1_000_000,
        description="Product points held in memory before they are stored; beyond, new points "
        "are dropped and counted (apex_telemetry_points_dropped_total).",
    )
    log_store_url: SecretStr | None = Field(
        default=None,
        description="postgresql://... where every process ships its log lines (table "
        "log_records, created if missing); none: logs go to stderr only.",
    )
    log_ship_seconds: float = Field(
        default=1.0, gt=0, le=60, description="How often buffered log lines are shipped."
    )
    log_buffer_lines: int = Field(
        default=100_000,
        ge=1000,
        le=10_000_000,
        description="Log lines held per process while the log store is away; beyond, new "
        "lines are dropped (and counted).",
    )
    telemetry_flush_seconds: float = Field(
        default=1.0, gt=0, le=300, description="How often buffered product points are stored."
    )
    shutdown_grace_seconds: float = Field(
        default=3.0,
        ge=0,
        le=120,
        description="On SIGTERM, how long readiness answers 503 while requests are still "
        "served, so a load balancer stops routing here before the server stops listening.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, le=1024**3, description="Request body limit (bytes)."
    )
    max_import_bytes: int = Field(
        default=4 * 1024**3,
        ge=1024,
        description="Upload limit of a streamed usage import (bytes as sent, compressed or not).",
    )
    max_ingest_body_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        le=1024**3,
        description="Request body limit of usage ingestion (bytes).",
    )
    enforce_api_limits: bool = Field(
        default=True,
        description="Count API requests against each plan's hourly limit, and WebSocket "
        "messages against its limit a minute.",
    )
    login_attempts_per_minute: int = Field(
        default=30, ge=1, le=10_000, description="Sign-in attempts a minute from one address."
    )
    login_failures_before_delay: int = Field(
        default=5, ge=1, le=1000, description="Failed sign-ins before each one doubles a delay."
    )
    login_delay_cap_seconds: float = Field(
        default=60, gt=0, le=3600, description="The longest delay between sign-in attempts."
    )
    body_read_timeout_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="Time a client has to send its request body."
    )
    http_keepalive_seconds: int = Field(
        default=75,
        ge=1,
        le=3600,
        description="How long an idle HTTP connection stays open. Longer than the proxy's and "
        "the clients' own idle timeouts (nginx upstream 30 s in deploy/nginx.conf, load "
        "balancers 60 s, httpx 5 s): the side that closes an idle connection must be the one "
        "that would reuse it, or a request sent as the server closes is lost (a 502).",
    )
    failpoints: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Named fault-injection points to trigger (tests only; refused in production).",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("operator_emails")
    @classmethod
    def _lower_emails(cls, value: list[str]) -> list[str]:
        return [email.strip().lower() for email in value]

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        return None if value is None else normalise_database_url(value)

    @field_validator(
        "database_replica_urls",
        "cors_origins",
        "failpoints",
        "operator_emails",
        "migration_extra_locations",
        mode="before",
    )
    @classmethod
    def _parse_list(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("smtp_url")
    @classmethod
    def _check_smtp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("smtp://", "smtps://")):
            raise ValueError("expected an smtp:// or smtps:// URL")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _explicit_origins(cls, value: list[str]) -> list[str]:
        # Credentials travel with CORS requests (the session cookie): a wildcard would let
        # every site act as the signed-in user.
        for origin in value:
            if "*" in origin:
                raise ValueError(
                    "list the browser origins allowed (https://app.example.com); '*' is "
                    "refused because cookies are sent with cross-origin requests"
                )
            if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port])")
        return value

    @field_validator("database_replica_urls")
    @classmethod
    def _check_replica_urls(cls, value: list[str]) -> list[str]:
        urls = [normalise_database_url(item) for item in value]
        if any(not url.startswith("postgresql") for url in urls):
            raise ValueError("replicas are PostgreSQL streaming standbys: postgresql:// URLs only")
        return urls

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "expected a redis://, rediss:// or unix:// URL, for example redis://cache:6379/0"
            )
        return value

    @field_validator("secret_key")
    @classmethod
    def _check_secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError(
                "must be at least 32 characters "
                "(try: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        return value

    @model_validator(mode="after")
    def _require_secret_outside_embedded(self) -> Settings:
        if self.environment == "production" and self.secret_key is None:
            raise ValueError("APEX_SECRET_KEY is required when APEX_ENVIRONMENT=production")
        if self.environment == "production" and self.failpoints:
            raise ValueError(
                "APEX_FAILPOINTS are for tests and refused when APEX_ENVIRONMENT=production"
            )
        if "public_url" not in self.model_fields_set:
            host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
            object.__setattr__(self, "public_url", f"http://{host}:{self.port}")
        self._resolve_payments_sandbox()
        if self.queue_redelivery_seconds <= self.agent_step_timeout_seconds:
            raise ValueError(
                "APEX_QUEUE_REDELIVERY_SECONDS must be longer than "
                "APEX_AGENT_STEP_TIMEOUT_SECONDS, or a running step's job would be handed to "
                "a second worker"
            )
        return self

    def _resolve_payments_sandbox(self) -> None:
        """The demo checkout: on by default for the embedded default without a real gateway;
        it then *is* the gateway (its address, key and webhook secret)."""
        sandbox = self.payments_sandbox
        if sandbox is None:
            sandbox = (
                self.database_url is None
                and self.stripe_api_key is None
                and self.environment == "development"
            )
        if sandbox and self.environment == "production":
            raise ValueError("APEX_PAYMENTS_SANDBOX is a rehearsal, refused in production")
        if sandbox and self.stripe_api_key is not None:
            raise ValueError("APEX_PAYMENTS_SANDBOX and APEX_STRIPE_API_KEY exclude each other")
        if sandbox and self.workers > 1:
            raise ValueError("APEX_PAYMENTS_SANDBOX keeps its state in one process: APEX_WORKERS=1")
        resolved: dict[str, Any] = {"payments_sandbox": sandbox}
        if sandbox:
            secret = self.stripe_webhook_secret or SecretStr(f"whsec_{secrets.token_hex(16)}")
            resolved |= {
                "stripe_api_key": SecretStr(SANDBOX_API_KEY),
                # Apex calls it on its own loopback address, whatever the public one.
                "stripe_api_base": f"{self.loopback_url}{SANDBOX_PATH}",
                "stripe_webhook_secret": secret,
            }
        for name, value in resolved.items():  # the model is frozen once validated
            object.__setattr__(self, name, value)

    # --- derived --------------------------------------------------------------------------
    @property
    def loopback_url(self) -> str:
        """This server, as a process on the same machine reaches it."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def effective_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'apex.db').as_posix()}"

    @property
    def database_backend(self) -> Literal["postgresql", "sqlite"]:
        return "postgresql" if self.effective_database_url.startswith("postgresql") else "sqlite"

    @property
    def embedded(self) -> bool:
        """True when Apex runs without external services (SQLite and fakeredis)."""
        return self.database_url is None and self.redis_url is None

    @property
    def migrate_on_start(self) -> bool:
        if self.auto_migrate is not None:
            return self.auto_migrate
        return self.database_backend == "sqlite"

    @cached_property
    def signing_secret(self) -> str:
        """The configured secret, or a per-process one (fine for one embedded process only)."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        return secrets.token_urlsafe(48)

    def safe_database_url(self) -> str:
        """The primary URL with its password masked, for logs and error messages."""
        url: URL = make_url(self.effective_database_url)
        return url.render_as_string(hide_password=True)


def _env_name(loc: tuple[int | str, ...]) -> str:
    field = str(loc[0]) if loc else ""
    return f"{ENV_PREFIX}{field.upper()}" if field else "settings"


_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@/]*@")


def _format_error(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    secret = any(word in str(error["loc"]) for word in ("key", "secret", "password"))
    if isinstance(value, str):
        value = _URL_PASSWORD.sub(r"\1***@", value)
    shown = "" if secret or isinstance(value, dict) else f" (got {value!r})"
    return f"{_env_name(error['loc'])}: {message}{shown}"


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment (and `overrides`); raise `SettingsError` if invalid."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [_format_error(error) for error in exc.errors()]
        raise SettingsError("Invalid Apex configuration:\n  " + "\n  ".join(lines)) from None


__all__ = ["Settings", "SettingsError", "load_settings", "normalise_database_url"]
