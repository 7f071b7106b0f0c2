"""Load with a ledger: 32 concurrent connections post unique ids for 30 s against the
processes supervisord runs (half of them single events, half batches of 10), while a chaos
loop SIGKILLs the worker and the ingest at random. Afterwards every acknowledged id is
counted exactly once, every other id at most once, and nothing is counted that was never
sent (Jepsen's set checker, in spirit)."""

import random
import subprocess
import sys

import pytest

from http_client import wait_for
from ledger import InvariantWatcher, Posters, check_ledgers, check_series_ledgers
from reference import caught_up, check_invariant, read_checkpoint, read_series

pytestmark = pytest.mark.slow

DURATION = 30
# Kills of each program, at the least, however slow the machine: the turns go on past
# DURATION until there were as many.
KILLS = 5
CONNECTIONS = 32


def test_chaos_under_load_with_a_ledger(supervisor):
    rng = random.Random()
    sup = supervisor(interval=0.05)
    singles = Posters(sup.port, CONNECTIONS // 2)
    batches = Posters(sup.port, CONNECTIONS // 2, batch_size=10, first_id=10**12)
    with InvariantWatcher(sup.state_dir) as watcher, singles, batches:
        # The invariant has something to check once a first checkpoint exists (data2 is then
        # never removed); under a busy machine a worker killed early and often might never
        # commit during the chaos, and the watcher would see nothing.
        wait_for(lambda: read_checkpoint(sup.state_dir), 60, what="a first checkpoint")
        kills = sup.kill_in_turn(DURATION, rng, at_least=KILLS)
        wait_for(sup.all_running, what="both programs back")
        acked = len(singles.acked), len(batches.acked)
        wait_for(lambda: len(singles.acked) > acked[0] and len(batches.acked) > acked[1],
                 what="acknowledgements after the chaos")
    final = wait_for(lambda: caught_up(sup.state_dir) and check_invariant(sup.state_dir),
                     timeout=60, what="the worker to catch up")
    check_ledgers(final["counts"], singles, batches)
    wait_for(lambda: read_series(sup.state_dir)[0] == final["offset"], what="the series")
    check_series_ledgers(sup.state_dir, singles, batches)
    # A recount from data1 and its time index gives exactly the same series and counts.
    assert sup.ctl("stop", "worker").returncode == 0
    before = read_series(sup.state_dir)
    rebuild = subprocess.run([sys.executable, "-m", "worker", "rebuild"], cwd=sup.root,
                             env=sup.env, capture_output=True, text=True, timeout=120)
    assert rebuild.returncode == 0, rebuild.stderr
    assert read_series(sup.state_dir) == before
    assert check_invariant(sup.state_dir)["counts"] == final["counts"]
    assert kills["ingest"] >= KILLS and kills["worker"] >= KILLS
    assert watcher.observations > 50
    for name, posters in (("single events", singles), ("batched events", batches)):
        print(
            f"\nchaos, {name}: sent {len(posters.sent)}, acked {len(posters.acked)}, "
            f"unknown {len(posters.unknown)}, refused {len(posters.refused)}"
        )
    minutes = sum(1 for (e, _), _n in before[1].items() if e == -1)
    print(f"chaos: {DURATION}s, {CONNECTIONS} connections, kills {kills}, "
          f"invariant observations {watcher.observations} "
          f"(series {watcher.series_observations}), minutes with events {minutes}")
