"""`python -m worker [run | status | rebuild]`

    run       count data1 into data2 every MINI_ANALYTICS_INTERVAL seconds (the default);
              in cluster mode, this worker's share of the stream's partitions
    status    print the offset, lag, last checkpoint and top counts (takes no lock); in
              cluster mode, each partition's and its worker's
    rebuild   recount data2 from all of data1 (refused while a worker runs; single-machine
              mode only)
"""

import gc
import logging
import sqlite3
import sys
import time

from storage import process, settings
from storage.checkpoint import CorruptCheckpoint
from storage.layout import Layout
from storage.lockfile import AlreadyLocked
from storage.log.checkpoint_store import CheckpointStore
from storage.local_messages import WorkerOverview
from storage.views.overview_store import NoOverview, OverviewReader
from worker.runner import Worker

log = logging.getLogger("worker")

TOP = 10
# Python's cyclic garbage collector looks at the youngest objects after every 700
# allocations by default, and at every object alive after a hundred such looks. A catch-up
# allocates millions of short-lived tuples (freed by their counts, not by the collector)
# beside large long-lived structures (a commit's changes, the caches of keys and names),
# and makes hardly any cycles: 852 objects in all were collected over 306,100 SDK events of
# bench traffic, while the looks took 6 % of the catch-up's CPU (35.2-41.2 against
# 32.8-39.0 CPU-seconds at these thresholds, three alternated rounds; the same peak RSS).
# Cycles are still collected, about 140 times less often.
GC_THRESHOLD = (100_000, 10, 10)


def run(state_dir):
    gc.set_threshold(*GC_THRESHOLD)
    try:
        interval, ingest_cpu = settings.interval(), settings.ingest_cpu()
        series, retention = settings.series(), settings.minute_retention()
        overview, session_timeout = settings.overview(), settings.session_timeout()
        overview_store = settings.overview_store()
        servers = settings.cluster()
        if servers:
            partition_count, replicas = settings.partition_count(), settings.replicas()
            takeover = settings.takeover()
            # The stream's duplicate window is the dedupe window: every program creating or
            # checking the stream must agree on it.
            dedupe_window = settings.dedupe_window()
    except settings.ConfigError as error:
        return process.bad_setting("worker", error)

    if servers:
        from worker import cluster  # only cluster mode imports nats-py

        return process.run_in_state_folder("worker", state_dir, lambda: cluster.run(
            state_dir, servers, partition_count, replicas, dedupe_window, interval, takeover,
            series, retention, overview, session_timeout, overview_store))

    def count():
        log.info("worker starting: state_dir=%s interval=%gs series=%s minute_retention=%gh "
                 "overview=%s session_timeout=%ds", state_dir, interval,
                 "on" if series else "off", retention / 3600,
                 f"on ({overview_store})" if overview else "off", session_timeout)
        process.place_on_cpus("worker", ingest_cpu)
        Worker(state_dir, series=series, minute_retention=retention, overview=overview,
               session_timeout=session_timeout, overview_store=overview_store).run(interval)
        return process.EXIT_OK

    return process.run_in_state_folder("worker", state_dir, count)


def data1_size(state_dir):
    try:
        return Layout(state_dir).data1.stat().st_size
    except FileNotFoundError:
        return 0


def status(state_dir, out=sys.stdout):
    """Print where the worker stands. Reads data1's size and data2; takes no lock."""
    try:
        servers = settings.cluster()
        overview_store = None if servers else settings.overview_store()
    except settings.ConfigError as error:
        return process.bad_setting("worker", error)
    if servers:
        from worker import cluster  # only cluster mode imports nats-py

        return cluster.status(servers, print_top, out)
    data1_bytes = data1_size(state_dir)
    try:
        current = CheckpointStore(state_dir).load()
    except CorruptCheckpoint as problem:
        print(f"data2 is unreadable: {problem}", file=sys.stderr)
        print("the worker will set it aside and recount data1 when it starts", file=sys.stderr)
        return process.EXIT_FAILED
    rows = [("state folder", str(state_dir)), ("data1", f"{data1_bytes:,} bytes")]
    if current is None:
        rows.append(("checkpoint", "none yet: the worker has not committed one"))
        rows.append(("lag", f"{data1_bytes:,} bytes"))
    else:
        rows += [
            ("checkpoint", f"{current.updated_at} ({current.age():.1f} s ago)"),
            ("offset", f"{current.offset:,}"),
            ("lag", f"{max(0, data1_bytes - current.offset):,} bytes"),
            ("counted", f"{current.events:,} events, {len(current.counts):,} experiences, "
                        f"{current.skipped:,} skipped"),
        ]
        rows += [(f"project {project}", f"{sum(counts.values()):,} events, "
                                        f"{len(counts):,} experiences")
                 for project, counts in sorted(current.projects.items())]
    rows.append(("overview", overview_status(state_dir, overview_store)))
    for label, value in rows:
        print(f"{label:<14} {value}", file=out)
    if current:
        print_top(current, out)
    return process.EXIT_OK


