"""Throwaway PostgreSQL clusters: primary and streaming hot standbys, killable at will."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

from tests.harness.procs import (
    HarnessError,
    ManagedProcess,
    ServiceProcess,
    free_port,
    make_workdir,
    run_as,
    tail,
    wait_until,
)


def postgres_bin_dir() -> Path:
    """The newest installed server's bin folder (override with APEX_TEST_PG_BIN)."""
    override = os.environ.get("APEX_TEST_PG_BIN")
    if override:
        return Path(override)
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (p for p in root.glob("*/bin") if (p / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        raise HarnessError(
            "No PostgreSQL server binaries under /usr/lib/postgresql/*/bin "
            "(install the Debian package postgresql, or set APEX_TEST_PG_BIN)"
        )
    return versions[-1]


def _os_user() -> str | None:
    """initdb and postgres refuse to run as root: use the `postgres` account then."""
    return "postgres" if os.geteuid() == 0 else None


class PostgresCluster(ServiceProcess):
    """One PostgreSQL server in a temporary folder, on a free port.

    fsync is off (the OS survives a kill -9, so nothing committed is lost) but commits stay
    synchronous: a crash of the server never loses an acknowledged transaction.

    `stop()` is a clean (fast) shutdown, `kill()` a SIGKILL of every process of the server,
    `restart()` starts it again on the same port with the same data.
    """

    stop_signal = signal.SIGINT  # fast shutdown: active transactions roll back, data is flushed
    stop_timeout = 30.0

    def __init__(self, *, name: str = "primary", port: int | None = None) -> None:
        super().__init__()
        self.bin = postgres_bin_dir()
        self.user = _os_user()
        self.root = make_workdir(f"pg-{name}", owner=self.user)
        self.data_dir = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = port or free_port()
        self.replicas: list[PostgresCluster] = []

    # --- lifecycle --------------------------------------------------------------------
    def init(self) -> PostgresCluster:
        run_as(
            self.user,
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            cwd=self.root,
        )
        return self

    def start(self, timeout: float = 30) -> PostgresCluster:
        if self.process is not None and self.process.alive():
            raise HarnessError(f"PostgreSQL {self.name_port} is already running")
        self.process = ManagedProcess(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "wal_level=replica",
                "-c",
                "max_wal_senders=10",
                "-c",
                "hot_standby=on",
                "-c",
                "hot_standby_feedback=on",
                "-c",
                "wal_receiver_status_interval=1s",
            ],
            log_path=self.log_path,
            cwd=self.root,
            user=self.user,
        )
        if not wait_until(self._accepting, timeout, interval=0.05):
            alive = self.process.alive()
            self.process.kill() if alive else None
            raise HarnessError(
                f"PostgreSQL did not accept connections on port {self.port} within {timeout}s"
                f" (process {'running' if alive else 'exited'}). Log tail:\n{tail(self.log_path)}"
            )
        return self

    def restart(self, timeout: float = 60) -> PostgresCluster:
        self.stop()
        return self.start(timeout)

    def destroy(self) -> None:
        for replica in self.replicas:
            replica.destroy()
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def name_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accepting(self) -> bool:
        if self.process is None or not self.process.alive():
            return False
        probe = subprocess.run(
            [
                str(self.bin / "pg_isready"),
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-t",
                "1",
            ],
            check=False,
        )
        if probe.returncode != 0:
            return False
        # Ours must answer, not another server already holding the port.
        return Path(self.sql("SHOW data_directory")) == self.data_dir

    # --- SQL and databases ------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def sql(self, query: str, database: str = "postgres") -> str:
        """Run SQL with psql and return the unaligned, tuples-only output."""
        result = subprocess.run(
            [
                str(self.bin / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                query,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise HarnessError(
                f"psql on {self.name_port}/{database} failed: {result.stderr.strip()}"
            )
        return result.stdout.strip()

    def create_database(self, name: str | None = None, *, template: str | None = None) -> str:
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        clause = f' TEMPLATE "{template}"' if template else ""
        self.sql(f'CREATE DATABASE "{name}"{clause}')
        return name

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # --- replication ------------------------------------------------------------------
    def add_replica(self, timeout: float = 60) -> PostgresCluster:
        """A streaming hot standby of this cluster (pg_basebackup -R), started and caught up."""
        replica = PostgresCluster(name="replica")
        run_as(
            self.user,
            [
                str(self.bin / "pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-D",
                str(replica.data_dir),
                "-R",
                "-X",
                "stream",
                "--no-sync",
                "--checkpoint=fast",  # a spread checkpoint can keep it waiting for minutes
            ],
            cwd=replica.root,
        )
        replica.start(timeout)
        self.replicas.append(replica)
        self.wait_for_replica(replica, timeout)
        return replica

    def pause_replay(self) -> None:
        self.sql("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.sql("SELECT pg_wal_replay_resume()")

    def wait_for_replica(self, replica: PostgresCluster, timeout: float = 30) -> None:
        """Wait until `replica` has replayed everything this primary has written so far."""
        target = self.sql("SELECT pg_current_wal_lsn()")

        def caught_up() -> bool:
            replayed = replica.sql(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")
            return replayed == "t"

        if not wait_until(caught_up, timeout, interval=0.05):
            raise HarnessError(
                f"replica {replica.name_port} did not replay up to {target} in {timeout}s"
            )
