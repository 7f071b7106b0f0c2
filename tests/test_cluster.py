"""Cluster mode on a real 3-node NATS JetStream cluster (cluster/supervisord.conf): the
example through both ingest nodes, fencing, a whole-cluster restart, and the worker's commit
crashing on either side of its compare-and-set."""

import subprocess
import sys

import pytest

from cluster_harness import Cluster
from http_client import post, request, wait_for
from processes import copy_of_the_code, short_temp_dir

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster():
    root = short_temp_dir()
    copy_of_the_code(root)
    started = []

    def start(**settings):
        node = Cluster(root, **settings)
        started.append(node)
        node.start()
        return node

    yield start
    for node in started:
        node.stop()
    import shutil
    shutil.rmtree(root, ignore_errors=True)


def counted(node, expected, n=1):
    """Poll ingest node n's /counts until they are `expected`."""
    wait_for(lambda: node.counts(n)["counts"] == expected, 30,
             what=f"counts {expected} on ingest-{n}")


def test_the_example_through_both_ingest_nodes(cluster):
    node = cluster(interval=0.2)
    one, two = node.ingest_port(1), node.ingest_port(2)
    assert post(one, {"experienceID": 1}, "/ingest-api") == (202, {"accepted": 1})
    assert post(two, {"experienceID": 1}, "/ingest-api") == (202, {"accepted": 1})
    assert post(two, {"experienceID": 100}, "/ingest-api") == (202, {"accepted": 1})
    for n in (1, 2):
        counted(node, {"1": 2, "100": 1}, n)
    counts = node.counts(2)
    assert counts["events"] == 3 and set(counts["partitions"]) == {"p1", "p2"}

    # The same validation and errors as the single machine, and nothing written.
    status, body = post(one, {"experienceID": "1"})
    assert status == 400 and "experienceID must be an integer" in body["error"]
    status, body = post(two, {"batch": [{"experienceID": 7}, {"experienceID": -1}]}, "/batch")
    assert status == 400 and "batch[1]" in body["error"]

    status, stats = request(one, "GET", "/stats")
    assert status == 200 and stats["mode"] == "cluster"
    assert stats["stream"]["leader"] in ("nats-1", "nats-2", "nats-3")
    assert len(stats["stream"]["replicas"]) == 2
    by_name = {entry["partition"]: entry for entry in stats["partitions"]}
    assert by_name["p1"]["counted_messages"] == 1 and by_name["p2"]["counted_messages"] == 2
    assert all(entry["lag_messages"] == 0 and entry["worker"]["state"] == "running"
               for entry in stats["partitions"])
    assert request(two, "GET", "/healthz")[0] == 200
    status, body = request(one, "GET", "/series")
    assert status == 501 and "cluster mode" in body["error"]

    env = {**node.env, "MINI_ANALYTICS_CLUSTER": ",".join(node.servers)}
    shown = subprocess.run([sys.executable, "-m", "worker", "status"], env=env, cwd=node.root,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "3 events, 2 experiences" in shown.stdout
    assert "p1" in shown.stdout and "p2" in shown.stdout and "worker@" in shown.stdout


def test_a_missing_worker_fails_healthz_naming_it(cluster):
    node = cluster(interval=0.2)
    assert post(node.ingest_port(2), {"experienceID": 5})[0] == 202
    counted(node, {"5": 1})
    node.ctl("stop", "worker:worker-2")
    status, body = request(node.ingest_port(1), "GET", "/healthz")
    assert status == 503 and "no worker answers for partition p2" in body["error"]
    node.ctl("start", "worker:worker-2")
    wait_for(lambda: request(node.ingest_port(1), "GET", "/healthz")[0] == 200, 30,
             what="/healthz ok again")
