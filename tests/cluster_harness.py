"""A real local cluster for tests: the shipped cluster/supervisord.conf (3 nats-server nodes
from the venv, 2 ingest nodes, 2 workers) on a copy of the code, on ports of its own."""

import json
import random
import socket
import urllib.request

from http_client import PORTS, answers_http, bindable, request, wait_for
from processes import Supervisor

# As supervisorctl names them: group:process.
PROGRAMS = ("nats:nats-1", "nats:nats-2", "nats:nats-3", "ingest:ingest-1", "ingest:ingest-2",
            "worker:worker-1", "worker:worker-2")
# The ports cluster/run derives from the base.
PORT_OFFSETS = (1, 2, 3, 11, 12, 13, 21, 22, 23, 80, 81)


def free_port_base():
    """A base whose every cluster port is free now, all below the ephemeral range."""
    for _ in range(200):
        base = random.randrange(PORTS.start, PORTS.stop - max(PORT_OFFSETS), 100)
        if bindable(base + offset for offset in PORT_OFFSETS):
            return base
    raise AssertionError("no free port range for a cluster")


class Cluster(Supervisor):
    def __init__(self, root, **settings):
        """`settings` as MINI_ANALYTICS_* variables. Unless set: 2 partitions (one per
        worker, so that a test knows who counts what) and a take-over after 3 s."""
        self.base = free_port_base()
        settings = {"partition_count": 2, "takeover": 3, **settings}
        self.partitions = [f"p{n}" for n in range(1, int(settings["partition_count"]) + 1)]
        super().__init__(root, self.base + 80, cluster_port_base=self.base, **settings)
        self.conf = root / "cluster" / "supervisord.conf"

    @property
    def servers(self):
        return [f"nats://127.0.0.1:{self.base + n}" for n in (1, 2, 3)]

    def ingest_port(self, n):
        return self.base + 79 + n

    def start(self, wait=True):
        super().start(wait=False)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=60):
        wait_for(lambda: all(self.status().get(name) == "RUNNING" for name in PROGRAMS),
                 timeout, what="every program RUNNING")
        for n in (1, 2):
            wait_for(lambda: answers_http(self.ingest_port(n)), timeout,
                     what=f"ingest-{n} to answer HTTP")
        wait_for(lambda: request(self.ingest_port(1), "GET", "/healthz")[0] == 200, timeout,
                 what="/healthz to answer 200 (a stream leader; every partition counted)")

    def stop(self):
        for name in PROGRAMS:  # remembered, so that stop() can make sure none outlives it
            self.pid(name)
        super().stop()

    def owners(self):
        """{partition: the owner of the worker answering for it, or None}, from /stats."""
        status, stats = request(self.ingest_port(1), "GET", "/stats", timeout=10)
        assert status == 200, stats
        return {entry["partition"]: entry["worker"]["owner"] for entry in stats["partitions"]}

    def worker_owner(self, n):
        """How worker-n signs its commits (storage/stream/leases.py's owner):
        worker@<host>:<pid>."""
        return f"worker@{socket.gethostname()}:{self.pid(f'worker:worker-{n}')}"

    def monitor(self, n, path):
        # A short timeout: a paused (SIGSTOPped) node accepts the connection, never answers.
        with urllib.request.urlopen(f"http://127.0.0.1:{self.base + 20 + n}{path}",
                                    timeout=1) as answer:
            return json.load(answer)

    def stream_leader(self):
        """The name of the stream's leader node (nats-N), or None while there is none."""
        return stream_leader(self.monitor, (1, 2, 3))

    def counts(self, n=1, timeout=30):
        """Ingest node n's /counts. Checkpoints are read through the bucket's leader, so
        while the bucket elects one (after nodes were stopped or killed) the answer is a 503
        naming the lost majority: that is waited out, as a client would retry it."""
        status, body = wait_for(
            lambda: (answer := request(self.ingest_port(n), "GET", "/counts"))[0] != 503
            and answer, timeout, what=f"/counts on ingest-{n} to answer")
        assert status == 200, body
        return body


def stream_leader(monitor, nodes):
    """The stream's leader (nats-N) as the first of `nodes` that knows one reports it, asked
    with monitor(n, path) (its monitoring port), or None."""
    for n in nodes:
        try:
            info = monitor(n, "/jsz?streams=true")
        except OSError:
            continue
        for account in info.get("account_details", []):
            for stream in account.get("stream_detail", []):
                if stream["name"] == "MINI_ANALYTICS":
                    leader = stream.get("cluster", {}).get("leader")
                    if leader:
                        return leader
    return None
