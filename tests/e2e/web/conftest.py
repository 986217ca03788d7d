"""The browser app's tests: real Chromium against real `apex serve` processes."""

from tests.integration.conftest import (  # noqa: F401 (fixtures, found by name)
    database_url,
    fresh_redis,
    mail_server,
    payments,
    postgres,
    start_apex,
    start_worker,
    template_database,
)
