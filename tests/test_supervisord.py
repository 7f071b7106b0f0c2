"""The shipped supervisord.conf, run for real: start, status, restart worker, stop and start."""

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys

from http_client import free_port, post, request, wait_for
from ledger import Posters, check_ledgers
from processes import REPO, Supervisor
from reference import caught_up, check_invariant, read_checkpoint


def counts_once_caught_up(state_dir):
    return wait_for(lambda: caught_up(state_dir) and check_invariant(state_dir),
                    what="the worker to catch up")["counts"]


def test_restart_worker_keeps_counts_exact(supervisor):
    sup = supervisor(interval=0.2)
    assert stat.S_IMODE((sup.state_dir / "supervisor.sock").stat().st_mode) == 0o700
    # The caller's environment reaches the worker (its start line may follow the ingest's
    # readiness: the worker imports more before it logs).
    wait_for(lambda: "interval=0.2s" in sup.log(), what="the worker's start line")

    for experience_id in (1, 100, 1):
        assert post(sup.port, {"experienceID": experience_id})[0] == 202
    assert counts_once_caught_up(sup.state_dir) == {"1": 2, "100": 1}

    old_pid = sup.pid("worker")
    assert sup.ctl("restart", "worker").returncode == 0
    wait_for(lambda: sup.pid("worker") not in (None, old_pid), what="a new worker")
    assert post(sup.port, {"experienceID": 1})[0] == 202
    assert counts_once_caught_up(sup.state_dir) == {"1": 3, "100": 1}
    assert "resuming from checkpoint: offset 8" in sup.log()


def test_restarts_under_load_lose_and_double_nothing(supervisor):
    sup = supervisor(interval=0.05)
    with Posters(sup.port) as posters:
        for program in ("worker", "ingest", "worker"):
            acked = len(posters.acked)
            wait_for(lambda: len(posters.acked) > acked + 50, what="traffic")
            assert sup.ctl("restart", program).returncode == 0
        wait_for(sup.http_ready, what="the ingest")
        acked = len(posters.acked)
        wait_for(lambda: len(posters.acked) > acked + 50, what="traffic after the restarts")
    counts = counts_once_caught_up(sup.state_dir)
    check_ledgers(counts, posters)
    # SIGTERM lets the ingest finish what it was doing: a request it wrote was also answered.
    # (A request sent on a kept-alive connection as the server closes it is refused unwritten,
    # like in any HTTP server; the client sees a broken connection.)
    written_unanswered = [i for i in posters.unknown if str(i) in counts]
    assert not written_unanswered, f"written but never answered: {written_unanswered}"


def test_stop_and_start(supervisor):
    sup = supervisor(interval=0.2)
    assert sup.ctl("stop", "worker").returncode == 0
    assert sup.status()["worker"] == "STOPPED"
    assert post(sup.port, {"experienceID": 7})[0] == 202
    assert read_checkpoint(sup.state_dir) is None
    assert sup.ctl("start", "worker").returncode == 0
    assert counts_once_caught_up(sup.state_dir) == {"7": 1}
    assert "worker stopped" in sup.log() and "ingest ready" in sup.log()


# --- operations: what an operator sees ----------------------------------------------------

LOG_LINE = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Za-z]")


def test_a_bad_setting_ends_the_run_saying_why(supervisor):
    sup = supervisor(wait=False, interval="abc")
    # Not a crash: nothing restarts it, and a run without it is no run: supervisord ends.
    wait_for(lambda: sup.proc.poll() is not None, 30, what="supervisord to end the run")
    log = sup.log()
    # Both programs read the setting: whichever exits first ends the run (the other may be
    # stopped before it gets there). Neither is started again.
    assert ("exited: worker (exit status 2; expected)" in log
            or "exited: ingest (exit status 2; expected)" in log), log
    assert log.count("spawned: 'worker'") == 1 and log.count("spawned: 'ingest'") == 1
    reason = (sup.root / "state" / "bad-setup").read_text()
    assert reason.startswith("worker cannot run (exit status 2") or \
        reason.startswith("ingest cannot run (exit status 2"), reason
    assert "MINI_ANALYTICS_INTERVAL must be a number of seconds" in reason
    assert f"mini-analytics CRITICAL {reason.strip()}; stopping everything" in log
    lines = (sup.root / "supervisord.out").read_bytes().splitlines()
    assert all(LOG_LINE.match(line) for line in lines), lines
    assert not (sup.state_dir / "data1").exists()


