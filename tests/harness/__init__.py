"""Real services for tests: PostgreSQL clusters (and replicas), redis-server, `apex serve`.

Every process the harness starts is registered in `procs` and killed when the run ends:
on normal exit, on SIGINT/SIGTERM, and — through the kernel's parent-death signal — when the
test process itself is killed with -9. Anything that cannot start raises `HarnessError`
with the reason and the tail of the process's log; nothing is silently skipped.
"""

from tests.harness.apex import ApexServer, ApexWorker
from tests.harness.postgres import PostgresCluster
from tests.harness.procs import HARNESS_PREFIX, HarnessError, free_port, leftover_processes
from tests.harness.redis import RedisServer

__all__ = [
    "HARNESS_PREFIX",
    "ApexServer",
    "ApexWorker",
    "HarnessError",
    "PostgresCluster",
    "RedisServer",
    "free_port",
    "leftover_processes",
]
