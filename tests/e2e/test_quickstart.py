"""The README's first command, as a person runs it: Apex comes up healthy from nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.harness import free_port

REPO = Path(__file__).resolve().parents[2]


def test_run_demo_serves_and_shows_it_healthy(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    env |= {"APEX_DATA_DIR": str(tmp_path / "data"), "APEX_PORT": str(port), "APEX_DEMO_EXIT": "1"}
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
    assert f"at http://127.0.0.1:{port}: OK" in result.stdout
    assert "database │ ok" in result.stdout
    assert "redis    │ ok" in result.stdout
    assert (tmp_path / "data" / "apex.db").exists()  # the embedded SQLite file, migrated
