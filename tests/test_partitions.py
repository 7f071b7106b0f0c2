"""Cluster mode under network partitions, with a ledger (tests/partition_harness.py cuts the
network; tests/cluster_checker.py and tests/ledger.py judge).

Each schedule runs nemeses in rounds while clients post to both ingest nodes: isolate the
stream leader's machine; split a majority from a minority; a bridge (one machine sees both
halves); flapping partitions; a worker cut off while its leases are valid; an ingest node
cut off; and a machine's ingest node and worker killed together. Between rounds the network
heals, and the cluster must be healthy again (a stream leader, every replica current, every
partition counted) within the take-over time and an election's.

Afterwards: every 202 is counted exactly once, every unknown at most once, every refusal
never; no node's reads and no checkpoint ever went backwards; each partition's checkpoint
equals a recount of the stream, and its commits are one chain (no two workers committed the
same revision). With NEMESIS_ROUNDS set (`make partitions`), each schedule runs that many
rounds rather than CI's two.
"""

import datetime
import os
import random
import socket
import time

import pytest

from cluster_checker import Watcher, check_partitions
from http_client import wait_for
from ledger import Posters, check_ledgers
from partition_harness import INGEST_MACHINES, MACHINES, PartitionedCluster
from processes import short_temp_dir
from storage.stream.link import Link

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

ROUNDS = int(os.environ.get("NEMESIS_ROUNDS", "2"))
TAKEOVER = 3
CUT_SECONDS = (2.0, 6.0)  # how long a cut lasts, at random within
# Beyond the take-over time: a leader election (about 7 s, docs/cluster.md) and the worker's
# first look, with room for a busy machine.
HEALING_ALLOWANCE = TAKEOVER + 45


def machine_of(program):
    return int(program.rsplit("-", 1)[1])


def isolate_leader(cluster, rng):
    """The stream leader's machine cut from the others until they elect a new leader."""
    leader = wait_for(cluster.stream_leader, 30, what="a stream leader")
    cluster.isolate(machine_of(leader))
    majority = [m for m in MACHINES if m != machine_of(leader)]
    elected = wait_for(lambda: (found := cluster.stream_leader(majority)) not in (None, leader)
                       and found, 60, what="the majority to elect a new leader")
    return f"isolated {leader}'s machine, {elected} elected"


def split(cluster, rng):
    minority = rng.choice(MACHINES)
    cluster.isolate(minority, rng.choice(("silent", "reset")))
    return f"machine {minority} apart from the other two"


def bridge(cluster, rng):
    middle = rng.choice(MACHINES)
    a, b = [m for m in MACHINES if m != middle]
    cluster.cut_machines(a, b)
    return f"machines {a} and {b} cut apart, {middle} seeing both"


def flapping(cluster, rng):
    cuts = []
    deadline = time.monotonic() + rng.uniform(*CUT_SECONDS) * 2
    while time.monotonic() < deadline:
        cluster.heal()
        a, b = rng.sample(MACHINES, 2)
        how = rng.choice(("silent", "reset"))
        cluster.cut_machines(a, b, how)
        cuts.append(f"{a}|{b} {how}")
        time.sleep(rng.uniform(0.3, 1.5))  # the flapping itself is what is tested
    return "flapping: " + ", ".join(cuts)


def worker_cut_off(cluster, rng):
    """The worker counting the most partitions, cut off from every NATS node while its
    leases are valid; the cut lasts past the take-over time, so they are taken over."""
    # /stats may go unanswered a moment on a loaded machine: asked until it names owners.
    owners = wait_for(lambda: (found := cluster.owners()) and set(found.values()) - {None}
                      and found, HEALING_ALLOWANCE, what="the partitions' owners")
    busiest = max(set(owners.values()) - {None}, key=list(owners.values()).count)
    program = next(name for name in cluster.program_names() if name.startswith("worker")
                   and busiest == f"worker@{socket.gethostname()}:{cluster.processes[name].pid}")
    cluster.cut_off(program)
    wait_for(lambda: (now := cluster.owners()) and busiest not in now.values()
             and None not in now.values(), HEALING_ALLOWANCE,
             what=f"{program}'s partitions taken over")
    return f"{program} cut off ({sum(1 for o in owners.values() if o == busiest)} partitions)"


def ingest_cut_off(cluster, rng):
    """An ingest node cut off from every NATS node: it answers its writes 503 (refused, or
    unknown if a publish was under way) while the other keeps taking them."""
    m = rng.choice(INGEST_MACHINES)
    cluster.cut_off(f"ingest-{m}", rng.choice(("silent", "reset")))
    return f"ingest-{m} cut off"


