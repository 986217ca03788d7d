from __future__ import annotations

import os
import subprocess
import sys

import pytest

from apex.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("APEX_"):
            monkeypatch.delenv(key)


def test_nothing_set_is_the_embedded_default() -> None:
    settings = load_settings()
    assert settings.embedded
    assert settings.database_backend == "sqlite"
    assert settings.effective_database_url == "sqlite+aiosqlite:///.apex/apex.db"
    assert settings.redis_url is None
    assert settings.llm_provider == "offline"
    assert settings.migrate_on_start is True


def test_postgres_urls_get_the_async_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APEX_DATABASE_URL", "postgres://apex:pw@db:5432/apex")
    monkeypatch.setenv("APEX_DATABASE_REPLICA_URLS", "postgresql://r1/apex, postgresql://r2/apex")
    settings = load_settings()
    assert settings.effective_database_url == "postgresql+asyncpg://apex:pw@db:5432/apex"
    assert settings.database_replica_urls == [
        "postgresql+asyncpg://r1/apex",
        "postgresql+asyncpg://r2/apex",
    ]
    assert settings.safe_database_url() == "postgresql+asyncpg://apex:***@db:5432/apex"
    assert settings.migrate_on_start is False
    assert not settings.embedded


def test_replica_urls_accept_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APEX_DATABASE_REPLICA_URLS", '["postgresql://r1/apex"]')
    assert load_settings().database_replica_urls == ["postgresql+asyncpg://r1/apex"]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "APEX_DATABASE_URL",
            "mysql://u:hunter2@h/db",
            "APEX_DATABASE_URL: unsupported scheme 'mysql'",
        ),
        ("APEX_DATABASE_URL", "not a url", "APEX_DATABASE_URL: expected a postgresql://"),
        (
            "APEX_DATABASE_URL",
            "postgresql://host",
            "APEX_DATABASE_URL: the PostgreSQL URL names no database",
        ),
        (
            "APEX_DATABASE_REPLICA_URLS",
            "sqlite:///x.db",
            "APEX_DATABASE_REPLICA_URLS: replicas are PostgreSQL",
        ),
        ("APEX_REDIS_URL", "localhost:6379", "APEX_REDIS_URL: expected a redis://"),
        ("APEX_PORT", "eighty", "APEX_PORT: Input should be a valid integer"),
        ("APEX_DB_POOL_SIZE", "0", "APEX_DB_POOL_SIZE: Input should be greater than or equal to 1"),
        (
            "APEX_LOG_LEVEL",
            "chatty",
            "APEX_LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'",
        ),
        ("APEX_SECRET_KEY", "short", "APEX_SECRET_KEY: must be at least 32 characters"),
        ("APEX_CORS_ORIGINS", "*", "APEX_CORS_ORIGINS: list the browser origins allowed"),
        ("APEX_CORS_ORIGINS", "https://*.example.com", "'*' is refused because cookies"),
        ("APEX_CORS_ORIGINS", "example.com", "'example.com' is not an origin"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as failure:
        load_settings()
    assert expected in str(failure.value)


def test_secrets_never_appear_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APEX_DATABASE_URL", "mysql://user:hunter2@h/db")
    monkeypatch.setenv("APEX_SECRET_KEY", "tooshort-but-secret")
    with pytest.raises(SettingsError) as failure:
        load_settings()
    message = str(failure.value)
    assert "hunter2" not in message
    assert "tooshort-but-secret" not in message
    assert "mysql://user:***@h/db" in message


def test_production_requires_a_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APEX_ENVIRONMENT", "production")
    with pytest.raises(SettingsError, match="APEX_SECRET_KEY is required"):
        load_settings()


def test_a_job_is_not_redelivered_while_its_step_may_still_run() -> None:
    with pytest.raises(SettingsError, match="APEX_QUEUE_REDELIVERY_SECONDS must be longer"):
        load_settings(agent_step_timeout_seconds=300, queue_redelivery_seconds=300)
    accepted = load_settings(agent_step_timeout_seconds=30, queue_redelivery_seconds=31)
    assert accepted.queue_redelivery_seconds == 31


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(Exception, match="frozen"):
        settings.port = 1  # type: ignore[misc]


def test_the_command_line_refuses_bad_settings_at_start_up() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    env["APEX_DATABASE_URL"] = "oracle://scott:tiger@h/db"
    result = subprocess.run(
        [sys.executable, "-m", "apex", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "APEX_DATABASE_URL: unsupported scheme 'oracle'" in result.stderr
    assert "tiger" not in result.stderr
    assert "Traceback" not in result.stderr
