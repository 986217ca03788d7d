"""The README's first command, as a person runs it: from nothing, `apex demo` ingests a
month, runs the agent pipeline and prints the report; then Apex serves it, healthy."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.harness import free_port

REPO = Path(__file__).resolve().parents[2]


def test_run_demo_reports_savings_then_serves_healthy(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    env |= {"APEX_DATA_DIR": str(tmp_path / "data"), "APEX_PORT": str(port), "APEX_DEMO_EXIT": "1"}
    env["COLUMNS"] = "200"  # rich wraps table cells to the terminal width
    result = subprocess.run(
        ["./run", "demo"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "Ingested 19500 records (0 already there)." in out
    # Every kind of planted waste is found, and the bill is shown.
    for finding in (
        "prompt prefixes of support-chat",
        "research-agent sends",
        "ticket-triage from gpt-4o",
        "research-agent's failed calls",
        "nightly-digest through the openai batch API",
        "faq-bot's repeated requests",
    ):
        assert finding in out, finding
    assert "Bill on the Mid plan" in out
    # The figures the README shows: the demo month is fixed, so they are the same each run.
    assert "Recommendations (projected savings $69.05/month)" in out
    assert "Analysed $232.32 of $232.32 (100.0%); left out $0.00." in out
    assert f"at http://127.0.0.1:{port}: OK" in result.stdout
    # The browser app's address and the one-time demo login, to sign in with.
    assert "Sign in as demo@apex.invalid with password" in out
    assert f"Apex is serving http://127.0.0.1:{port}: open it in a browser" in out
    assert "database │ ok" in result.stdout
    assert "redis    │ ok" in result.stdout
    assert (tmp_path / "data" / "apex.db").exists()  # the embedded SQLite file, migrated
