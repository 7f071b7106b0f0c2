"""The read side in cluster mode: the partition checkpoints, merged, and the cluster's state.
The same methods as app/readside.py's FileReadSide (see there).

Any ingest node serves it: the checkpoints are read from the replicated bucket by direct get,
which any replica answers, so /counts keeps answering while the stream elects a new leader.
A checkpoint is decoded once per revision, and the merge is redone only when a revision
changed.
"""

import threading
import time

from app.readside import Unavailable
from storage.checkpoint import CorruptCheckpoint, merge
from storage.cluster_state import NoQuorum, cluster_state, stream_state
from storage.nats_link import UNAVAILABLE
from storage.stream_checkpoint_store import read_latest

RUNNING, MISSING, STALLED = "running", "missing", "stalled"
# How long the list of partitions is reused before the stream is asked again.
PARTITIONS_FRESH_SECONDS = 1.0


class ClusterReadSide:
    series = None  # counts over time are not kept in cluster mode yet (README)

    def __init__(self, link, stalled_after, clock=time.time):
        self.link = link
        self.stalled_after = stalled_after
        self.clock = clock
        self._lock = threading.Lock()
        self._partitions, self._partitions_at = [], -PARTITIONS_FRESH_SECONDS
        self._checkpoints = {}  # partition -> (Checkpoint, revision), the last read
        self._merged, self._merged_key = merge([]), ()
        self._positions = {}  # partition -> sequence the merged counts reach

    def _partition_names(self):
        """The partitions the stream has messages for; the last known list while the stream
        cannot answer (a leader election), so that the counts stay readable."""
        now = time.monotonic()
        if now - self._partitions_at >= PARTITIONS_FRESH_SECONDS:
            try:
                _, _, _, messages = stream_state(self.link)
            except NoQuorum:
                if not self._partitions:
                    raise
            else:
                self._partitions, self._partitions_at = sorted(messages), now
        return self._partitions

    def committed(self):
        return self.committed_at()[0]

    def committed_at(self):
        with self._lock:
            try:
                names = self._partition_names()
                self._checkpoints = read_latest(self.link, names, known=self._checkpoints)
            except NoQuorum as problem:
                raise Unavailable(str(problem)) from None
            except CorruptCheckpoint as problem:
                raise Unavailable(f"a partition checkpoint is unreadable ({problem}); its "
                                  "worker will recount the partition") from None
            except UNAVAILABLE as error:
                raise Unavailable(f"the checkpoint bucket did not answer "
                                  f"({type(error).__name__})") from None
            return self._merge()

    def _merge(self):
        """The merged counts of self._checkpoints, and their positions; redone only when a
        revision changed. Called with the lock held."""
        key = tuple(sorted((name, revision) for name, (_, revision) in self._checkpoints.items()))
        if key != self._merged_key:
            self._merged = merge(checkpoint for checkpoint, _ in self._checkpoints.values())
            self._merged_key = key
            self._positions = {name: found.offset
                               for name, (found, _) in sorted(self._checkpoints.items())}
        return self._merged, {"partitions": self._positions}

    def _state(self):
        """The cluster's state, and the merged counts of the same checkpoints."""
        try:
            # Outside the lock: the pings may wait a second for a worker that is gone, and
            # /counts must not wait with them.
            state = cluster_state(self.link, known=self._checkpoints)
            with self._lock:
                self._checkpoints = {partition.name: (partition.checkpoint, partition.revision)
                                     for partition in state.partitions if partition.checkpoint}
                merged, _ = self._merge()
            return state, merged
        except (NoQuorum, CorruptCheckpoint) as problem:
            raise Unavailable(str(problem)) from None
        except UNAVAILABLE as error:
            raise Unavailable(f"NATS did not answer ({type(error).__name__})") from None

    def _worker(self, partition):
        """The partition's worker: running, missing (none answers) or stalled."""
        answer = partition.worker
        if answer is None:
            return {"state": MISSING, "owner": None,
                    "reason": f"no worker answers for partition {partition.name}"}
        idle = max(0.0, self.clock() - float(answer.get("progress_at", 0)))
        if partition.lag_messages and idle > self.stalled_after:
            return {"state": STALLED, "owner": answer.get("owner"),
                    "reason": f"partition {partition.name}'s worker has made no progress for "
                              f"{idle:.0f} s (more than {self.stalled_after:g} s) with "
                              f"{partition.lag_messages} messages waiting"}
        return {"state": RUNNING, "owner": answer.get("owner"), "reason": None}

    def stats(self):
        state, merged = self._state()
        partitions = []
        for partition in state.partitions:
            checkpoint = partition.checkpoint
            partitions.append({
                "partition": partition.name,
                "sequence": checkpoint.offset if checkpoint else 0,
                "stream_messages": partition.stream_messages,
                "counted_messages": partition.counted_messages,
                "lag_messages": partition.lag_messages,
                "events": checkpoint.events if checkpoint else 0,
                "owner": checkpoint.owner if checkpoint else None,
                "revision": partition.revision,
                "last_commit_at": checkpoint.updated_at if checkpoint else None,
                "worker": self._worker(partition),
            })
        problems = [entry["worker"]["reason"] for entry in partitions
                    if entry["worker"]["state"] != RUNNING]
        worst = next((entry["worker"]["state"] for entry in partitions
                      if entry["worker"]["state"] != RUNNING), RUNNING)
        return {
            "mode": "cluster",
            "stream": {"leader": state.leader, "replicas": state.replicas,
                       "last_sequence": state.last_sequence},
            "lag_messages": sum(entry["lag_messages"] for entry in partitions),
            "events": merged.events,
            "experiences": len(merged.counts),
            "skipped": merged.skipped,
            "last_checkpoint_at": merged.updated_at or None,
            "checkpoint_age_seconds": merged.age(),
            "worker": {"state": worst, "reason": "; ".join(problems) or None},
            "partitions": partitions,
        }

    def health(self):
        stats = self.stats()  # Unavailable (503) names a stream that does not answer
        details = {"worker": stats["worker"], "stream": stats["stream"]}
        replicas = stats["stream"]["replicas"]
        current = 1 + sum(1 for peer in replicas if peer["current"])
        if 2 * current <= 1 + len(replicas):
            # A leader that lost its followers answers for a few seconds before it steps down.
            return (f"only {current} of {1 + len(replicas)} replicas of the stream are current: "
                    "no majority, writes cannot be acknowledged"), details
        if stats["worker"]["state"] != RUNNING:
            return f"worker {stats['worker']['state']}: {stats['worker']['reason']}", details
        return None, details
