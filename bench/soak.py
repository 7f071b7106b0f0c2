"""`python -m bench soak` (`python -m bench.soak [seconds] [single|cluster] [rate=N]
[store=duckdb]` for a shorter look, at a rate of N SDK events/s rather than 80 % of the
capacity, or with the overview kept in overview.duckdb, MINI_ANALYTICS_OVERVIEW_STORE): the
whole engine under SDK traffic for ten minutes, on one machine and then on the
local cluster, offered at 80 % of what its ingest alone was measured to take in the same run.
The question: does the overview keep up? (Its lag must stay bounded: under 10 s at the end.)

1. Capacity: the ingest alone (fsync on, dedupe on, a fresh state folder), wrk posting SDK
   batches of 100 fresh events (bench/sdk.py's body) for CAPACITY_SECONDS: events/s.
2. Soak: another fresh state folder, the ingest and the worker (overview on, the default
   5-second interval), and paced senders (wrk, SENDERS connections) offering 80 % of that
   rate as installs' sessions: each request BATCH screen views of one install, through its
   experience's screens in order, timed now.
3. Every REPORT_EVERY seconds a line: events/s offered and acknowledged since the last line,
   the overview's lag (from the oldest SDK event it has not counted to now, in seconds; looked
   at every SAMPLE_EVERY seconds: the last look, and the largest since the last line), the
   counts' lag (data1 bytes behind data2), and each program's RSS (and its peak so far:
   when a peak came) and share of a core (the senders' too: on one box, what they take is
   taken from the engine).
At the end, the overview's lag at the end (the largest of the last line's looks) and at its
largest, and each program's peak RSS.

On the cluster (cluster/supervisord.conf, bench/cluster.py's local_cluster) the same, through
both ingest nodes: the capacity is a wrk per node, the senders a wrk per node (each install
always sent to the same one),
and the overview's lag is the largest over the partitions (from the oldest message after
the position of the partition's overview store, kept by the worker that counts it, to now).

With store=duckdb only the workers can open their stores, so the overview's lag is the
ingest's own figure of the same: /stats' overview_waiting_seconds.
"""

import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.cluster import local_cluster, wrk_on
from bench.harness import (REPO, cpu_seconds, free_port, run_wrk, scratch_dir, stop,
                           wait_until_listening)
from bench.sdk import DONE, UUID_LUA, fresh_ids_script, sdk_body
import storage.settings
from storage.layout import Layout
from storage.log import details
from storage.stream.names import STREAM, partition_subject

CAPACITY_SECONDS = 10
SHARE = 0.8  # of the capacity, offered
SENDERS = 16  # as wrk's connections: enough that a slow answer holds up little of the rate
BATCH = 50
INSTALLS = 20_000
EXPERIENCES = 1000
SCREENS = 6  # each experience's flow
REPORT_EVERY = 10
SAMPLE_EVERY = 1  # seconds between two looks at the overview's lag
BOUNDED_LAG = 10.0  # seconds: the overview's lag at the end must be under this


