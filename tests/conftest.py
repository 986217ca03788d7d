"""Test levels come from folders: tests/unit → unit, tests/integration → integration,
tests/integration/critical → critical, tests/e2e → e2e, tests/performance → performance."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.harness.procs import install_signal_handlers, kill_all

_LEVELS = ("critical", "e2e", "performance", "unit", "integration")


def pytest_configure(config: pytest.Config) -> None:
    install_signal_handlers()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for level in _LEVELS:
            if level in parts:
                item.add_marker(getattr(pytest.mark, level))
                break


def pytest_sessionfinish(session: pytest.Session) -> None:
    kill_all()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("real_llm") and not os.environ.get("APEX_TEST_REAL_LLM"):
        pytest.skip("calls a real LLM provider: run with --real-llm and provider credentials")
