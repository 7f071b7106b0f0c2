"""The worker's operator commands, run as real processes: status and rebuild."""

import datetime
import json
import subprocess
import sys

import pytest

from bench.sdk_shapes import mixed_batch
from http_client import post, wait_for
from processes import REPO, service_env
from reference import caught_up, check_series, read_checkpoint, read_series, valid_counts


def worker_command(state_dir, *args, **settings):
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], cwd=REPO, capture_output=True, text=True,
        timeout=60, env=service_env(state_dir, **settings),
    )


def test_status_while_the_worker_runs(procs, state_dir):
    ingest = procs.ingest(state_dir)
    worker = procs.worker(state_dir, interval=0.05)
    post(ingest.port, {"batch": [{"experienceID": i} for i in (7, 7, 7, 42, 9)]}, path="/batch")
    wait_for(lambda: caught_up(state_dir), what="the worker")
    for _ in range(3):  # takes no lock: never disturbs the running worker
        result = worker_command(state_dir, "status")
        assert result.returncode == 0, result.stderr
    assert worker.poll() is None
    out = result.stdout
    assert "offset         11" in out and "lag            0 bytes" in out
    assert "5 events, 3 experiences, 0 skipped" in out
    top = out.split("experiences\n", 1)[1].split()
    assert top[:2] == ["7", "3"]
    assert "s ago" in out


@pytest.mark.parametrize("store", ["sqlite", "duckdb"])
def test_status_shows_where_the_overview_stands(procs, state_dir, store):
    """While the worker runs (which alone can open overview.duckdb: status asks it), and
    after it stops (status reads the store)."""
    ingest = procs.ingest(state_dir, overview_store=store)
    worker = procs.worker(state_dir, interval=0.05, overview_store=store)
    events, _ = mixed_batch(datetime.datetime.now(datetime.timezone.utc), 20)
    assert post(ingest.port, {"batch": events}, path="/batch?apiVersion=2")[0] == 202
    size = (state_dir / "data1.details").stat().st_size
    line = f"overview       20 SDK events; data1.details offset {size:,} of {size:,} bytes"
    wait_for(lambda: line in worker_command(state_dir, "status", overview_store=store).stdout,
             what="status to show the overview counted")
    worker.terminate()
    assert worker.wait(timeout=30) == 0
    assert line in worker_command(state_dir, "status", overview_store=store).stdout


def test_status_without_and_with_a_bad_checkpoint(state_dir):
    result = worker_command(state_dir, "status")
    assert result.returncode == 0 and "none yet" in result.stdout
    assert "overview       none yet" in result.stdout
    (state_dir / "data2").write_bytes(b"{")
    result = worker_command(state_dir, "status")
    assert result.returncode == 1 and "data2 is unreadable" in result.stderr


def test_rebuild_recounts_from_scratch(state_dir):
    (state_dir / "data1").write_bytes(b"1 100 1 x 5 " * 1000 + b"12")
    # A checkpoint that is well-formed but wrong: rebuild must not trust any of it.
    (state_dir / "data2").write_text(json.dumps(
        {"offset": 4, "counts": {"1": 1}, "skipped": 0, "fingerprint": "0" * 64}
    ))
    result = worker_command(state_dir, "rebuild")
    assert result.returncode == 0, result.stderr
    assert "rebuild [" in result.stderr and "events/s" in result.stderr
    assert result.stderr.count("100.0%") == 1  # the last state of the bar, shown once
    assert "rebuilt data2" in result.stderr
    cp = read_checkpoint(state_dir)
    assert cp["counts"] == valid_counts((state_dir / "data1").read_bytes())
    assert cp["counts"] == {"1": 2000, "100": 1000, "5": 1000}
    assert cp["skipped"] == 1000 and cp["offset"] == 12 * 1000


def test_rebuild_of_an_empty_log_writes_an_empty_checkpoint(state_dir):
    assert worker_command(state_dir, "rebuild").returncode == 0
    assert read_checkpoint(state_dir)["counts"] == {}


def test_rebuild_is_refused_while_a_worker_runs(procs, state_dir):
    worker = procs.worker(state_dir)
    wait_for(lambda: "no checkpoint yet" in worker.log_path.read_text(), what="the worker")
    result = worker_command(state_dir, "rebuild")
    assert result.returncode == 1 and "stop it first" in result.stderr
    assert worker.poll() is None


def test_unknown_command_prints_usage(state_dir):
    result = worker_command(state_dir, "frobnicate")
    assert result.returncode == 2 and "unknown command 'frobnicate'" in result.stderr
    assert "status" in result.stderr and "rebuild" in result.stderr
    result = worker_command(state_dir, "status", "now")
    assert result.returncode == 2 and "status takes no arguments" in result.stderr


def test_help(state_dir):
    result = worker_command(state_dir, "--help")
    assert result.returncode == 0 and "rebuild" in result.stdout


def test_rebuild_reproduces_the_series_exactly(procs, state_dir):
    ingest = procs.ingest(state_dir)
    worker = procs.worker(state_dir)
    for batch in ([1, 2, 2], [3], [1, 1, 1, 4]):
        assert post(ingest.port, {"batch": [{"experienceID": i} for i in batch]}, path="/batch")[0] == 202
    wait_for(lambda: caught_up(state_dir) and (s := read_series(state_dir)) and
             s[0] == read_checkpoint(state_dir)["offset"], what="the worker and the series")
    worker.terminate()
    worker.wait(timeout=10)
    before = read_series(state_dir)
    result = worker_command(state_dir, "rebuild")
    assert result.returncode == 0, result.stderr
    assert read_series(state_dir) == before
    assert check_series(state_dir)