def make(root, target, env):
    """`make TARGET` in the copy at `root`, as a user runs it: with the Makefile, the
    project's .venv (this Python's), and no make of ours around it (`make test` would
    otherwise pass down its level and flags)."""
    if not (root / "Makefile").exists():
        shutil.copy2(REPO / "Makefile", root / "Makefile")
        (root / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    env = {k: v for k, v in env.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    return subprocess.run(["make", "-s", "-o", ".venv/installed", target], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


MAKES_OWN_LINE = re.compile(r"make(\[\d+\])?: ")


def test_a_taken_port_ends_make_run_with_the_reason_last(supervisor):
    sup = Supervisor(supervisor.root, free_port(), interval=0.2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", sup.port))
        taken.listen()
        result = make(supervisor.root, "run", sup.env)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if not MAKES_OWN_LINE.match(line)]
    assert ours[-1].startswith("mini-analytics stopped: ingest cannot run (exit status 2"), \
        result.stderr
    assert f"cannot listen on 127.0.0.1:{sup.port}" in ours[-1]
    assert "Address already in use" in ours[-1]
    # supervisord and the worker ended with the run, none left behind.
    assert sup.ctl("pid", check=False).returncode != 0


def test_a_bad_setup_ends_the_local_cluster_too_with_every_program_failing_at_once(supervisor):
    # Seven programs exit 2 within milliseconds, before the listener is even ready: its
    # buffer holds all their events, and the reason is the one the program gave.
    sup = Supervisor(supervisor.root, free_port(), cluster_port_base="abc")
    sup.conf = supervisor.root / "cluster" / "supervisord.conf"
    sup.start(wait=False)
    try:
        wait_for(lambda: sup.proc.poll() is not None, 30, what="supervisord to end the run")
    finally:
        sup.stop()
    reason = (supervisor.root / "state" / "cluster-bad-setup").read_text()
    assert re.fullmatch(r"(nats|ingest|worker)-\d cannot run \(exit status 2: a bad setup, "
                        r"which a restart cannot mend\): MINI_ANALYTICS_CLUSTER_PORT_BASE must "
                        r"be a number from 1024 to 65400, got 'abc'\n", reason), reason
    assert "overflowed" not in sup.log()


def test_a_crash_does_not_end_the_run(supervisor):
    sup = supervisor(interval=0.2)
    pid = sup.pid("ingest")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: sup.pid("ingest") not in (None, pid), what="a new ingest")
    wait_for(sup.http_ready, what="the ingest to answer again")
    assert sup.proc.poll() is None and not (sup.root / "state" / "bad-setup").exists()


def test_a_killed_program_is_restarted_however_early_and_often(supervisor):
    sup = supervisor(interval=0.2)
    for _ in range(6):  # each within moments of its start: a kill storm never makes it FATAL
        pid = wait_for(lambda: sup.pid("worker"), what="a running worker")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: sup.pid("worker") not in (None, pid), what="a new worker")
    assert post(sup.port, {"experienceID": 9})[0] == 202
    assert counts_once_caught_up(sup.state_dir) == {"9": 1}


def test_health_and_stats_tell_a_stopped_worker(supervisor):
    sup = supervisor(interval=0.1)
    assert post(sup.port, {"experienceID": 1})[0] == 202
    counts_once_caught_up(sup.state_dir)
    status, health = request(sup.port, "GET", "/healthz")
    assert status == 200 and health["worker"]["state"] == "running"
    assert sup.ctl("stop", "worker").returncode == 0
    status, health = request(sup.port, "GET", "/healthz")
    assert status == 503 and "worker stopped" in health["error"]
    assert request(sup.port, "GET", "/stats")[1]["worker"]["state"] == "stopped"
    # The node still takes writes: what a load balancer asks.
    assert request(sup.port, "GET", "/healthz/ingest") == (200, {"status": "ok"})
    assert post(sup.port, {"experienceID": 2})[0] == 202


def test_health_and_stats_tell_a_stalled_worker(supervisor):
    sup = supervisor(interval=0.1, stalled_after=1)
    assert post(sup.port, {"experienceID": 1})[0] == 202
    counts_once_caught_up(sup.state_dir)
    pid = sup.pid("worker")
    os.kill(pid, signal.SIGSTOP)  # a hung worker: alive, holding its lock, counting nothing
    try:
        # An idle system is not stalled, however old its checkpoint.
        assert request(sup.port, "GET", "/stats")[1]["worker"]["state"] == "running"
        assert post(sup.port, {"experienceID": 2})[0] == 202
        stats = wait_for(
            lambda: (s := request(sup.port, "GET", "/stats")[1])["worker"]["state"] == "stalled"
            and s, what="the worker to be reported stalled")
        assert stats["lag_bytes"] == 2 and "waited" in stats["worker"]["reason"]
        status, health = request(sup.port, "GET", "/healthz")
        assert status == 503 and "worker stalled" in health["error"]
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: request(sup.port, "GET", "/healthz")[0] == 200, what="health to come back")


def test_supervisord_from_the_venv_with_a_path_that_lacks_it(supervisor):
    # As after `.venv/bin/supervisord -c supervisord.conf` in a fresh shell: the programs
    # must find the project's .venv themselves.
    root = supervisor.root
    (root / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    sup = supervisor(interval=0.1, path="/usr/bin:/bin")
    assert post(sup.port, {"experienceID": 4})[0] == 202
    assert counts_once_caught_up(sup.state_dir) == {"4": 1}


def test_a_second_start_says_it_is_running(supervisor):
    sup = supervisor(interval=0.2)
    result = make(supervisor.root, "run", sup.env)
    assert result.returncode != 0
    assert "already running" in result.stderr and str(sup.state_dir) in result.stderr
    assert sup.all_running()


def test_make_status_when_nothing_runs_says_so(supervisor):
    sup = Supervisor(supervisor.root, free_port())
    shown = make(supervisor.root, "status", sup.env)
    assert shown.stdout.startswith("mini-analytics is not running (start it with: make run)")
    assert "no such file" not in shown.stdout + shown.stderr
    assert "checkpoint     none yet" in shown.stdout  # and where the worker stands


def test_log_lines_stay_whole_in_a_file(supervisor):
    sup = supervisor(interval=0.05)
    with Posters(sup.port, threads=2):
        for program in ("worker", "ingest", "worker"):
            assert sup.ctl("restart", program).returncode == 0
            wait_for(sup.http_ready, what="the ingest")
    sup.stop()
    lines = (sup.root / "supervisord.out").read_bytes().splitlines()
    assert len(lines) > 20
    garbled = [line for line in lines if not LOG_LINE.match(line)]
    assert not garbled, garbled[:5]
    # Each program also keeps its own log in the state folder.
    assert b"ingest ready" in (sup.state_dir / "logs" / "ingest.log").read_bytes()
    assert b"worker starting" in (sup.state_dir / "logs" / "worker.log").read_bytes()
