"""Simulated SDKs against the processes supervisord runs, with the SDKs' queue rules (chunks of
100, dropped on a 4xx, kept and sent again on a 5xx, a timeout or a cut connection), while a
chaos loop SIGKILLs the ingest and the worker. Afterwards the devices' ledger equals the
counts: every screen view counted exactly once, none lost, none doubled, none dropped."""

import random
import subprocess
import sys

import pytest

from http_client import wait_for
from reference import caught_up, check_invariant
from sdk_client import SimulatedSdks
from storage.log import details

pytestmark = pytest.mark.slow

DURATION = 20
# Kills of each program, at the least, however slow the machine: the turns go on past
# DURATION until there were as many.
KILLS = 5


def stored_event_ids(state_dir):
    with open(state_dir / "data1.details", "rb") as file:
        return [item["event"]["id"] for group in details.read_groups(file.fileno())
                for item in group.events()[1]]


def rebuilt(sup):
    """data2 after the worker is stopped and `python -m worker rebuild` counted data1 again,
    the invariant checked."""
    assert sup.ctl("stop", "worker").returncode == 0
    rebuild = subprocess.run([sys.executable, "-m", "worker", "rebuild"], cwd=sup.root,
                             env=sup.env, capture_output=True, text=True, timeout=120)
    assert rebuild.returncode == 0, rebuild.stderr
    return check_invariant(sup.state_dir)


def test_sdk_retries_through_kills_are_counted_exactly_once(supervisor):
    rng = random.Random()
    sup = supervisor(interval=0.05)
    with SimulatedSdks(sup.port, devices=8) as sdks:
        kills = sup.kill_in_turn(DURATION, rng, moment=(0.2, 1.0), at_least=KILLS)
        sdks.stop_viewing()
        wait_for(sdks.drained, timeout=120, what="every device's queue to drain")
    final = wait_for(lambda: caught_up(sup.state_dir) and check_invariant(sup.state_dir),
                     timeout=60, what="the worker to catch up")
    assert sdks.dropped_for_4xx == []
    assert final["counts"] == {str(e): n for e, n in sdks.viewed.items()}  # the ledger
    stored = stored_event_ids(sup.state_dir)
    assert len(stored) == len(set(stored))  # no retry stored twice
    assert set(stored) == sdks.event_ids  # every event (identifies too) kept once
    # A recount from data1 gives the same counts: each retry is in data1 once, not counted
    # away afterwards.
    assert rebuilt(sup)["counts"] == final["counts"]
    assert kills["ingest"] >= KILLS and kills["worker"] >= KILLS
    assert sdks.answers["cut"] > 0 and sdks.duplicates_answered > 0
    print(f"\nsdk chaos: {DURATION}s, kills {kills}, screen views {sum(sdks.viewed.values())}, "
          f"events {len(sdks.event_ids)}, answers {dict(sdks.answers)}, duplicates answered "
          f"{sdks.duplicates_answered}")


def test_two_projects_through_kills_each_count_their_own_ledger(supervisor, tmp_path):
    """The same with projects (docs/projects.md): two apps' simulated SDKs, each with its
    project's write token, while the ingest and the worker are killed in turn. Each project's
    counts are its devices' ledger, its details hold its events once, and a rebuild gives
    the same."""
    rng = random.Random()
    tokens = {"alpha": "alpha-write-012345678", "bravo": "bravo-write-012345678"}
    projects_file = tmp_path / "projects.toml"
    projects_file.write_text("".join(f'[projects.{name}]\nwrite_tokens = ["{token}"]\n'
                                     for name, token in tokens.items()))
    sup = supervisor(interval=0.05, projects_file=projects_file)
    with SimulatedSdks(sup.port, devices=4, token=tokens["alpha"]) as alpha, \
            SimulatedSdks(sup.port, devices=4, token=tokens["bravo"]) as bravo:
        kills = sup.kill_in_turn(DURATION, rng, moment=(0.2, 1.0), at_least=KILLS)
        for sdks in (alpha, bravo):
            sdks.stop_viewing()
        wait_for(lambda: alpha.drained() and bravo.drained(), timeout=120,
                 what="every device's queue to drain")
    final = wait_for(lambda: caught_up(sup.state_dir) and check_invariant(sup.state_dir),
                     timeout=60, what="the worker to catch up")
    assert final["counts"] == {}  # nothing of the default project
    stored = stored_event_ids_by_project(sup.state_dir)
    for name, sdks in (("alpha", alpha), ("bravo", bravo)):
        assert sdks.dropped_for_4xx == []
        assert final["projects"][name]["counts"] == {
            str(e): n for e, n in sdks.viewed.items()}  # its ledger
        assert len(stored[name]) == len(set(stored[name]))  # no retry stored twice
        assert set(stored[name]) == sdks.event_ids
    assert rebuilt(sup)["projects"] == final["projects"]
    assert kills["ingest"] >= KILLS and kills["worker"] >= KILLS


def stored_event_ids_by_project(state_dir):
    stored = {}
    with open(state_dir / "data1.details", "rb") as file:
        for group in details.read_groups(file.fileno()):
            project, items = group.events()
            stored.setdefault(project, []).extend(item["event"]["id"] for item in items)
    return stored
