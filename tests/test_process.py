"""storage/process.py's CPU placement, on real processes: the ingest's threads on its core
under SCHED_BATCH, the worker off it, and `all` leaving both alone; and the ingest's limit
on open files."""

import contextlib
import logging
import os
import resource
import socket
import sys
from pathlib import Path

import pytest

from http_client import post, request, wait_for
from storage import process

ALLOWED = os.sched_getaffinity(0)
needs_two_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two CPUs to choose from")


def thread_affinities(pid):
    """The CPU list of each thread of `pid` (threads inherit it from their creator)."""
    return sorted(
        line.split(":")[1].strip()
        for task in Path(f"/proc/{pid}/task").iterdir()
        for line in (task / "status").read_text().splitlines()
        if line.startswith("Cpus_allowed_list")
    )


def thread_policies(pid):
    """The scheduling policy of each thread of `pid`."""
    return [os.sched_getscheduler(int(task.name)) for task in Path(f"/proc/{pid}/task").iterdir()]


def cpu_list(cpus):
    return ",".join(map(str, sorted(cpus))) if len(cpus) < 2 or max(cpus) - min(cpus) + 1 != len(
        cpus) else f"{min(cpus)}-{max(cpus)}"


@needs_two_cpus
@pytest.mark.parametrize("setting, expected", [("", max(ALLOWED)), (str(min(ALLOWED)), min(ALLOWED))])
def test_the_ingest_runs_on_its_cpu(procs, state_dir, setting, expected):
    ingest = procs.ingest(state_dir, ingest_cpu=setting)
    assert os.sched_getaffinity(ingest.pid) == {expected}
    # waitress's threads too; all but the dedupe index's writer, whose SQLite work runs
    # without the GIL and so is let onto every CPU (storage/log/seen_index.py)
    def one_thread_unpinned():
        affinities = thread_affinities(ingest.pid)
        return affinities.count(cpu_list(ALLOWED)) == 1 and affinities

    affinities = wait_for(one_thread_unpinned, what="the dedupe index's writer unpinned")
    assert set(affinities) == {str(expected), cpu_list(ALLOWED)} and len(affinities) > 16
    # every thread without wakeup preemption: they share one core and one GIL
    assert set(thread_policies(ingest.pid)) == {os.SCHED_BATCH}
    assert f"ingest: running on CPU {expected}, SCHED_BATCH" in ingest.log_path.read_text()


def test_all_leaves_the_affinity_alone(procs, state_dir):
    ingest = procs.ingest(state_dir, ingest_cpu="all")
    assert os.sched_getaffinity(ingest.pid) == ALLOWED
    assert set(thread_policies(ingest.pid)) == {os.SCHED_OTHER}
    assert "CPU affinity left as it is" in ingest.log_path.read_text()


@needs_two_cpus
def test_the_worker_keeps_off_the_ingests_cpu(procs, state_dir):
    cpu = max(ALLOWED)
    worker = procs.worker(state_dir, ingest_cpu=cpu)
    wait_for(lambda: "worker: running on CPU" in worker.log_path.read_text(), what="the worker")
    assert os.sched_getaffinity(worker.pid) == ALLOWED - {cpu}


def test_without_affinity_support_it_starts_anyway_and_says_so(monkeypatch, caplog):
    monkeypatch.delattr(os, "sched_setaffinity")
    caplog.set_level(logging.INFO)
    process.place_on_cpus("ingest", 1)  # returns: nothing to pin with, nothing raised
    assert "CPU affinity is not supported here; running unpinned" in caplog.text


def test_the_ingest_keeps_to_two_malloc_arenas_unless_malloc_arena_max_says(monkeypatch,
                                                                            caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    process.limit_malloc_arenas("ingest")
    assert "ingest: at most 2 malloc arenas" in caplog.text
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # an operator's choice: glibc applied it
    process.limit_malloc_arenas("ingest")
    assert "ingest: malloc arenas as MALLOC_ARENA_MAX says (4)" in caplog.text


def test_the_ingest_raises_its_open_files_limit_to_the_hard_limit(procs, state_dir):
    """Under a soft limit of 64, an ingest that kept it could not accept 100 clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 512:
        pytest.skip(f"the hard limit on open files here is {hard}")

    # The limit set in a process of its own that then becomes the ingest (exec), rather than
    # in a preexec_fn, which is unsafe in a process with threads.
    low_soft_limit = [sys.executable, "-c",
                      "import os, resource, sys; "
                      f"resource.setrlimit(resource.RLIMIT_NOFILE, (64, {hard})); "
                      "os.execv(sys.argv[1], sys.argv[1:])"]
    ingest = procs.ingest(state_dir, launcher=low_soft_limit)
    wanted = process.OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else hard
    assert f"ingest: open files limit 64 -> {wanted}" in ingest.log_path.read_text()
    with contextlib.ExitStack() as stack:
        for _ in range(100):  # idle clients, each holding a connection (a file) open
            client = stack.enter_context(socket.create_connection(("127.0.0.1", ingest.port),
                                                                  timeout=10))
            client.sendall(b"GET /counts HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(12) == b"HTTP/1.1 200"
        assert post(ingest.port, {"experienceID": 7})[0] == 202


def test_the_ingest_serves_descriptors_past_select_s_1024(procs, state_dir):
    """Its loop polls: every socket it opens here is numbered past 1100, where select() would
    fail at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"the hard limit on open files here is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        with open(os.devnull, "rb") as null:
            taken = [os.dup(null.fileno()) for _ in range(1100)]
        try:
            ingest = procs.ingest(state_dir, popen={"pass_fds": taken})
        finally:
            for fd in taken:
                os.close(fd)
        assert post(ingest.port, {"experienceID": 7})[0] == 202
        assert request(ingest.port, "GET", "/counts")[0] == 200
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("limits, refuse, level, said", [
    ((1024, 1024), False, "WARNING", "open files limit 1024: a busy ingest may run out"),
    ((1024, 8192), True, "WARNING", "open files limit 1024 (raising it to 8192 was refused"),
    ((1024, resource.RLIM_INFINITY), False, "INFO", "open files limit 1024 -> 65536"),
    ((8192, 8192), False, "INFO", "open files limit 8192"),
])
def test_a_low_or_fixed_open_files_limit_is_said_in_the_log(monkeypatch, caplog, limits,
                                                            refuse, level, said):
    set_to = []

    def setrlimit(which, values):
        if refuse:
            raise ValueError("not allowed")
        set_to.append(values)

    monkeypatch.setattr(process.resource, "getrlimit", lambda which: limits)
    monkeypatch.setattr(process.resource, "setrlimit", setrlimit)
    caplog.set_level(logging.INFO)
    process.raise_open_files_limit("ingest")
    (record,) = caplog.records
    assert record.levelname == level and said in record.getMessage()
    assert set_to == ([(65536, limits[1])] if limits[1] == resource.RLIM_INFINITY else [])
