"""`python -m bench`: throughput of the real system, side by side with baselines run in the
same session. Prints a table and saves bench/results/latest.json.

Each figure is a ratio against a baseline measured in the same run, so the numbers compare
across machines; the absolute rates are printed too. Needs wrk (apt-get install wrk) and awk.

    python -m bench                 everything (about 5 minutes on 2 cores)
    python -m bench ingest batch    only some parts: ingest, batch, catchup, series, checkpoint,
                                    sdk (bench/sdk.py), node (bench/node.py: the
                                    public Node.js implementations, when present),
                                    cluster (bench/cluster.py), takeover
                                    (bench/takeover.py), projects (bench/projects.py),
                                    seen (bench/seen.py: the dedupe at a cluster partition),
                                    sessions (bench/sessions.py: commits into overview.duckdb
                                    as its sessions grow)
    python -m bench soak            ten minutes of SDK traffic on the whole engine at 80 % of
                                    the ingest's capacity, on one machine and then on the
                                    local cluster (bench/soak.py); only when named
"""

import datetime
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.cluster import bench_cluster
from bench.cluster import rows as cluster_rows
from bench.harness import (REPO, bare_server, ingest_server, run_wrk, scratch_dir,
                           time_worker_until, wrk_script)
from bench.node import bench_node
from bench.node import rows as node_rows
from bench.overview import bench_overview
from bench.overview import rows as overview_rows
from bench.projects import bench_projects
from bench.projects import rows as projects_rows
from bench.sdk import bench_sdk
from bench.sdk import rows as sdk_rows
from bench.seen import bench_seen
from bench.seen import rows as seen_rows
from bench.sessions import bench_sessions
from bench.sessions import rows as sessions_rows
from bench.soak import bench_soak
from bench.soak import rows as soak_rows
from bench.takeover import bench_takeover
from bench.takeover import rows as takeover_rows
from storage import settings
from storage.checkpoint import EMPTY_FINGERPRINT, Checkpoint
from storage.log.checkpoint_store import CheckpointStore
from storage.log.time_index import ENTRY
from storage.views.series_store import ALL, SeriesStore

RESULTS = REPO / "bench" / "results"
EVENT = b'{"experienceID": 12345}'
ROUNDS = 3


def measure(configs, script, seconds):
    """Per config, the median of each figure over ROUNDS interleaved rounds (every config
    once per round, each on a fresh server after a 1 s warm-up), so that a slow spell of the
    machine weighs on all configs alike."""
    runs = {name: [] for name in configs}
    for _ in range(ROUNDS):
        for name, start_server in configs.items():
            with start_server() as (port, _state):
                run_wrk(port, script, seconds=1)
                runs[name].append(run_wrk(port, script, seconds=seconds))
    return {name: {key: statistics.median(run[key] for run in rs) for key in rs[0]}
            for name, rs in runs.items()}


def flatten(measured):
    results = {}
    for name, figures in measured.items():
        results[f"{name}_req_s"] = figures["rate"]
        for key in ("p50", "p99", "p999"):
            results[f"{name}_{key}_ms"] = figures[key]
    return results


def bench_ingest(seconds):
    threads = settings.threads()  # the ingest's own setting, so both sides run the same
    configs = {
        "bare_pinned": lambda: bare_server(threads, pinned=True),
        "bare_unpinned": lambda: bare_server(threads, pinned=False),
        "fsync_on_pinned": lambda: ingest_server(fsync=True, pinned=True),
        "fsync_on_unpinned": lambda: ingest_server(fsync=True, pinned=False),
        "fsync_off_pinned": lambda: ingest_server(fsync=False, pinned=True),
    }
    with wrk_script(EVENT) as script:
        results = flatten(measure(configs, script, seconds))
    rate = lambda name: results[f"{name}_req_s"]  # noqa: E731
    results.update(
        threads=threads,
        fsync_on_vs_bare=rate("fsync_on_pinned") / rate("bare_pinned"),
        fsync_off_vs_bare=rate("fsync_off_pinned") / rate("bare_pinned"),
        fsync_on_unpinned_vs_bare_unpinned=rate("fsync_on_unpinned") / rate("bare_unpinned"),
        fsync_on_pinned_gain=rate("fsync_on_pinned") / rate("fsync_on_unpinned"),
        bare_pinned_gain=rate("bare_pinned") / rate("bare_unpinned"),
        fsync_on_p99_vs_bare=results["fsync_on_pinned_p99_ms"] / results["bare_pinned_p99_ms"],
    )
    return results


