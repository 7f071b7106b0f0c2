"""`python -m worker run | status` in cluster mode (MINI_ANALYTICS_CLUSTER set).

worker/__main__.py imports this module only in cluster mode: the single-machine mode never
imports nats-py.
"""

import logging
import sys

from storage import process
from storage.checkpoint import Checkpoint, CorruptCheckpoint, merge
from storage.layout import Layout
from storage.lockfile import hold_exclusive_lock
from storage.stream import setup as stream_setup
from storage.stream.leases import Leases, member_name
from storage.stream.link import UNAVAILABLE, Link
from storage.stream.state import NoQuorum, asking, cluster_state
from worker.stream_runner import StreamWorker, owner_name

log = logging.getLogger("worker")


def run(state_dir, servers, partition_count, replicas, dedupe_window, interval, takeover,
        series=True, minute_retention=48 * 3600, overview=True, session_timeout=1800,
        overview_store="sqlite"):
    """Count this worker's share of the stream's partitions until SIGTERM, keeping their
    series and overview stores (unless `series` or `overview` is off; the overview's in
    `overview_store`, settings.overview_store()) in `state_dir`. Returns the exit code."""
    log.info("worker starting in cluster mode: servers=%s replicas=%d interval=%gs "
             "takeover=%gs series=%s minute_retention=%gh overview=%s session_timeout=%ds",
             ",".join(servers), replicas, interval, takeover, "on" if series else "off",
             minute_retention / 3600, f"on ({overview_store})" if overview else "off",
             session_timeout)
    # One worker per state folder: its stores have one writer, and its place in the cluster
    # (storage/stream/leases.py) one holder. Raises AlreadyLocked (run_in_state_folder says so).
    hold_exclusive_lock(Layout(state_dir).worker_lock)
    link, partitions, failed = stream_setup.connect(servers, "worker", replicas, dedupe_window,
                                                    log, partition_count)
    if link is None:
        return failed
    owner = owner_name()
    leases = Leases(link, member_name(state_dir), owner, takeover)
    log.info("worker %s: sharing the stream's %d partitions (%s to %s) with the other live "
             "workers; a lease not renewed for %g s is taken over", owner, len(partitions),
             partitions[0], partitions[-1], takeover)
    try:
        StreamWorker(link, partitions, owner=owner, seen_dir=state_dir,
                     series_dir=state_dir if series else None,
                     minute_retention=minute_retention,
                     overview_dir=state_dir if overview else None,
                     session_timeout=session_timeout, overview_store=overview_store,
                     leases=leases).run(interval)
        return process.EXIT_OK
    except UNAVAILABLE as error:
        log.error("NATS did not answer (%s: %s); exiting, to start again", type(error).__name__,
                  error)
        return process.paced(process.EXIT_FAILED)
    finally:
        link.close()


def status(servers, print_top, out=sys.stdout):
    """Print each partition's position, lag, worker (and since when it counts it) and last
    commit, and the top counts (with `print_top(merged checkpoint, out)`)."""
    try:
        link = Link(servers, "worker status")
    except UNAVAILABLE as error:
        print(f"no NATS server answered at {','.join(servers)} ({type(error).__name__})",
              file=sys.stderr)
        return process.EXIT_FAILED
    try:
        with asking(link, "the stream's partitions"):
            partitions = stream_setup.recorded_partitions(link)
        state = cluster_state(link, partitions)
    except (NoQuorum, CorruptCheckpoint) as problem:
        print(problem, file=sys.stderr)
        return process.EXIT_FAILED
    finally:
        link.close()
    followers = ", ".join(f"{peer['name']} ({'current' if peer['current'] else 'behind'})"
                          for peer in state.replicas)
    print(f"{'stream':<14} leader {state.leader}; replicas {followers or 'none'}; "
          f"last sequence {state.last_sequence:,}", file=out)
    header = ("partition", "sequence", "messages", "lag", "worker", "since", "last commit")
    rows = [header]
    for partition in state.partitions:
        checkpoint = partition.checkpoint or Checkpoint()
        rows.append((
            partition.name, f"{checkpoint.offset:,}",
            f"{partition.counted_messages:,}/{partition.stream_messages:,}",
            f"{partition.lag_messages:,}",
            partition.worker["owner"] if partition.worker else "NONE ANSWERS",
            (partition.worker or {}).get("since") or "",
            checkpoint.updated_at or "none yet",
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(),
              file=out)
    merged = merge(partition.checkpoint for partition in state.partitions)
    print(f"{'counted':<14} {merged.events:,} events, {len(merged.counts):,} experiences, "
          f"{merged.skipped:,} skipped", file=out)
    for project, counts in sorted(merged.projects.items()):
        print(f"{'project ' + project:<14} {sum(counts.values()):,} events, "
              f"{len(counts):,} experiences", file=out)
    print_top(merged, out)
    return process.EXIT_OK