def kill_machine(cluster, rng):
    """A machine's ingest node and worker SIGKILLed together (its NATS node lives on), while
    the clients keep sending to both ingest nodes; once the other workers took its
    partitions over, the machine's programs come back (the round restarts them)."""
    m = rng.choice(INGEST_MACHINES)
    owner = f"worker@{socket.gethostname()}:{cluster.processes[f'worker-{m}'].pid}"
    held = wait_for(lambda: sum(1 for found in cluster.owners().values() if found == owner),
                    HEALING_ALLOWANCE, what=f"worker-{m} to hold a share")
    for program in (f"ingest-{m}", f"worker-{m}"):
        cluster.kill(program)
    wait_for(lambda: (owners := cluster.owners()) and owner not in owners.values()
             and None not in owners.values(), HEALING_ALLOWANCE,
             what=f"worker-{m}'s partitions taken over")
    return f"killed ingest-{m} and worker-{m} ({held} partitions taken over)"


SCHEDULES = {
    "isolate-leader": isolate_leader,
    "majority-minority": split,
    "bridge": bridge,
    "flapping": flapping,
    "worker-cut-off": worker_cut_off,
    "ingest-cut-off": ingest_cut_off,
    "kill-machine": kill_machine,
}


@pytest.fixture
def partitioned(procs):
    root = short_temp_dir()
    started = []

    def start(**settings):
        cluster = PartitionedCluster(procs, root, **settings)
        started.append(cluster)
        cluster.start()
        return cluster

    yield start
    for cluster in started:
        cluster.close()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_network_partitions_with_a_ledger(partitioned, schedule):
    rng = random.Random()
    cluster = partitioned(takeover=TAKEOVER)
    began = time.time()
    hours = (f"from={hour_of(began)}&to={hour_of(time.time() + 3600 * 2)}")
    posters = [Posters(cluster.ingest_port(1), 2), Posters(cluster.ingest_port(2), 2,
                                                           first_id=10**9),
               Posters(cluster.ingest_port(1), 1, batch_size=10, first_id=2 * 10**9)]
    rounds, healed_in = [], []
    with Watcher(cluster, hours) as watcher:
        for poster in posters:
            poster.__enter__()
        try:
            watcher.watched()  # before the first cut
            for _ in range(ROUNDS):
                acked = sum(len(poster.acked) for poster in posters)
                wait_for(lambda: sum(len(poster.acked) for poster in posters) > acked + 20, 60,
                         what="traffic before the cut")
                what = SCHEDULES[schedule](cluster, rng)
                time.sleep(rng.uniform(*CUT_SECONDS))  # the cut itself is what is tested
                cluster.heal()
                for program, code in cluster.exited().items():
                    if schedule == "kill-machine":
                        cluster.start_program(program)  # the machine comes back
                    else:
                        raise AssertionError(f"{program} exited with {code} during {what}:\n"
                                             f"{cluster.log(program)[-3000:]}")
                healed = time.monotonic()
                wait_for(cluster.healthy, HEALING_ALLOWANCE,
                         what=f"the cluster healthy after {what}")
                healed_in.append(time.monotonic() - healed)
                rounds.append(what)
            acked = [len(poster.acked) for poster in posters]
            wait_for(lambda: all(len(p.acked) > n for p, n in zip(posters, acked)), 60,
                     what="acknowledgements after the last round")
            watcher.watched()  # after the last heal
        finally:
            for poster in posters:
                poster.__exit__(None, None, None)

    def caught_up():
        stats = cluster.stats()
        return stats and stats["lag_messages"] == 0 and stats

    wait_for(caught_up, 60, what="every message counted")
    for n in INGEST_MACHINES:
        check_ledgers(cluster.counts(n)["counts"], *posters)
    link = Link(cluster.servers, "checker")
    try:
        chains = check_partitions(link, cluster.partitions)
    finally:
        link.close()
    owners = {partition: len({owner for _, _, owner, _ in chain})
              for partition, chain in chains.items()}
    print(f"\n{schedule}: {'; '.join(rounds)}; healthy again in "
          f"{', '.join(f'{s:.1f}' for s in healed_in)} s; "
          f"{sum(len(p.acked) for p in posters)} acknowledged, "
          f"{sum(len(p.unknown) for p in posters)} unknown, "
          f"{sum(len(p.refused) for p in posters)} refused; leaders "
          f"{' -> '.join(watcher.leaders)}; owners per partition in its kept commits {owners}; "
          f"{watcher.observations} checkpoint observations, {watcher.reads} reads watched")
    assert watcher.observations and watcher.reads


def hour_of(moment):
    start = datetime.datetime.fromtimestamp(moment - moment % 3600, datetime.timezone.utc)
    return start.strftime("%Y-%m-%dT%H:%M:%SZ")
