"""Process plumbing shared by every harness service.

Each service runs in its own process group, in a working directory under a folder named
`apex-harness-<run id>-*`, so that both the registry here and `leftover_processes()` (an
outside check over /proc) can find and kill it — and only it: the run id
(`APEX_TEST_RUN_ID`, set by test_runner.py, else made here and inherited by xdist workers)
keeps two test runs on one machine from touching each other's processes. Processes are
spawned from the main thread with PR_SET_PDEATHSIG=SIGKILL: if the test process dies, the
kernel kills them too.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

HARNESS_PREFIX = "apex-harness-"
RUN_ID = os.environ.setdefault("APEX_TEST_RUN_ID", uuid.uuid4().hex[:12])
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class HarnessError(RuntimeError):
    """A service the tests need could not be started or controlled; the message says why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_workdir(kind: str, owner: str | None = None) -> Path:
    """A folder of this run's, removed when the test process ends (if its user has not
    removed it before)."""
    path = Path(tempfile.mkdtemp(prefix=f"{HARNESS_PREFIX}{RUN_ID}-{kind}-"))
    register_dir(path)
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _preexec(user: str | None) -> Callable[[], None]:
    entry = pwd.getpwnam(user) if user else None

    def run() -> None:
        if entry is not None:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
        # After the uid change: changing credentials clears the parent-death signal.
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return run


def run_as(
    user: str | None, argv: Sequence[str], *, cwd: Path | None = None, timeout: float = 120
) -> str:
    """Run a short command (as `user` when root); raise HarnessError with its output on failure."""
    result = subprocess.run(
        list(argv),
        cwd=cwd,
        preexec_fn=_preexec(user),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise HarnessError(
            f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result.stdout


class ManagedProcess:
    """A long-running child in its own process group, logged to a file."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        cwd: Path,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> None:
        if threading.current_thread() is not threading.main_thread():
            # The parent-death signal fires when the spawning *thread* exits.
            raise HarnessError("harness processes must be started from the main thread")
        self.argv = list(argv)
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_preexec(user),
            )
        _REGISTRY.add(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)

    def wait_group_gone(self, timeout: float) -> bool:
        """Reap the leader and wait until no process of its group is left."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.popen.poll()
            try:
                os.killpg(self.popen.pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        """SIGKILL the whole group, as a crash would."""
        self.signal_group(signal.SIGKILL)
        if not self.wait_group_gone(10):
            raise HarnessError(f"process group {self.pid} survived SIGKILL")
        _REGISTRY.discard(self)

    def terminate(self, signum: int = signal.SIGTERM, timeout: float = 15) -> None:
        """Ask politely, then kill the group if it does not leave in time."""
        self.signal_group(signum)
        if not self.wait_group_gone(timeout):
            self.signal_group(signal.SIGKILL)
            self.wait_group_gone(5)
        _REGISTRY.discard(self)


class ServiceProcess:
    """What every harness service shares: one managed process, a polite stop and a kill."""

    stop_signal = signal.SIGTERM
    stop_timeout = 15.0

    def __init__(self) -> None:
        self.process: ManagedProcess | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.alive()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate(self.stop_signal, timeout=self.stop_timeout)
            self.process = None

    def kill(self) -> None:
        """SIGKILL every process of the service, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process = None


class _Registry:
    def __init__(self) -> None:
        self._procs: set[ManagedProcess] = set()
        self._dirs: set[Path] = set()

    def add(self, proc: ManagedProcess) -> None:
        self._procs.add(proc)

    def discard(self, proc: ManagedProcess) -> None:
        self._procs.discard(proc)

    def add_dir(self, path: Path) -> None:
        self._dirs.add(path)

    def kill_all(self) -> None:
        for proc in list(self._procs):
            proc.signal_group(signal.SIGKILL)
        for proc in list(self._procs):
            proc.wait_group_gone(5)
        self._procs.clear()
        for path in list(self._dirs):
            shutil.rmtree(path, ignore_errors=True)
        self._dirs.clear()


_REGISTRY = _Registry()
register_dir = _REGISTRY.add_dir
kill_all = _REGISTRY.kill_all
atexit.register(kill_all)


def _on_signal(signum: int, _frame: object) -> None:
    kill_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_signal_handlers() -> None:
    """Kill every harness process on SIGTERM (SIGINT reaches atexit through KeyboardInterrupt)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)


def leftover_processes(run_id: str = RUN_ID) -> list[tuple[int, str]]:
    """Processes (pid, command) whose working directory is a harness folder of this run:
    should be none. Another run's processes are not this run's business."""
    found = []
    marker = os.path.join(tempfile.gettempdir(), f"{HARNESS_PREFIX}{run_id}-")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(marker) and cmd.strip():
            found.append((int(entry.name), cmd.strip()))
    return found


async def eventually(predicate: Callable[[], bool], within: float, interval: float = 0.05) -> bool:
    """`wait_until` for async tests: polls without blocking the event loop, so the
    in-process app's own tasks (which the predicate may be waiting on) keep running."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()


REPO = Path(__file__).resolve().parents[2]


def start_python_server(
    module: str,
    args: list[str],
    *,
    root: Path,
    log_path: Path,
    ready_url: str,
    what: str,
    timeout: float,
) -> ManagedProcess:
    """Run `python -m MODULE ARGS` (a test double from tests/harness) and wait until
    `ready_url` answers 200; fail with the log's tail if it never does."""
    process = ManagedProcess(
        [sys.executable, "-m", module, *args],
        log_path=log_path,
        cwd=root,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.05)
    raise HarnessError(f"{what} did not start. Log tail:\n{tail(log_path)}")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def wait_for_port(port: int, timeout: float) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port` within `timeout`."""
    return wait_until(lambda: port_open(port), timeout)
