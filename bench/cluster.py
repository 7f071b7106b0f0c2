"""`python -m bench cluster`: cluster mode against the single machine and against raw nats-py,
in one run on one machine.

A local cluster (cluster/supervisord.conf: 3 NATS nodes, 2 ingest nodes, 2 workers) runs on a
copy of the code under bench/scratch/, on ports of its own. The workers are stopped while the
ingest is measured (as the single-machine ingest is measured without its worker), then
started to time their catch-up on the backlog the measurements left.

    ingest     acknowledged single events/s, batched events/s (batches of 100) and SDK
               events/s (bench/sdk.py's batches of 100, from 7 installs a request, and
               from one as the SDKs send; a message per request and partition) through 1
               and through 2 ingest nodes (a wrk per node), beside the single machine
               (fsync on) and beside raw nats-py publishing the same messages with the
               same concurrency: the engine's own limit. The SDK measures, which the
               targets are on, in SDK_ROUNDS alternated rounds (sdk_rounds), with their
               spread and the CPU a request of each process that could bound them
    cores      the CPU each process used during the 2-node single-event run
    catch-up   the workers counting the stream from nothing: messages/s and events/s
"""

import asyncio
import collections
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

from bench.harness import (PIDS, REPO, against, cpu_seconds, ingest_server, run_wrk,
                           scratch_dir, wrk_script)
from bench.sdk import DONE, fresh_ids_script, sdk_body

BIN = os.path.dirname(sys.executable)
CONNECTIONS = 16  # per ingest node, as in the single-machine bench
BATCH = 100
SDK_ROUNDS = 3
# Raw nats-py's messages go to a subject of the stream that no worker counts.
RAW_PARTITION = "raw"
RAW_SUBJECT = f"mini_analytics.events.{RAW_PARTITION}"
PROGRAMS = ("nats:nats-1", "nats:nats-2", "nats:nats-3", "ingest:ingest-1", "ingest:ingest-2")


def free_base():
    for base in range(21000, 60000, 100):
        try:
            for offset in (1, 2, 3, 11, 12, 13, 21, 22, 23, 80, 81):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


class LocalCluster:
    def __init__(self, root, base, env):
        self.root, self.base, self.env = root, base, env
        self.conf = root / "cluster" / "supervisord.conf"

    def ctl(self, *args):
        return subprocess.run([os.path.join(BIN, "supervisorctl"), "-c", str(self.conf), *args],
                              env=self.env, capture_output=True, text=True, timeout=60).stdout

    def port(self, n):
        return self.base + 79 + n

    @property
    def servers(self):
        return [f"nats://127.0.0.1:{self.base + n}" for n in (1, 2, 3)]

    def get(self, n, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port(n)}{path}", timeout=10) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)
        except OSError:
            return None, None

    def wait(self, predicate, what, timeout=120):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def cpu_seconds(self):
        """{program: CPU seconds it used so far}."""
        return {name.split(":")[1]: cpu_seconds(self.ctl("pid", name).strip())
                for name in PROGRAMS}


# The last local cluster's logs, kept when its scratch copy goes: what a run that measured
# something strange (a worker idle for a whole soak) can be read back from.
LOGS_KEPT = REPO / "bench" / "results" / "cluster-logs"


@contextlib.contextmanager
def local_cluster(**settings):
    """The shipped local cluster on a scratch copy; `settings` as MINI_ANALYTICS_* values.
    Its logs are kept in LOGS_KEPT (those of the cluster before are replaced)."""
    root = scratch_dir()
    for name in ("app", "storage", "worker", "cluster"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "state").mkdir()
    base = free_base()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINI_ANALYTICS_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", MINI_ANALYTICS_INTERVAL="1",
               MINI_ANALYTICS_CLUSTER_PORT_BASE=str(base))
    env.update({f"MINI_ANALYTICS_{name.upper()}": str(value) for name, value in settings.items()})
    proc = subprocess.Popen([os.path.join(BIN, "supervisord"), "-c",
                             str(root / "cluster" / "supervisord.conf")], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cluster = LocalCluster(root, base, env)
    try:
        cluster.wait(lambda: all(cluster.get(n, "/healthz")[0] == 200 for n in (1, 2)),
                     "the cluster to be healthy")
        yield cluster
    finally:
        cluster.ctl("shutdown")
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(LOGS_KEPT, ignore_errors=True)
        for log in (root / "state").glob("**/*.log"):
            kept = LOGS_KEPT / log.relative_to(root / "state")
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(log, kept)
        shutil.rmtree(root, ignore_errors=True)


def wrk_on(ports, script, seconds):
    """Run one wrk per port at the same time; the summed rate and the worst p99."""
    results = [None] * len(ports)

    def run(index, port):
        results[index] = run_wrk(port, script, seconds=seconds, connections=CONNECTIONS)

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(ports)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(r["rate"] for r in results), max(r["p99"] for r in results)


def raw_publish(servers, ids_per_message, seconds, in_flight=CONNECTIONS):
    """Messages/s raw nats-py acknowledges: `in_flight` publishers, each awaiting its ack,
    each message `ids_per_message` ids with a Nats-Msg-Id (as the engine publishes)."""
    import nats  # noqa: PLC0415 - cluster mode's dependency, imported only here

    payload = b"".join(b"%d\n" % (12345 + i) for i in range(ids_per_message))

    async def main():
        nc = await nats.connect(servers=servers)
        js = nc.jetstream(timeout=10)
        done, stop_at = 0, time.monotonic() + seconds
        prefix = os.urandom(4).hex()

        async def publisher(index):
            nonlocal done
            number = 0
            while time.monotonic() < stop_at:
                number += 1
                await js.publish(RAW_SUBJECT, payload,
                                 headers={"Nats-Msg-Id": f"raw-{prefix}-{index}-{number}"})
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(publisher(i) for i in range(in_flight)))
        elapsed = time.monotonic() - started
        await nc.close()
        return done / elapsed

    return asyncio.run(main())