def start(program, state_dir, port, **settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINI_ANALYTICS_")}
    env.update({"MINI_ANALYTICS_STATE_DIR": str(state_dir), "MINI_ANALYTICS_PORT": str(port),
                **{f"MINI_ANALYTICS_{name.upper()}": str(value)
                   for name, value in settings.items()}})
    return subprocess.Popen([sys.executable, "-m", program], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def rss_mb(pid, field="VmRSS"):
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0.0
    return int(next(line for line in status.splitlines()
                    if line.startswith(field)).split()[1]) / 1024


def measure_capacity():
    """The ingest's SDK events/s alone, fsync and dedupe on."""
    folder = scratch_dir()
    script = folder / "sdk.lua"
    script.write_text(fresh_ids_script(sdk_body()) + DONE)
    (folder / "state").mkdir()
    port = free_port()
    ingest = start("app", folder / "state", port)
    try:
        wait_until_listening(port, ingest)
        run_wrk(port, str(script), seconds=1)
        return run_wrk(port, str(script), seconds=CAPACITY_SECONDS)["rate"] * 100
    finally:
        stop(ingest)
        subprocess.run(["rm", "-rf", str(folder)], check=False)


# The senders' Lua for wrk (one wrk a node): its parameters are set before it as globals.
# LuaJIT's ffi reads the monotonic clock for the schedule; wrk calls delay() before each
# request of a connection, so the connections together take the schedule's slots in turn.
SENDER_LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } soak_timespec;
int clock_gettime(int clock, soak_timespec *now);
]]
local clock = ffi.new("soak_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end
local EVENT = '{"id":"%s","timestamp":"%s","anonymousID":"soak-install-%d",' ..
  '"type":"screen","properties":{"id":"screen-%d","name":"\195\137cran",' ..
  '"experienceID":"%d","experienceRevisionID":"1","experienceName":"Experience %d"},' ..
  '"context":{"os":{"name":"iOS","version":"17.2"},"locale":"en-CA"}}'
local headers = {["Content-Type"] = "application/json"}
number, offered, acknowledged, failed = 0, 0, 0, 0
local due, flushed = nil, 0

local function flush()
  local file = io.open(COUNTS, "w")
  file:write(string.format("%d %d %d\n", offered, acknowledged, failed))
  file:close()
end

delay = function()
  local now = now_ms()
  due = (due or now) + INTERVAL_MS
  return math.max(0, due - now)  -- behind the schedule: at once, so the rate holds
end

request = function()
  local install = (number * NODES + NODE) % INSTALLS
  local experience = 1 + install % EXPERIENCES
  local stamp = os.date("!%Y-%m-%dT%H:%M:%SZ")
  local events = {}
  for n = 0, BATCH - 1 do
    events[n + 1] = string.format(EVENT, uuid(), stamp, install,
                                  (number + n) % SCREENS + 1, experience, experience)
  end
  number = number + 1
  offered = offered + BATCH
  return wrk.format("POST", "/batch", headers,
                    '{"batch":[' .. table.concat(events, ",") .. ']}')
end

response = function(status)
  if status == 202 then acknowledged = acknowledged + BATCH else failed = failed + BATCH end
  local now = now_ms()
  if now - flushed >= 200 then
    flushed = now
    flush()
  end
end

-- At the end, the thread's final counts (setup and done run in wrk's main Lua state).
local threads = {}
setup = function(thread) threads[#threads + 1] = thread end
done = function()
  local thread = threads[1]
  offered, acknowledged, failed =
    thread:get("offered"), thread:get("acknowledged"), thread:get("failed")
  flush()
end
"""


class Senders:
    """One wrk a node, offering `rate` events/s in all, in batches of BATCH screen views of
    one install (each install to one node), on SENDERS kept-alive connections, paced to a
    schedule (behind it, they send at once, so the offered rate holds while the ingest keeps
    up). wrk (C, as the capacity phase) rather than Python threads: the senders' own CPU
    would be taken from the programs under test (Python senders took 0.4 of a core at
    56,000 events/s, wrk about a tenth of that)."""

    def __init__(self, ports, rate):
        self.ports = ports
        self.rate = rate
        self.folder = scratch_dir()
        self._wrks = []
        self._counts = {}  # node -> its last (offered, acknowledged, failed) read

    def __enter__(self):
        wrk = shutil.which("wrk")
        if wrk is None:
            raise SystemExit("wrk is not installed: apt-get install wrk")
        nodes = len(self.ports)
        for node, port in enumerate(self.ports):
            script = self.folder / f"senders-{node}.lua"
            settings = dict(INTERVAL_MS=1000 * BATCH * nodes / self.rate, NODE=node,
                            NODES=nodes, INSTALLS=INSTALLS, EXPERIENCES=EXPERIENCES,
                            SCREENS=SCREENS, BATCH=BATCH,
                            COUNTS=f'"{self.folder / f"counts-{node}"}"')
            script.write_text("".join(f"{name} = {value}\n" for name, value in settings.items())
                              + UUID_LUA + SENDER_LUA)
            self._wrks.append(subprocess.Popen(
                [wrk, "-t1", f"-c{max(1, SENDERS // nodes)}", "-d24h", "--timeout", "30s",
                 "-s", str(script), f"http://127.0.0.1:{port}/"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return self

    def __exit__(self, *exc):
        for wrk in self._wrks:
            wrk.send_signal(signal.SIGINT)  # wrk stops its connections and exits
        for wrk in self._wrks:
            try:
                wrk.wait(timeout=30)
            except subprocess.TimeoutExpired:
                wrk.kill()
                wrk.wait()
        self.totals()  # the final counts, written by wrk as it exits
        shutil.rmtree(self.folder, ignore_errors=True)

    def pids(self):
        return {f"senders-{node}": wrk.pid for node, wrk in enumerate(self._wrks)}

    def totals(self):
        """(offered, acknowledged, failed) events so far, as the senders last wrote them."""
        for node in range(len(self.ports)):
            try:
                counts = [int(value) for value in
                          (self.folder / f"counts-{node}").read_text().split()]
            except (FileNotFoundError, ValueError):
                continue  # not written yet, or being written: the last read stands
            if len(counts) == 3:
                self._counts[node] = counts
        return tuple(sum(counts[i] for counts in self._counts.values()) for i in range(3))


def store_position(path):
    """An overview store's position (read-only, beside the worker writing it); 0 before it
    exists: nothing counted."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT position FROM state").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def overview_lag(layout, now):
    """Seconds from the oldest SDK event the overview has not counted (its details group's
    receive time) to `now`; 0 when it has counted them all."""
    position = store_position(layout.overview)
    try:
        fd = os.open(layout.details, os.O_RDONLY)
    except FileNotFoundError:
        return 0.0
    try:
        for group in details.read_groups(fd, max(position, details.HEADER.size)):
            return max(0.0, now - group.received_ms / 1000)
        return 0.0
    finally:
        os.close(fd)


