"""The harness itself: real failures of real servers, and no process left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.harness import HarnessError, PostgresCluster, RedisServer, free_port
from tests.harness.procs import wait_until

REPO = Path(__file__).resolve().parents[2]


def test_committed_rows_survive_kill_9_and_restart(fresh_postgres: PostgresCluster) -> None:
    fresh_postgres.sql("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
    fresh_postgres.sql("INSERT INTO ledger SELECT g, 'row ' || g FROM generate_series(1, 500) g")
    old_pid = fresh_postgres.process.pid if fresh_postgres.process else None

    fresh_postgres.kill()
    assert not fresh_postgres.running
    with pytest.raises(HarnessError):
        fresh_postgres.sql("SELECT 1")

    fresh_postgres.start()
    assert fresh_postgres.process is not None
    assert fresh_postgres.process.pid != old_pid
    assert fresh_postgres.sql("SELECT count(*), sum(id) FROM ledger") == "500|125250"
    assert "database system was interrupted" in fresh_postgres.log_path.read_text()


def test_replica_streams_rows_and_pauses_replay(fresh_postgres: PostgresCluster) -> None:
    fresh_postgres.sql("CREATE TABLE events (id int PRIMARY KEY)")
    replica = fresh_postgres.add_replica()
    assert replica.sql("SELECT pg_is_in_recovery()") == "t"

    fresh_postgres.sql("INSERT INTO events VALUES (1)")
    fresh_postgres.wait_for_replica(replica)
    assert replica.sql("SELECT array_agg(id) FROM events") == "{1}"

    replica.pause_replay()
    fresh_postgres.sql("INSERT INTO events VALUES (2)")
    # The row has reached the standby's disk (received) but is not applied while paused.
    target = fresh_postgres.sql("SELECT pg_current_wal_lsn()")
    assert wait_until(
        lambda: replica.sql(f"SELECT pg_last_wal_receive_lsn() >= '{target}'::pg_lsn") == "t", 10
    )
    assert replica.sql("SELECT array_agg(id) FROM events") == "{1}"

    replica.resume_replay()
    fresh_postgres.wait_for_replica(replica)
    assert replica.sql("SELECT array_agg(id ORDER BY id) FROM events") == "{1,2}"


def test_redis_restart_answers_again_on_the_same_port(fresh_redis: RedisServer) -> None:
    client = redis.Redis.from_url(fresh_redis.url, socket_timeout=2)
    client.set("k", "v")
    debug: Any = client.execute_command  # untyped in redis-py
    assert debug("DEBUG", "SLEEP", "0") in (b"OK", "OK", True)

    fresh_redis.kill()
    with pytest.raises(redis.ConnectionError):
        client.ping()

    fresh_redis.start()
    assert client.ping() is True
    assert client.get("k") is None  # persistence is off: a restart starts empty
    client.close()


def test_a_service_that_cannot_start_fails_loudly() -> None:
    busy = RedisServer().start()
    try:
        clash = RedisServer(port=busy.port)
        with pytest.raises(HarnessError, match="did not answer on port") as failure:
            clash.start(timeout=3)
        assert "Address already in use" in str(failure.value)
    finally:
        busy.destroy()


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {repo!r})
    from tests.harness import PostgresCluster, RedisServer, free_port
    from tests.harness.procs import install_signal_handlers, make_workdir
    from tests.harness.smtp import SmtpServer
    install_signal_handlers()
    pg = PostgresCluster(name="orphan-check").init().start()
    rs = RedisServer().start()
    mail = SmtpServer().start()  # a service that never removes its folder itself
    scratch = make_workdir("scratch")  # a folder a test made for its own servers' logs
    others = "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
    pids = [int(p) for p in pg.sql(others).split()]
    print(json.dumps({{"pids": [pg.process.pid, rs.process.pid, mail.process.pid, *pids],
                       "dirs": [str(pg.root), str(rs.root), str(mail.workdir), str(scratch)]}}),
          flush=True)
    if sys.argv[1] == "raise":
        sys.stdin.readline()  # the parent has seen everything running
        raise SystemExit("test failed inside the child")
    time.sleep(120)
    """
)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped by its parent.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("ending", ["sigkill", "sigterm", "sigint", "raise"])
def test_no_process_outlives_the_test_run(ending: str, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(repo=str(REPO)))
    child = subprocess.Popen(
        [sys.executable, str(script), ending],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    started = json.loads(child.stdout.readline())
    assert len(started["pids"]) >= 4  # postmaster, redis, and postgres's own helpers
    assert all(_pid_alive(pid) for pid in started["pids"])

    if ending == "raise":
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    else:
        child.send_signal(
            {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}[ending]
        )
    child.wait(timeout=30)

    assert wait_until(lambda: not any(_pid_alive(pid) for pid in started["pids"]), 30), [
        pid for pid in started["pids"] if _pid_alive(pid)
    ]
    if ending != "sigkill":  # a killed process cannot clean its folders; its servers still die
        assert [d for d in started["dirs"] if Path(d).exists()] == []
    for folder in started["dirs"]:  # this test started the child: what it left is ours to remove
        shutil.rmtree(folder, ignore_errors=True)


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        assert sock.getsockname()[1] == port