def bench_cluster(seconds):
    results = {}
    event = b'{"experienceID": 12345}'
    batch = json.dumps({"batch": [{"experienceID": i % 997} for i in range(BATCH)]}).encode()
    sdk_script = scratch_dir() / "sdk.lua"
    sdk_script.write_text(fresh_ids_script(sdk_body()) + DONE)
    # As the SDKs send: a request holds one install's events, so one partition's message.
    one_install_script = sdk_script.parent / "sdk-one-install.lua"
    one_install_script.write_text(fresh_ids_script(sdk_body(installs=1)) + DONE)
    with wrk_script(event) as single_script, wrk_script(batch, "/batch") as batch_script:
        with ingest_server(fsync=True) as (port, _):
            run_wrk(port, single_script, seconds=1)
            results["file_single_events_s"] = run_wrk(port, single_script, seconds)["rate"]
            results["file_batched_events_s"] = run_wrk(port, batch_script, seconds)["rate"] * BATCH
        with local_cluster() as cluster:
            cluster.ctl("stop", "worker:*")
            one, both = [cluster.port(1)], [cluster.port(1), cluster.port(2)]
            wrk_on(both, single_script, 1)  # warm-up
            results["cluster_1_node_single_events_s"], results["cluster_1_node_single_p99_ms"] = (
                wrk_on(one, single_script, seconds))
            before, started = cluster.cpu_seconds(), time.monotonic()
            results["cluster_2_nodes_single_events_s"], results["cluster_2_nodes_single_p99_ms"] = (
                wrk_on(both, single_script, seconds))
            elapsed = time.monotonic() - started
            after = cluster.cpu_seconds()
            for name in after:
                results[f"cores_used_{name}"] = (after[name] - before[name]) / elapsed
            rate, _ = wrk_on(one, batch_script, seconds)
            results["cluster_1_node_batched_events_s"] = rate * BATCH
            rate, _ = wrk_on(both, batch_script, seconds)
            results["cluster_2_nodes_batched_events_s"] = rate * BATCH
            results.update(sdk_rounds(cluster, {"sdk": sdk_script,
                                                "sdk_one_install": one_install_script},
                                      seconds))
            results["raw_nats_single_events_s"] = raw_publish(cluster.servers, 1, seconds)
            results["raw_nats_batched_events_s"] = raw_publish(cluster.servers, BATCH,
                                                               seconds) * BATCH
            results.update(time_catchup(cluster))
    shutil.rmtree(sdk_script.parent, ignore_errors=True)
    results.update(
        cluster_2_vs_1_node_single=results["cluster_2_nodes_single_events_s"]
        / results["cluster_1_node_single_events_s"],
        cluster_2_vs_1_node_batched=results["cluster_2_nodes_batched_events_s"]
        / results["cluster_1_node_batched_events_s"],
        cluster_batched_vs_raw=results["cluster_1_node_batched_events_s"]
        / results["raw_nats_batched_events_s"],
        cluster_single_vs_raw=results["cluster_1_node_single_events_s"]
        / results["raw_nats_single_events_s"],
        cluster_2_nodes_single_vs_file=results["cluster_2_nodes_single_events_s"]
        / results["file_single_events_s"],
        cluster_2_nodes_batched_vs_file=results["cluster_2_nodes_batched_events_s"]
        / results["file_batched_events_s"],
    )
    return results