def counts_lag_bytes(layout):
    try:
        offset = json.loads(layout.data2.read_bytes())["offset"]
    except (FileNotFoundError, ValueError, KeyError):
        offset = 0
    try:
        return max(0, layout.data1.stat().st_size - offset)
    except FileNotFoundError:
        return 0


def soak(label, ports, rate, seconds, overview_lag_now, counts_lag_now, pids):
    """Offer `rate` SDK events/s to `ports` for `seconds`, printing a line every
    REPORT_EVERY seconds; `overview_lag_now()` and `counts_lag_now()` say where the counting
    stands, `pids()` the programs to watch ({name: pid}). Returns the figures."""
    lags, peaks = [], {}  # lags: the largest of each line's samples
    began = time.monotonic()
    with Senders(ports, rate) as senders:
        last, last_totals = began, (0, 0, 0)
        watched = lambda: {**pids(), **senders.pids()}  # noqa: E731
        last_cpu = {name: cpu_seconds(pid) for name, pid in watched().items()}
        for report in range(1, max(1, seconds // REPORT_EVERY) + 1):
            # Sampled every second, not once a line: the worker's passes begin every 5 s, so
            # a sample every 10 s would see them at the same moment each time and miss how
            # far the lag rises before a pass's commit.
            window = []
            while True:
                due = began + (report - 1) * REPORT_EVERY + (len(window) + 1) * SAMPLE_EVERY
                time.sleep(max(0.0, due - time.monotonic()))
                window.append(overview_lag_now())
                if len(window) * SAMPLE_EVERY >= REPORT_EVERY:
                    break
            now = time.monotonic()
            totals = senders.totals()
            lag = max(window)
            lags.append(lag)
            programs = watched()
            rss = {name: rss_mb(pid) for name, pid in programs.items()}
            cpu = {name: cpu_seconds(pid) for name, pid in programs.items()}
            for name, pid in programs.items():
                peaks[name] = max(peaks.get(name, 0.0), rss_mb(pid, "VmHWM"))
            offered, acknowledged = ((totals[i] - last_totals[i]) / (now - last) for i in (0, 1))
            # Where the machine's CPU goes: a program's share of one core since the last line.
            shares = {name: (cpu[name] - last_cpu.get(name, 0.0)) / (now - last) * 100
                      for name in cpu}
            print(f"{label} {now - began:5.0f} s: offered {offered:8,.0f} ev/s (of {rate:,.0f}), "
                  f"acknowledged {acknowledged:8,.0f} ev/s, overview lag {window[-1]:6.1f} s "
                  f"(largest in the last {REPORT_EVERY} s {lag:.1f} s), counts "
                  f"lag {counts_lag_now()}, RSS "
                  + ", ".join(f"{name} {mb:.0f} MB (peak {peaks[name]:.0f})"
                              for name, mb in sorted(rss.items()))
                  + ", CPU " + ", ".join(f"{name} {share:.0f} %"
                                         for name, share in sorted(shares.items())),
                  flush=True)
            last, last_totals, last_cpu = now, totals, cpu
        offered, acknowledged, failed = senders.totals()
    seconds = time.monotonic() - began
    return {
        "seconds": seconds,
        "offered_events_s": offered / seconds,
        "acknowledged_events_s": acknowledged / seconds,
        "failed_events": failed,
        "overview_lag_end_s": lags[-1] if lags else 0.0,
        "overview_lag_max_s": max(lags, default=0.0),
        "overview_lags_s": lags,
        "overview_bounded": bool(lags) and lags[-1] < BOUNDED_LAG,
        "peak_rss_mb": peaks,
    }


def rate_to_offer(label, rate, seconds, measure, alone):
    """(capacity, rate): `rate` as asked (the capacity not measured: None), or SHARE of the
    capacity `measure()` finds; said in one line, `alone` naming what was measured."""
    if rate is not None:
        print(f"{label}: offering {rate:,.0f} SDK events/s (the capacity not measured) for "
              f"{seconds} s", flush=True)
        return None, rate
    capacity = measure()
    print(f"{label}: {alone} {capacity:,.0f} SDK events/s; offering {SHARE * capacity:,.0f} "
          f"for {seconds} s", flush=True)
    return capacity, SHARE * capacity


def waiting_seconds(port):
    """The ingest's /stats overview_waiting_seconds (how long the oldest SDK event the
    overview has not counted has waited); infinite while it cannot tell (a lag not known
    is no lag bounded)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as answer:
            waiting = json.load(answer).get("overview_waiting_seconds")
    except (OSError, ValueError):
        waiting = None
    return float("inf") if waiting is None else waiting


def soak_single(seconds, rate=None, store="sqlite"):
    capacity, rate = rate_to_offer("soak", rate, seconds, measure_capacity,
                                   "the ingest alone takes")
    folder = scratch_dir()
    state = folder / "state"
    state.mkdir()
    layout = Layout(state)
    port = free_port()
    ingest = start("app", state, port, overview_store=store)
    # The port unused by the worker: the settings are shared.
    worker = start("worker", state, port, overview_store=store)
    lag = ((lambda: overview_lag(layout, time.time())) if store == "sqlite"
           else (lambda: waiting_seconds(port)))
    try:
        wait_until_listening(port, ingest)
        figures = soak("soak", [port], rate, seconds, lag,
                       lambda: f"{counts_lag_bytes(layout):,} bytes",
                       lambda: {"ingest": ingest.pid, "worker": worker.pid})
    finally:
        stop(ingest)
        stop(worker)
        subprocess.run(["rm", "-rf", str(folder)], check=False)
    return {"soak_capacity_events_s": capacity,
            **{f"soak_{key}": value for key, value in figures.items()}}


def cluster_overview_lag(cluster, now):
    """The largest over the partitions of: seconds from the oldest message after the
    position of the partition's overview store (in the folder of the worker counting it) to
    `now`; 0 for a partition counted to its end."""
    import nats  # noqa: PLC0415 - cluster mode's dependency, imported only here
    from nats.js.errors import NotFoundError  # noqa: PLC0415

    positions = {}
    for store in (cluster.root / "state" / "cluster").glob("worker-*/overview-*.sqlite3"):
        partition = store.stem.split("-", 1)[1]
        position = store_position(store)
        # A partition that moved leaves its old owner's store behind: the furthest is the
        # one that counts it (a new owner counting it again is behind it, and not yet read).
        positions[partition] = max(positions.get(partition, 0), position)

    async def oldest_uncounted():
        connection = await nats.connect(cluster.servers)
        try:
            stream = connection.jetstream()
            lag = 0.0
            for partition, position in positions.items():
                try:
                    message = await stream.get_msg(STREAM, seq=position + 1, next=True,
                                                   subject=partition_subject(partition))
                except NotFoundError:
                    continue
                lag = max(lag, now - message.time.timestamp())
            return lag
        finally:
            await connection.close()

    return asyncio.run(oldest_uncounted())


def soak_cluster(seconds, rate=None, store="sqlite"):
    script_folder = scratch_dir()
    script = script_folder / "sdk.lua"
    script.write_text(fresh_ids_script(sdk_body()) + DONE)
    try:
        # The workers pass at the shipped interval, as on one machine (bench/cluster.py's
        # other benches pass each second, to time a catch-up closely).
        with local_cluster(interval=storage.settings.interval({}),
                           overview_store=store) as cluster:
            ports = [cluster.port(1), cluster.port(2)]

            def measure():
                cluster.ctl("stop", "worker:*")  # the ingest alone, as on one machine
                wrk_on(ports, str(script), 1)
                capacity = wrk_on(ports, str(script), CAPACITY_SECONDS)[0] * 100
                cluster.ctl("start", "worker:*")
                return capacity

            capacity, rate = rate_to_offer("soak cluster", rate, seconds, measure,
                                           "the 2 ingest nodes alone take")
            # The capacity's events are counted first: the soak starts from a caught-up
            # cluster, as on one machine.
            if store == "sqlite":
                def lag():
                    return cluster_overview_lag(cluster, time.time())
            else:
                def lag():
                    return waiting_seconds(ports[0])
            cluster.wait(lambda: lag() == 0.0,
                         "the workers to count the capacity run's events", timeout=1800)

            known = {}

            def pids():
                # Asked of supervisorctl again only when a program's process is gone: each
                # call is a Python process of its own, CPU taken from the cluster.
                if not known or not all(Path(f"/proc/{pid}").exists() for pid in known.values()):
                    known.clear()
                    for line in cluster.ctl("status").splitlines():
                        name, _, rest = line.partition(" ")
                        group, _, program = name.partition(":")
                        found = re.search(r"\bpid (\d+)", rest)
                        if group in ("ingest", "worker", "nats") and found:
                            known[program] = int(found.group(1))
                return dict(known)

            def counts_lag():
                _, stats = cluster.get(1, "/stats")
                return f"{stats['lag_messages']:,} messages" if stats else "unknown"

            figures = soak("soak cluster", ports, rate, seconds, lag, counts_lag, pids)
    finally:
        subprocess.run(["rm", "-rf", str(script_folder)], check=False)
    return {"soak_cluster_capacity_events_s": capacity,
            **{f"soak_cluster_{key}": value for key, value in figures.items()}}


def bench_soak(seconds=600, modes=("single", "cluster"), rate=None, store="sqlite"):
    """With `rate` (SDK events/s), that rate is offered, and the capacity is not measured;
    `store`: MINI_ANALYTICS_OVERVIEW_STORE."""
    results = {}
    if "single" in modes:
        results.update(soak_single(seconds, rate, store))
    if "cluster" in modes:
        results.update(soak_cluster(seconds, rate, store))
    return results


def rows(results):
    """The bench table's lines for this part."""
    lines = []
    for prefix, where in (("soak", "one machine"), ("soak_cluster", "cluster")):
        if f"{prefix}_seconds" not in results:
            continue
        figure = lambda key: results[f"{prefix}_{key}"]  # noqa: E731
        lines += [
            (f"Soak, {where}: the ingest alone (SDK events/s)",
             "not measured" if figure('capacity_events_s') is None else
             f"{figure('capacity_events_s'):,.0f}"),
            (f"Soak, {where}: offered / acknowledged (SDK events/s)",
             f"{figure('offered_events_s'):,.0f} / {figure('acknowledged_events_s'):,.0f}"),
            (f"Soak, {where}: overview lag at the end / largest (s)",
             f"{figure('overview_lag_end_s'):.1f} / {figure('overview_lag_max_s'):.1f} "
             f"({'bounded' if figure('overview_bounded') else 'NOT bounded'})"),
            (f"Soak, {where}: peak RSS (MB)",
             ", ".join(f"{name} {mb:.0f}" for name, mb in sorted(figure('peak_rss_mb').items()))),
        ]
    return lines


if __name__ == "__main__":
    arguments = sys.argv[1:]
    chosen = [mode for mode in arguments if mode in ("single", "cluster")] or ["single",
                                                                               "cluster"]
    asked = next((float(value.split("=", 1)[1]) for value in arguments
                  if value.startswith("rate=")), None)
    length = next((int(value) for value in arguments if value.isdigit()), 600)
    kept_in = next((value.split("=", 1)[1] for value in arguments
                    if value.startswith("store=")), "sqlite")
    for label, value in rows(bench_soak(length, chosen, asked, kept_in)):
        print(f"{label}: {value}")