def bench_batch(seconds, single_rate):
    results = {}
    for size in (1, 10, 100, 1000):
        body = json.dumps({"batch": [{"experienceID": i % 997} for i in range(size)]}).encode()
        with wrk_script(body, "/batch") as script:
            measured = measure({"batch": ingest_server}, script, seconds)["batch"]
        results[f"batch_{size}_events_s"] = measured["rate"] * size
        results[f"batch_{size}_p99_ms"] = measured["p99"]
    results["batch_1000_vs_single"] = results["batch_1000_events_s"] / single_rate
    return results


def make_backlog(path, target_bytes, seed=7, seconds=1800):
    """A data1 of about target_bytes: ids 0..9999 (skewed like real traffic), space-separated,
    and its time index as the ingest writes it: the events spread over `seconds`, one entry
    a second (at 5,000 events/s, the rate of single-event ingest: 30 minutes for 9 M)."""
    rng = random.Random(seed)
    pool = [b"%d" % i for i in range(10_000)]
    weights = [1 / (i + 1) ** 0.5 for i in range(len(pool))]
    events = 0
    with open(path, "wb") as out:
        while out.tell() < target_bytes:
            tokens = rng.choices(pool, weights, k=200_000)
            out.write(b" ".join(tokens) + b" ")
            events += len(tokens)
        # Durable before the clock starts, as the ingest leaves data1: otherwise the worker's
        # fdatasync before its first commit would be timed writing the whole backlog to disk.
        out.flush()
        os.fsync(out.fileno())
    data = path.read_bytes()
    entries, first_second = [], 1_795_000_000
    for second in range(seconds):
        # The first record at or after this second's share of the bytes.
        offset = 0 if second == 0 else data.find(b" ", len(data) * second // seconds) + 1
        if 0 < offset < len(data):
            entries.append(ENTRY.pack(first_second + second, offset))
    index = path.with_name("data1.timeindex")
    index.write_bytes(ENTRY.pack(first_second, 0) + b"".join(entries[1:]))
    with open(index, "rb") as written:
        os.fsync(written.fileno())
    return events


def time_worker(state_dir, series=True):
    """Seconds from starting `python -m worker` until its checkpoint covers all of data1,
    and the worker's peak RSS in MB (VmHWM). With `series`, it keeps the counts over time
    too (and data2, committed after them, is the last to cover data1)."""
    size = (state_dir / "data1").stat().st_size

    def covered():
        try:
            return json.loads((state_dir / "data2").read_bytes())["offset"] == size
        except (FileNotFoundError, ValueError):
            return False

    result = time_worker_until(state_dir, {"MINI_ANALYTICS_SERIES": "on" if series else "off",
                                           "MINI_ANALYTICS_OVERVIEW": "off"}, covered)
    for name in ("data2", "series.sqlite3", "series.sqlite3-wal", "series.sqlite3-shm"):
        (state_dir / name).unlink(missing_ok=True)
    return result


def time_awk(path):
    awk = shutil.which("mawk") or shutil.which("awk")
    started = time.perf_counter()
    subprocess.run([awk, "-v", "RS= ", "{c[$0]++} END {for (k in c) print k, c[k]}", str(path)],
                   stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started, Path(awk).name


def bench_catchup():
    results = {}
    state_dir = scratch_dir()
    try:
        data1 = state_dir / "data1"
        events = make_backlog(data1, 38 * 1024 * 1024)
        worker_runs, plain_runs, awk_runs = [], [], []
        for _ in range(ROUNDS):
            worker_runs.append(time_worker(state_dir)[0])
            plain_runs.append(time_worker(state_dir, series=False)[0])
            awk_seconds, awk_name = time_awk(data1)
            awk_runs.append(awk_seconds)
        worker_s, awk_s = statistics.median(worker_runs), statistics.median(awk_runs)
        plain_s = statistics.median(plain_runs)
        results.update(
            catchup_events=events,
            catchup_bytes=data1.stat().st_size,
            catchup_worker_s=worker_s,
            catchup_worker_no_series_s=plain_s,
            catchup_series_on_vs_off=plain_s / worker_s,
            catchup_awk_s=awk_s,
            catchup_awk=awk_name,
            catchup_speed_vs_awk=awk_s / worker_s,
            catchup_no_series_speed_vs_awk=awk_s / plain_s,
            worker_events_s=events / worker_s,
        )
        for megabytes in (10, 200):
            make_backlog(data1, megabytes * 1024 * 1024, seed=megabytes)
            results[f"peak_rss_mb_{megabytes}mb_backlog"] = time_worker(state_dir)[1]
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    return results


def build_series(state_dir, experiences=10_000, hours=30 * 24):
    """A series store as after `hours` of traffic in which every experience had events in
    every hour (the worst case for reading one experience): experiences x hours hour rows."""
    store = SeriesStore(state_dir, 48 * 3600)
    store.open(EMPTY_FINGERPRINT)
    end = SERIES_END
    starts = [end - 3600 * i for i in range(hours, 0, -1)]
    store.db.execute("BEGIN")
    store.db.executemany("INSERT INTO hour VALUES (?, ?, ?)", (
        (h, e, 1 + (e + h // 3600) % 7) for h in starts for e in range(experiences)))
    store.db.executemany("INSERT INTO hour VALUES (?, ?, ?)",
                         ((h, ALL, 4 * experiences) for h in starts))
    store.db.execute("UPDATE state SET newest_minute = ?", (end - 60,))
    store.db.execute("COMMIT")
    store.close()


SERIES_END = 1_795_000_000 - 1_795_000_000 % 3600


def time_requests(port, path, count=60):
    """Median and largest milliseconds of `count` GETs of `path`, one at a time."""
    times = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(count):
        started = time.perf_counter()
        conn.request("GET", path)
        answer = conn.getresponse()
        body = answer.read()
        times.append((time.perf_counter() - started) * 1000)
        if answer.status != 200:
            raise RuntimeError(f"{path}: {answer.status} {body[:200]!r}")
    conn.close()
    return statistics.median(times), max(times)


def bench_series():
    """/series at 10,000 experiences with 30 days of hourly data."""
    results = {}
    since = datetime.datetime.fromtimestamp(SERIES_END - 30 * 86400, datetime.timezone.utc)
    until = datetime.datetime.fromtimestamp(SERIES_END, datetime.timezone.utc)
    span = f"from={since:%Y-%m-%dT%H:%M:%SZ}&to={until:%Y-%m-%dT%H:%M:%SZ}"
    with ingest_server() as (port, state_dir):
        started = time.perf_counter()
        build_series(state_dir)
        results["series_build_s"] = time.perf_counter() - started
        queries = {
            "one_experience_30d_hourly": f"/series?step=hour&experienceID=4321&{span}",
            "all_events_30d_daily": f"/series?step=day&{span}",
            "all_events_30d_daily_berlin": f"/series?step=day&{span}&tz=Europe/Berlin",
            "all_events_30d_hourly": f"/series?step=hour&{span}",
        }
        for name, path in queries.items():
            median, worst = time_requests(port, path)
            results[f"series_{name}_ms"] = median
            results[f"series_{name}_max_ms"] = worst
    return results


def bench_checkpoint():
    results = {}
    state_dir = scratch_dir()
    try:
        store = CheckpointStore(state_dir)
        for distinct in (1_000, 100_000, 1_000_000):
            counts = {i * 7_919: 1 + i % 50 for i in range(distinct)}
            started = time.perf_counter()
            store.commit(Checkpoint(offset=10**12, counts=counts))
            results[f"checkpoint_commit_s_{distinct}_ids"] = time.perf_counter() - started
            started = time.perf_counter()
            store.load()
            results[f"checkpoint_load_s_{distinct}_ids"] = time.perf_counter() - started
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    return results


def print_table(results):
    rows = [
        ("Single events, fsync on, pinned (req/s)", "fsync_on_pinned_req_s", "{:,.0f}"),
        ("Single events, fsync on, unpinned (req/s)", "fsync_on_unpinned_req_s", "{:,.0f}"),
        ("Single events, fsync off, pinned (req/s)", "fsync_off_pinned_req_s", "{:,.0f}"),
        ("Bare waitress 202, pinned (req/s)", "bare_pinned_req_s", "{:,.0f}"),
        ("Bare waitress 202, unpinned (req/s)", "bare_unpinned_req_s", "{:,.0f}"),
        ("  fsync on / bare (both pinned)", "fsync_on_vs_bare", "{:.2f}"),
        ("  fsync off / bare (both pinned)", "fsync_off_vs_bare", "{:.2f}"),
        ("  fsync on / bare (both unpinned)", "fsync_on_unpinned_vs_bare_unpinned", "{:.2f}"),
        ("  fsync on: pinned / unpinned", "fsync_on_pinned_gain", "{:.2f}x"),
        ("  bare: pinned / unpinned", "bare_pinned_gain", "{:.2f}x"),
        ("  p99, fsync on / bare (both pinned)", "fsync_on_p99_vs_bare", "{:.2f}"),
    ]
    for name in ("fsync_on_pinned", "fsync_on_unpinned", "fsync_off_pinned", "bare_pinned",
                 "bare_unpinned"):
        rows.append((f"Latency p50 / p99 / p99.9, {name.replace('_', ' ')} (ms)", name, "latency"))
    rows += [
        ("Batch of 1 (events/s)", "batch_1_events_s", "{:,.0f}"),
        ("Batch of 10 (events/s)", "batch_10_events_s", "{:,.0f}"),
        ("Batch of 100 (events/s)", "batch_100_events_s", "{:,.0f}"),
        ("Batch of 1000 (events/s)", "batch_1000_events_s", "{:,.0f}"),
        ("  batch of 1000 / single events", "batch_1000_vs_single", "{:.0f}x"),
        ("Catch-up backlog (events)", "catchup_events", "{:,}"),
        ("Catch-up, worker incl. start (s)", "catchup_worker_s", "{:.2f}"),
        ("Catch-up, worker with series off (s)", "catchup_worker_no_series_s", "{:.2f}"),
        ("  series on: speed / speed with series off", "catchup_series_on_vs_off", "{:.2f}"),
        ("Catch-up, awk (s)", "catchup_awk_s", "{:.2f}"),
        ("  worker speed / awk speed", "catchup_speed_vs_awk", "{:.2f}"),
        ("  worker with series off / awk speed", "catchup_no_series_speed_vs_awk", "{:.2f}"),
        ("Worker peak RSS, 10 MB backlog (MB)", "peak_rss_mb_10mb_backlog", "{:.1f}"),
        ("Worker peak RSS, 200 MB backlog (MB)", "peak_rss_mb_200mb_backlog", "{:.1f}"),
        ("/series, 1 experience, 30 days by hour (ms, median / max)", "series_one_experience_30d_hourly", "ms"),
        ("/series, all events, 30 days by day (ms)", "series_all_events_30d_daily", "ms"),
        ("/series, all events, 30 days by day, Berlin (ms)", "series_all_events_30d_daily_berlin", "ms"),
        ("/series, all events, 30 days by hour (ms)", "series_all_events_30d_hourly", "ms"),
        ("Checkpoint commit, 1k ids (s)", "checkpoint_commit_s_1000_ids", "{:.3f}"),
        ("Checkpoint commit, 100k ids (s)", "checkpoint_commit_s_100000_ids", "{:.3f}"),
        ("Checkpoint commit, 1M ids (s)", "checkpoint_commit_s_1000000_ids", "{:.3f}"),
        ("Checkpoint load, 1M ids (s)", "checkpoint_load_s_1000000_ids", "{:.3f}"),
        ("Overview backlog (SDK events)", "overview_backlog_events", "{:,}"),
        ("  of which screen views", "overview_backlog_screen_views", "{:,}"),
        ("overview.sqlite3 (MB per million screen views)", "overview_store_mb_per_million",
         "{:.1f}"),
        ("1,000 late logins: hours counted again", "overview_late_logins_1000_hours_recounted",
         "{:,}"),
        ("1,000 late logins: their commit (s)", "overview_late_logins_1000_s", "{:.3f}"),
        ("/experiences, 1,000 experiences, 30 days (ms, median / max)", "overview_experiences_30d", "ms"),
        ("/experiences, the same in Berlin time (ms)", "overview_experiences_30d_berlin", "ms"),
        ("/experiences/1 (the busiest), 7 days by hour (ms)", "overview_experience_1_7d_hourly", "ms"),
        ("/experiences/500, 7 days by hour (ms)", "overview_experience_500_7d_hourly", "ms"),
        ("/experiences/1/flow?goal=, 30 days (ms)", "overview_flow_1_30d_goal", "ms"),
        ("/experiences/1/revisions?goal=, 30 days (ms)", "overview_revisions_1_30d_goal", "ms"),
    ]
    width = max(len(label) for label, _, _ in rows)
    print(f"\n{'Measure':<{width}}  Result")
    print(f"{'-' * width}  ------")
    for label, key, fmt in rows:
        if fmt == "latency":
            if f"{key}_p50_ms" in results:
                p50, p99, p999 = (results[f"{key}_{p}_ms"] for p in ("p50", "p99", "p999"))
                print(f"{label:<{width}}  {p50:.1f} / {p99:.1f} / {p999:.1f}")
        elif fmt == "ms":
            if f"{key}_ms" in results:
                print(f"{label:<{width}}  {results[f'{key}_ms']:.1f} / {results[f'{key}_max_ms']:.1f}")
        elif key in results:
            print(f"{label:<{width}}  {fmt.format(results[key])}")
    for label, value in (overview_rows(results) + sdk_rows(results) + node_rows(results)
                         + cluster_rows(results) + takeover_rows(results)
                         + projects_rows(results) + seen_rows(results) + sessions_rows(results)
                         + soak_rows(results)):
        print(f"{label:<{width}}  {value}")


PARTS = ("ingest", "batch", "catchup", "series", "checkpoint", "sdk", "node", "cluster",
         "overview", "takeover", "projects", "seen", "sessions")
# Run only when named: ten minutes of traffic.
NAMED_ONLY = ("soak",)


def main(argv):
    unknown = [part for part in argv if part not in PARTS + NAMED_ONLY]
    if unknown:
        raise SystemExit(f"unknown part {', '.join(unknown)}; the parts are "
                         f"{', '.join(PARTS + NAMED_ONLY)}")
    parts = argv or PARTS
    seconds = 4
    results = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    if "ingest" in parts or "batch" in parts:
        results.update(bench_ingest(seconds))
    if "batch" in parts:
        results.update(bench_batch(seconds, results["fsync_on_pinned_req_s"]))
    if "catchup" in parts:
        results.update(bench_catchup())
    if "series" in parts:
        results.update(bench_series())
    if "checkpoint" in parts:
        results.update(bench_checkpoint())
    if "sdk" in parts:
        results.update(bench_sdk(seconds))
    if "node" in parts:
        results.update(bench_node(seconds))
    if "cluster" in parts:
        results.update(bench_cluster(seconds))
    if "overview" in parts:
        results.update(bench_overview(time_requests))
    if "takeover" in parts:
        results.update(bench_takeover())
    if "projects" in parts:
        results.update(bench_projects(seconds))
    if "seen" in parts:
        results.update(bench_seen())
    if "sessions" in parts:
        results.update(bench_sessions())
    if "soak" in parts:
        results.update(bench_soak())
    print_table(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nsaved {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    main(sys.argv[1:])
