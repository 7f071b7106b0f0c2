"""Kill tests: SIGKILL the worker and the ingest at random moments while clients post, then
check every acknowledged event is counted exactly once (a ledger, Jepsen's set checker in
spirit) and that the data1/data2 invariant held at every observation along the way."""

import os
import random
import signal
import time

import pytest

from http_client import wait_for
from ledger import InvariantWatcher, Posters, check_ledgers, check_series_ledgers
from reference import caught_up, check_invariant, read_checkpoint, read_series

pytestmark = pytest.mark.slow

WORKER_KILLS = 30
INGEST_KILLS = 10


def committed_at(state_dir):
    checkpoint = read_checkpoint(state_dir)
    return checkpoint and checkpoint["updated_at"]


def test_sigkill_the_worker_at_random_moments(procs, state_dir):
    """Half the kills land in a worker's start-up or recovery (a random instant of its first
    0.3 s), half in its passes and commits: a random instant up to 50 ms after it was seen
    to commit. So the moments are the worker's, not the clock's: on a machine where a
    worker takes longer than 0.3 s to start, its commits are still killed."""
    rng = random.Random()
    ingest = procs.ingest(state_dir)
    with InvariantWatcher(state_dir) as watcher, Posters(ingest.port) as posters:
        worker = procs.worker(state_dir, interval=0.02)
        for kill in range(WORKER_KILLS):
            if kill % 2:
                watcher.watched()
                before = committed_at(state_dir)
                wait_for(lambda: committed_at(state_dir) != before,
                         what="the restarted worker's first commit")
                time.sleep(rng.uniform(0.0, 0.05))
            else:
                time.sleep(rng.uniform(0.0, 0.3))
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            worker = procs.worker(state_dir, interval=0.02)
    final = wait_for(lambda: caught_up(state_dir) and check_invariant(state_dir), what="catch-up")
    check_ledgers(final["counts"], posters)
    check_series_ledgers(state_dir, posters)
    assert len(posters.acked) > 100 and not posters.unknown and not posters.refused
    assert watcher.observations >= WORKER_KILLS // 2
    print(
        f"\nworker kills: {WORKER_KILLS}, acked events: {len(posters.acked)}, "
        f"invariant observations: {watcher.observations}"
    )


def test_sigkill_the_ingest_under_supervisord(supervisor):
    rng = random.Random()
    sup = supervisor(interval=0.1)
    with InvariantWatcher(sup.state_dir) as watcher, Posters(sup.port) as posters:
        previous = None
        for _ in range(INGEST_KILLS):
            # Each kill hits a new ingest: wait for supervisord to have restarted it.
            pid = wait_for(
                lambda: sup.status().get("ingest") == "RUNNING" and sup.pid("ingest") != previous
                and sup.pid("ingest"),
                what="the ingest to be restarted",
            )
            wait_for(lambda: len(posters.acked) > 0, what="some acknowledgements")
            time.sleep(rng.uniform(0.0, 0.4))
            os.kill(pid, signal.SIGKILL)
            previous = pid
        wait_for(sup.http_ready, what="the ingest to come back")
        acked_before_end = len(posters.acked)
        wait_for(lambda: len(posters.acked) > acked_before_end, what="acks after the last kill")
    final = wait_for(lambda: caught_up(sup.state_dir) and check_invariant(sup.state_dir),
                     what="catch-up")
    check_ledgers(final["counts"], posters)
    wait_for(lambda: read_series(sup.state_dir)[0] == final["offset"], what="the series")
    check_series_ledgers(sup.state_dir, posters)
    wait_for(sup.all_running, what="supervisord to report both programs RUNNING")
    print(
        f"\ningest kills: {INGEST_KILLS}, acked: {len(posters.acked)}, "
        f"unknown: {len(posters.unknown)}, refused: {len(posters.refused)}, "
        f"invariant observations: {watcher.observations}"
    )


def test_sigkill_the_worker_with_two_projects_counts_each_its_own(procs, state_dir, tmp_path):
    """Projects (docs/projects.md): two projects post the same ids, single and in batches,
    while the worker is SIGKILLed at random moments; each project's counts are its own
    ledger's, exactly, and the invariant holds for each at every observation."""
    rng = random.Random()
    tokens = {"alpha": "alpha-write-012345678", "bravo": "bravo-write-012345678"}
    projects_file = tmp_path / "projects.toml"
    projects_file.write_text("".join(f'[projects.{name}]\nwrite_tokens = ["{token}"]\n'
                                     for name, token in tokens.items()))
    ingest = procs.ingest(state_dir, projects_file=projects_file)
    with InvariantWatcher(state_dir) as watcher, \
            Posters(ingest.port, token=tokens["alpha"]) as alpha, \
            Posters(ingest.port, batch_size=20, token=tokens["bravo"]) as bravo:
        worker = procs.worker(state_dir, interval=0.02)
        for kill in range(WORKER_KILLS // 3):
            if kill % 2:  # in its passes and commits, as above
                watcher.watched()
                before = committed_at(state_dir)
                wait_for(lambda: committed_at(state_dir) != before,
                         what="the restarted worker's first commit")
                time.sleep(rng.uniform(0.0, 0.05))
            else:  # in its start-up or recovery
                time.sleep(rng.uniform(0.0, 0.3))
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            worker = procs.worker(state_dir, interval=0.02)
    final = wait_for(lambda: caught_up(state_dir) and check_invariant(state_dir), what="catch-up")
    assert final["counts"] == {} and final["events"] == 0  # no default project's events
    for name, posters in (("alpha", alpha), ("bravo", bravo)):
        check_ledgers(final["projects"][name]["counts"], posters)
        assert len(posters.acked) > 100 and not posters.unknown and not posters.refused
    assert alpha.acked & bravo.acked  # the same ids, in two projects
    assert watcher.observations >= WORKER_KILLS // 3 // 2


@pytest.mark.slow
def test_a_worker_killed_mid_catch_up_resumes_exactly(procs, state_dir):
    # About 80 MB of backlog: more than two of the worker's 32 MiB commit windows.
    pattern = b"1 22 333 4444 55555 0 "
    repeats = 80 * 1024 * 1024 // len(pattern)
    (state_dir / "data1").write_bytes(pattern * repeats)
    size = len(pattern) * repeats

    worker = procs.worker(state_dir, interval=3600)
    partial = wait_for(
        lambda: (cp := read_checkpoint(state_dir)) and 0 < cp["offset"] < size and cp,
        timeout=120, what="a checkpoint in the middle of the catch-up",
    )
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    check_invariant(state_dir)

    procs.worker(state_dir, interval=3600)
    wait_for(lambda: caught_up(state_dir), timeout=120, what="the catch-up to finish")
    final = check_invariant(state_dir)
    expected = {key: repeats for key in ("0", "1", "22", "333", "4444", "55555")}
    assert final["counts"] == expected
    assert partial["events"] < final["events"]  # the kill really came mid-catch-up