def overview_status(state_dir, store):
    """Where the experience overview stands in data1.details (`store`: which one keeps it,
    settings.overview_store())."""
    layout = Layout(state_dir)
    if store == "duckdb":
        state = overview_facts_state(layout)
        if isinstance(state, str):
            return state
    else:
        try:
            [[state]] = OverviewReader(state_dir).run([("state",)])
        except NoOverview:
            return "none yet (or MINI_ANALYTICS_OVERVIEW is off)"
        except sqlite3.DatabaseError as error:
            return f"overview.sqlite3 is unreadable ({error}): the worker will count it again"
    try:
        details = layout.details.stat().st_size
    except FileNotFoundError:
        details = 0
    return (f"{state.events:,} SDK events; data1.details offset {state.position:,} of "
            f"{details:,} bytes")


def overview_facts_state(layout):
    """overview.duckdb's OverviewState, or why there is none: asked of the worker, which
    holds the store open, or read from the file when no worker holds it."""
    from storage.views.overview_facts import read_state  # DuckDB, only when it keeps it

    try:
        return WorkerOverview(layout.worker_socket, timeout=5).state()
    except NoOverview:
        pass  # no worker answering: the file may be read, unless one holds it
    try:
        state = read_state(layout.overview_facts)
    except Exception as error:  # noqa: BLE001 - duckdb's errors, all said as they are
        return (f"overview.duckdb cannot be read now ({type(error).__name__}: {error}); a "
                "running worker answers for it")
    return state or "none yet (or MINI_ANALYTICS_OVERVIEW is off)"


def print_top(checkpoint, out):
    if checkpoint.counts:
        print(f"top {min(TOP, len(checkpoint.counts))} experiences", file=out)
        top = checkpoint.top(TOP)
        width = max(len(str(key)) for key, _ in top)
        for key, count in top:
            print(f"  {key:>{width}}  {count:,}", file=out)


class ProgressBar:
    """A one-line progress bar on a terminal (or one line per second in a log)."""

    def __init__(self, total_bytes, out=sys.stderr, width=30):
        self.total = max(1, total_bytes)
        self.out, self.width = out, width
        self.started = time.monotonic()
        self.shown_at = 0.0
        self.shown_offset = None
        self.live = out.isatty()

    def __call__(self, offset, tokens, final=False):
        now = time.monotonic()
        if final and offset == self.shown_offset:
            # Already on screen: a second identical line would only repeat it.
            if self.live:
                self.out.write("\n")
            return
        if not final and now - self.shown_at < (0.1 if self.live else 1.0):
            return
        self.shown_at, self.shown_offset = now, offset
        done = min(1.0, offset / self.total)
        filled = int(done * self.width)
        rate = tokens / max(now - self.started, 1e-9)
        line = (f"rebuild [{'#' * filled}{'-' * (self.width - filled)}] {done:6.1%}  "
                f"{offset / 1e6:,.1f}/{self.total / 1e6:,.1f} MB  {rate / 1e6:.2f} M events/s")
        self.out.write(("\r" + line) if self.live else line + "\n")
        if final and self.live:
            self.out.write("\n")
        self.out.flush()


def rebuild(state_dir):
    """Recount data2 from data1 from scratch, with a progress bar."""
    try:
        series, retention = settings.series(), settings.minute_retention()
        overview, session_timeout = settings.overview(), settings.session_timeout()
        overview_store = settings.overview_store()
        cluster = settings.cluster()
    except settings.ConfigError as error:
        return process.bad_setting("worker", error)
    if cluster:
        print("rebuild recounts data1, the single machine's log; it is not available in "
              "cluster mode yet (docs/cluster.md)", file=sys.stderr)
        return process.EXIT_BAD_SETUP
    bar = ProgressBar(data1_size(state_dir))
    started = time.monotonic()
    try:
        state_dir.mkdir(exist_ok=True)
        result = Worker(state_dir, series=series, minute_retention=retention,
                        overview=overview, session_timeout=session_timeout,
                        overview_store=overview_store).rebuild(bar)
    except AlreadyLocked:
        print(
            f"a worker is running on {state_dir} (it holds worker.lock); stop it first, "
            "e.g. .venv/bin/supervisorctl -c supervisord.conf stop worker",
            file=sys.stderr,
        )
        return process.EXIT_FAILED
    except KeyboardInterrupt:
        print("\nrebuild interrupted; data2 holds its last committed checkpoint", file=sys.stderr)
        return 130
    bar(result.offset, result.events + result.skipped, final=True)
    print(
        f"rebuilt data2 in {time.monotonic() - started:.2f} s: offset {result.offset:,}, "
        f"{result.events:,} events, {len(result.counts):,} experiences, "
        f"{result.skipped:,} skipped",
        file=sys.stderr,
    )
    return process.EXIT_OK


COMMANDS = {"run": run, "status": status, "rebuild": rebuild}


def main(argv):
    usage = f"{__doc__.strip()}\n\n{settings.help_table()}"
    if argv in (["-h"], ["--help"], ["help"]):
        print(usage)
        return process.EXIT_OK
    command = argv[0] if argv else "run"
    if command not in COMMANDS or len(argv) > 1:
        problem = (f"unknown command {command!r}" if command not in COMMANDS
                   else f"{command} takes no arguments, got {' '.join(argv[1:])!r}")
        print(f"python -m worker: {problem}\n\n{usage}", file=sys.stderr)
        return process.EXIT_BAD_SETUP
    try:
        state_dir = settings.state_dir()
    except settings.ConfigError as error:
        process.start_logging("worker")
        return process.bad_setting("worker", error)
    # Only the worker itself writes its log file; status and rebuild answer on the terminal.
    process.start_logging("worker", state_dir if command == "run" else None)
    return COMMANDS[command](state_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
