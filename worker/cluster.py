"""`python -m worker run | status` in cluster mode (MINI_ANALYTICS_CLUSTER set).

worker/__main__.py imports this module only in cluster mode: the single-machine mode never
imports nats-py.
"""

import logging
import sys

from storage import process, stream_setup
from storage.checkpoint import Checkpoint, CorruptCheckpoint, merge
from storage.cluster_state import NoQuorum, cluster_state
from storage.nats_link import UNAVAILABLE, Link
from storage.stream_checkpoint_store import Fenced
from worker.stream_runner import StreamWorker

log = logging.getLogger("worker")


def run(servers, partitions, replicas, dedupe_window, interval, series_dir, minute_retention,
        overview_dir=None, session_timeout=1800):
    """Count `partitions` until SIGTERM; keep their series stores in `series_dir` (None: no
    counts over time), and their overview stores in `overview_dir` (None: no overview).
    Returns the exit code."""
    log.info("worker starting in cluster mode: partitions=%s servers=%s replicas=%d "
             "interval=%gs series=%s minute_retention=%gh overview=%s session_timeout=%ds",
             ",".join(partitions), ",".join(servers), replicas, interval,
             "on" if series_dir else "off", minute_retention / 3600,
             "on" if overview_dir else "off", session_timeout)
    link, failed = stream_setup.connect(servers, f"worker {','.join(partitions)}", replicas,
                                        dedupe_window, log)
    if link is None:
        return failed
    try:
        StreamWorker(link, partitions, series_dir=series_dir,
                     minute_retention=minute_retention, overview_dir=overview_dir,
                     session_timeout=session_timeout).run(interval)
        return process.EXIT_OK
    except Fenced as fenced:
        log.error("FENCED: %s; exiting, to start again from the latest checkpoint", fenced)
        return process.paced(process.EXIT_FAILED)
    except UNAVAILABLE as error:
        # A commit not answered in time may or may not have happened: only a restart, which
        # reloads the checkpoint, knows which.
        log.error("NATS did not answer (%s: %s); exiting, to resume from the last commit",
                  type(error).__name__, error)
        return process.paced(process.EXIT_FAILED)
    finally:
        link.close()


def status(servers, partitions, print_top, out=sys.stdout):
    """Print each partition's position, lag, owner and last commit, and the top counts
    (with `print_top(merged checkpoint, out)`)."""
    try:
        link = Link(servers, "worker status")
    except UNAVAILABLE as error:
        print(f"no NATS server answered at {','.join(servers)} ({type(error).__name__})",
              file=sys.stderr)
        return process.EXIT_FAILED
    try:
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
    header = ("partition", "sequence", "messages", "lag", "worker", "last commit")
    rows = [header]
    for partition in state.partitions:
        checkpoint = partition.checkpoint or Checkpoint()
        rows.append((
            partition.name, f"{checkpoint.offset:,}",
            f"{partition.counted_messages:,}/{partition.stream_messages:,}",
            f"{partition.lag_messages:,}",
            partition.worker["owner"] if partition.worker else "NONE ANSWERS",
            checkpoint.updated_at or "none yet",
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(),
              file=out)
    merged = merge(partition.checkpoint for partition in state.partitions)
    print(f"{'counted':<14} {merged.events:,} events, {len(merged.counts):,} experiences, "
          f"{merged.skipped:,} skipped", file=out)
    print_top(merged, out)
    return process.EXIT_OK