def sdk_rounds(cluster, scripts, seconds):
    """SDK events/s in SDK_ROUNDS rounds, for each of `scripts` ({name: wrk script}): through
    the single machine, then the cluster's one ingest node, then both. Each measure is the
    rounds' median, with their spread; each ratio is taken within a round, then its median,
    so that the box's drift from minute to minute (a fifth or more: docs/benchmarks.md)
    falls on both sides of it alike. Each round's single machine is a fresh one (its dedupe
    window empty: a window that fills slows it, round after round), started beside the
    cluster, idle then. With each one-install measure, the milliseconds of CPU a request
    (100 events) of the single machine's ingest, of the cluster's ingest node and of its
    three NATS servers: what says which of them bounds the rate."""
    one, both = [cluster.port(1)], [cluster.port(1), cluster.port(2)]
    rounds = collections.defaultdict(list)
    for _ in range(SDK_ROUNDS):
        with ingest_server(fsync=True) as (port, _):
            for name, script in scripts.items():
                run_wrk(port, str(script), seconds=1)
                pid, before = PIDS[port], cpu_seconds(PIDS[port])
                rate = run_wrk(port, str(script), seconds)["rate"]
                rounds[f"file_{name}_events_s"].append(rate * BATCH)
                rounds[f"file_{name}_cpu_ms"].append(
                    1000 * (cpu_seconds(pid) - before) / (rate * seconds))
        for name, script in scripts.items():
            before = cluster.cpu_seconds()
            rate, _ = wrk_on(one, str(script), seconds)
            after, requests = cluster.cpu_seconds(), rate * seconds
            rounds[f"cluster_1_node_{name}_events_s"].append(rate * BATCH)
            rounds[f"cluster_1_node_{name}_cpu_ms"].append(
                1000 * (after["ingest-1"] - before["ingest-1"]) / requests)
            rounds[f"cluster_1_node_{name}_nats_cpu_ms"].append(
                1000 * sum(after[n] - before[n] for n in after if n.startswith("nats"))
                / requests)
            rate, _ = wrk_on(both, str(script), seconds)
            rounds[f"cluster_2_nodes_{name}_events_s"].append(rate * BATCH)
    results = {}
    for name in scripts:
        for ratio, top, bottom in (
                (f"cluster_1_node_{name}_vs_file", f"cluster_1_node_{name}_events_s",
                 f"file_{name}_events_s"),
                (f"cluster_2_vs_1_node_{name}", f"cluster_2_nodes_{name}_events_s",
                 f"cluster_1_node_{name}_events_s")):
            rounds[ratio] = [a / b for a, b in zip(rounds[top], rounds[bottom])]
    for key, values in rounds.items():
        results[key] = statistics.median(values)
        results[f"{key}_spread"] = (min(values), max(values))
    return results


def time_catchup(cluster):
    """Start the workers on the backlog the measurements left; time them to lag 0."""
    def counted(partitions):  # raw nats-py's are no partition of the engine's
        return [p for p in partitions if p["partition"] != RAW_PARTITION]

    _, stats = cluster.get(1, "/stats")
    messages = sum(p["stream_messages"] for p in counted(stats["partitions"]))
    started = time.monotonic()
    cluster.ctl("start", "worker:*")

    def caught_up():
        status, now = cluster.get(1, "/stats")
        return status == 200 and all(p["lag_messages"] == 0
                                     for p in counted(now["partitions"]))

    cluster.wait(caught_up, "the workers to catch up", timeout=600)
    elapsed = time.monotonic() - started
    _, counts = cluster.get(1, "/counts?top=1")
    return {"catchup_stream_messages": messages, "catchup_stream_events": counts["events"],
            "catchup_stream_s": elapsed, "catchup_stream_messages_s": messages / elapsed,
            "catchup_stream_events_s": counts["events"] / elapsed}


ROWS = [
    ("Single machine, fsync on: single events/s", "file_single_events_s", "{:,.0f}"),
    ("Single machine, fsync on: batched events/s (100 a batch)", "file_batched_events_s",
     "{:,.0f}"),
    ("Cluster, 1 ingest node: single events/s", "cluster_1_node_single_events_s", "{:,.0f}"),
    ("Cluster, 2 ingest nodes: single events/s", "cluster_2_nodes_single_events_s", "{:,.0f}"),
    ("Cluster, 1 ingest node: batched events/s", "cluster_1_node_batched_events_s", "{:,.0f}"),
    ("Cluster, 2 ingest nodes: batched events/s", "cluster_2_nodes_batched_events_s", "{:,.0f}"),
    ("Single machine, fsync on: SDK events/s (bench/sdk.py's batches of 100)",
     "file_sdk_events_s", "{:,.0f}"),
    ("Cluster, 1 ingest node: SDK events/s (a message per request and partition)",
     "cluster_1_node_sdk_events_s", "{:,.0f}"),
    ("Cluster, 2 ingest nodes: SDK events/s", "cluster_2_nodes_sdk_events_s", "{:,.0f}"),
    ("  cluster (1 node) / single machine, SDK events", "cluster_1_node_sdk_vs_file", "{:.2f}"),
    ("  2 ingest nodes / 1, SDK events", "cluster_2_vs_1_node_sdk", "{:.2f}x"),
    ("Single machine, fsync on: SDK events/s, one install a request (as the SDKs send)",
     "file_sdk_one_install_events_s", "{:,.0f}"),
    ("Cluster, 1 ingest node: SDK events/s, one install a request",
     "cluster_1_node_sdk_one_install_events_s", "{:,.0f}"),
    ("  CPU a request (ms): the single machine's ingest", "file_sdk_one_install_cpu_ms",
     "{:.2f}"),
    ("  CPU a request (ms): the cluster's ingest node", "cluster_1_node_sdk_one_install_cpu_ms",
     "{:.2f}"),
    ("  CPU a request (ms): the cluster's three NATS servers",
     "cluster_1_node_sdk_one_install_nats_cpu_ms", "{:.2f}"),
    ("Cluster, 2 ingest nodes: SDK events/s, one install a request",
     "cluster_2_nodes_sdk_one_install_events_s", "{:,.0f}"),
    ("  cluster (1 node) / single machine, one install a request",
     "cluster_1_node_sdk_one_install_vs_file", "{:.2f}"),
    ("  2 ingest nodes / 1, one install a request", "cluster_2_vs_1_node_sdk_one_install",
     "{:.2f}x"),
    ("Raw nats-py, 16 in flight: 1 id a message (events/s)", "raw_nats_single_events_s", "{:,.0f}"),
    ("Raw nats-py, 16 in flight: 100 ids a message (events/s)", "raw_nats_batched_events_s",
     "{:,.0f}"),
    ("  2 ingest nodes / 1, single events", "cluster_2_vs_1_node_single", "{:.2f}x"),
    ("  2 ingest nodes / 1, batched events", "cluster_2_vs_1_node_batched", "{:.2f}x"),
    ("  cluster batched / raw nats-py batched (1 node)", "cluster_batched_vs_raw", "{:.2f}"),
    ("  cluster single / raw nats-py single (1 node)", "cluster_single_vs_raw", "{:.2f}"),
    ("  cluster (2 nodes) / single machine, single events", "cluster_2_nodes_single_vs_file",
     "{:.2f}"),
    ("  cluster (2 nodes) / single machine, batched events", "cluster_2_nodes_batched_vs_file",
     "{:.2f}"),
    ("p99 latency, single events, 1 ingest node (ms)", "cluster_1_node_single_p99_ms", "{:.1f}"),
    ("p99 latency, single events, 2 ingest nodes (ms)", "cluster_2_nodes_single_p99_ms",
     "{:.1f}"),
    ("Worker catch-up from the stream (messages/s)", "catchup_stream_messages_s", "{:,.0f}"),
    ("Worker catch-up from the stream (events/s)", "catchup_stream_events_s", "{:,.0f}"),
]


# The cluster's targets for SDK events (docs/benchmarks.md, Cluster mode): one ingest node
# carries at least this share of the single machine's, and two nodes more than one.
TARGETS = {
    "cluster_1_node_sdk_vs_file": (0.8, "{:.2f}", "at least"),
    "cluster_1_node_sdk_one_install_vs_file": (0.8, "{:.2f}", "at least"),
    "cluster_2_vs_1_node_sdk": (1.0, "{:.2f}x", "above"),
    "cluster_2_vs_1_node_sdk_one_install": (1.0, "{:.2f}x", "above"),
}


def rows(results):
    """(label, formatted value) for the bench's table, cores per process included, and each
    target beside its measure."""
    shown = []
    for label, key, fmt in ROWS:
        if key in results:
            value = fmt.format(results[key])
            if f"{key}_spread" in results:  # a median of rounds (sdk_rounds)
                low, high = results[f"{key}_spread"]
                value = f"{value} ({fmt.format(low)} to {fmt.format(high)})"
            if key in TARGETS:
                target, form, relation = TARGETS[key]
                value = against(value, results[key], target, form, relation)
            shown.append((label, value))
    for name in ("ingest-1", "ingest-2", "nats-1", "nats-2", "nats-3"):
        key = f"cores_used_{name}"
        if key in results:
            shown.append((f"Cores used by {name}, 2 nodes, single events", f"{results[key]:.2f}"))
    return shown
