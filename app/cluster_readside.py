"""The read side in cluster mode: the partition checkpoints, merged, the cluster's state, and
the counts over time summed over the partitions' workers, and the experience overview merged
from theirs: a ReadSide (app/readside.py), as FileReadSide is.

Reads never go backwards. Any ingest node serves them, and a user may watch one node or
several behind a load balancer, so no node ever serves a checkpoint older than one it has
already served, or than the bucket's leader holds:
* checkpoints are read through the bucket's leader (storage/stream/checkpoint_store.py),
  never from a replica that may lag; while there is no leader, the answer is a 503 naming the
  lost majority, not older counts;
* every partition of the stream is asked for (its checkpoint, its series, its overview), not
  only those a stream's info lists as holding messages: that info may come from a server
  that lags, and a node then served figures without the partitions it left out (seen with
  the network flapping: 50 events on one node, then 0 on the other);
* a node keeps, per partition, the newest revision it has read, and never replaces it with an
  older one: two requests in flight at once, or a paused old leader that still answers, cannot
  make it step back;
* the counts over time carry each partition store's position, and an answer from behind the
  newest position already served is refused (ClusterSeries).
A checkpoint is decoded once per revision, and the merge is redone only when a revision
changed.
"""

import threading
import time

from app.readside import Unavailable
from storage.checkpoint import CorruptCheckpoint, merge
from storage.stream import reads
from storage.stream.checkpoint_store import read_latest
from storage.stream.names import overview_query_subject, series_query_subject
from storage.stream.setup import current_majority
from storage.stream.state import (NoQuorum, ask_each, asking, cluster_state, stored_after,
                                  stream_state)
from storage.views.overview_store import OverviewState
from storage.views.series_store import SeriesState

RUNNING, MISSING, STALLED = "running", "missing", "stalled"
# How long the list of partitions is reused before the stream is asked again.
PARTITIONS_FRESH_SECONDS = 1.0
# How long a partition's worker may take to answer a read of its series or its overview.
WORKER_TIMEOUT = 2.0


class ClusterReadSide:
    def __init__(self, link, stalled_after, partitions=(), clock=time.time):
        """`partitions`: the stream's, each reported by stats() and health() even before it
        has a message (a partition nobody counts would not be counted when one comes)."""
        self.link = link
        self.all_partitions = list(partitions)
        self.series = ClusterSeries(link, self._partitions_to_ask)
        self.overview = ClusterOverview(link, self._partitions_to_ask)
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
                # Asked again in a second, not on every request: each ask waits out a timeout.
                self._partitions_at = now
            else:
                self._partitions, self._partitions_at = sorted(messages), now
        return self._partitions

    def _partitions_to_ask(self):
        """Every partition of the stream (fixed when it was made), or where none was given,
        those the stream lists. Never only the listed ones when all are known: a lagging
        server's list can leave some out, and a read would then miss their figures."""
        if self.all_partitions:
            return list(self.all_partitions)
        with self._lock:
            return list(self._partition_names())

    def committed(self):
        return self.committed_at()[0]

    def series_state(self, project=""):
        # Each partition's worker refuses to answer while its store is behind its checkpoint.
        return self.series.state(project)

    def committed_at(self):
        with self._lock:
            try:
                # The partitions fixed when the stream was made (a partition with no
                # checkpoint yet is simply not found); the stream's list where none was given.
                names = self.all_partitions or self._partition_names()
                with asking(self.link, "the checkpoints"):
                    found = read_latest(self.link, names, known=self._checkpoints)
            except NoQuorum as problem:
                raise Unavailable(str(problem)) from None
            except CorruptCheckpoint as problem:
                raise Unavailable(unreadable(problem)) from None
            self._keep_newest(found)
            return self._merge()

    def _keep_newest(self, found):
        """Take each partition's checkpoint in `found`, {partition: (Checkpoint, revision)},
        unless this node already read a newer revision of it (see the module's docstring).
        Called with the lock held."""
        for name, (checkpoint, revision) in found.items():
            if revision > self._checkpoints.get(name, (None, 0))[1]:
                self._checkpoints[name] = (checkpoint, revision)

    def _merge(self):
        """The merged counts of self._checkpoints, and where each partition stands; redone
        only when a revision changed. Called with the lock held."""
        key = tuple(sorted((name, revision) for name, (_, revision) in self._checkpoints.items()))
        if key != self._merged_key:
            self._merged = merge(checkpoint for checkpoint, _ in self._checkpoints.values())
            self._merged_key = key
            self._positions = {name: {"sequence": found.offset, "events": found.events}
                               for name, (found, _) in sorted(self._checkpoints.items())}
        return self._merged, {"partitions": self._positions}

    def _state(self):
        """The cluster's state, and the merged counts of the newest checkpoints read."""
        try:
            # Outside the lock: the pings may wait a second for a worker that is gone, and
            # /counts must not wait with them.
            state = cluster_state(self.link, self.all_partitions, known=self._checkpoints)
        except NoQuorum as problem:
            raise Unavailable(str(problem)) from None
        except CorruptCheckpoint as problem:
            raise Unavailable(unreadable(problem)) from None
        with self._lock:
            self._keep_newest({partition.name: (partition.checkpoint, partition.revision)
                               for partition in state.partitions if partition.checkpoint})
            for partition in state.partitions:
                partition.checkpoint, partition.revision = self._checkpoints.get(
                    partition.name, (None, 0))
            merged, _ = self._merge()
        return state, merged

    def _worker(self, partition):
        """The partition's worker: running, missing (none answers) or stalled."""
        answer = partition.worker
        if answer is None:
            return {"state": MISSING, "owner": None, "since": None,
                    "reason": f"no worker answers for partition {partition.name}"}
        idle = max(0.0, self.clock() - float(answer.get("progress_at", 0)))
        if partition.lag_messages and idle > self.stalled_after:
            return {"state": STALLED, "owner": answer.get("owner"), "since": answer.get("since"),
                    "reason": f"partition {partition.name}'s worker has made no progress for "
                              f"{idle:.0f} s (more than {self.stalled_after:g} s) with "
                              f"{partition.lag_messages} messages waiting"}
        return {"state": RUNNING, "owner": answer.get("owner"), "since": answer.get("since"),
                "reason": None}

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

    def overview_states(self):
        return self.overview.states()

    def overview_waiting(self, states):
        try:
            stored = stored_after(self.link, {partition: state.position
                                              for partition, state in states.items()})
        except NoQuorum as problem:
            raise Unavailable(str(problem)) from None
        now = self.clock()
        return max([0.0] + [now - at for at in stored.values() if at is not None])

    def health(self):
        stats = self.stats()  # Unavailable (503) names a stream that does not answer
        stream = stats["stream"]
        details = {"worker": stats["worker"], "stream": stream}
        replicas = 1 + len(stream["replicas"])
        current, majority = current_majority(
            stream["leader"], sum(1 for peer in stream["replicas"] if peer["current"]), replicas)
        if not majority:
            # A leader that lost its followers answers for a few seconds before it steps down.
            return (f"no majority: only {current} of {replicas} replicas of the stream are "
                    "current; writes cannot be acknowledged"), details
        if stats["worker"]["state"] != RUNNING:
            return f"worker {stats['worker']['state']}: {stats['worker']['reason']}", details
        return None, details


class Behind(Exception):
    """A partition's worker answered from behind what this node already served."""


def unreadable(problem):
    return f"a partition checkpoint is unreadable ({problem}); its worker will recount it"


class WorkerReads:
    """Reads answered by every partition's worker (worker/stream_runner.py), for the counts
    over time or the overview: `what`, asked on `subject_of(partition)`. Never from behind:
    each answer carries its store's position (`position_of(answer)`), and an answer from
    behind a position this node already served is refused, so figures never go back."""

    def __init__(self, link, partition_names, subject_of, what, position_of):
        self.link = link
        self.partition_names = partition_names
        self.subject_of = subject_of
        self.what = what
        self.position_of = position_of
        self._lock = threading.Lock()
        self._served = {}  # partition -> the newest store position served from

    def ask(self, question):
        """{partition: answer} to `question` (JSON). Raises Unavailable naming the first
        partition whose worker does not answer, answers an error, or answers from behind:
        `what` is made of every partition's, and without one it would be wrong, not
        partial."""
        # Asked again once: an answer can be behind only because another request, sent
        # later, was answered first; the store has caught up with it by now.
        try:
            return self._ask_once(question)
        except Behind:
            pass
        try:
            return self._ask_once(question)
        except Behind as behind:
            raise Unavailable(str(behind)) from None

    def _ask_once(self, question):
        what = self.what
        try:
            names = self.partition_names()
            with asking(self.link, f"a read of {what}"):
                answers = ask_each(self.link, names, self.subject_of,
                                   reads.encode(question), WORKER_TIMEOUT)
        except NoQuorum as problem:
            raise Unavailable(str(problem)) from None
        for name, answer in sorted(answers.items()):
            if isinstance(answer, Exception):
                raise Unavailable(f"every partition's worker is needed for {what}: no worker "
                                  f"answers for partition {name}")
            if "error" in answer:
                raise Unavailable(f"every partition's worker is needed for {what}: "
                                  f"{answer['error']}")
        with self._lock:
            for name, answer in answers.items():
                position = self.position_of(answer)
                if position < self._served.get(name, 0):
                    raise Behind(
                        f"partition {name}'s {what} answered from sequence {position}, "
                        f"behind the {self._served[name]} already served (a second worker "
                        "on the partition, or its store recounted); try again")
                self._served[name] = position
        return answers


class ClusterSeries:
    """The counts over time in cluster mode, with storage/views/series_store.SeriesReader's
    methods: each partition's worker answers for its partition's series store, and the
    answer is their sum (WorkerReads: every partition's, never from behind)."""

    def __init__(self, link, partition_names):
        self.reads = WorkerReads(link, partition_names, series_query_subject,
                                 "the counts over time",
                                 lambda answer: answer["state"][0] if answer["state"] else 0)

    def state(self, project=""):
        """A SeriesState whose offset is {partition: {"sequence", "events"}} of each store,
        and newest_minute `project`'s."""
        states = {name: SeriesState(*answer["state"]) for name, answer
                  in self.reads.ask({"ask": "state", "project": project}).items()
                  if answer["state"]}
        return SeriesState(
            offset={name: {"sequence": state.offset, "events": state.events}
                    for name, state in sorted(states.items())},
            fingerprint="", events=sum(state.events for state in states.values()),
            # Each store keeps its minutes back from its own newest one, which is at most
            # this: every store holds every minute from this one's retention on.
            newest_minute=max((state.newest_minute for state in states.values()), default=0))

    @staticmethod
    def position(state):
        return {"partitions": state.offset}

    def buckets(self, step, experience, start, end, project=""):
        question = {"ask": "buckets", "step": step, "experience": experience, "start": start,
                    "end": end, "project": project}
        return self._sum(answer["buckets"] for answer in self.reads.ask(question).values())

    def counts(self, step, start, end, project=""):
        question = {"ask": "counts", "step": step, "start": start, "end": end,
                    "project": project}
        return self._sum(answer["counts"] for answer in self.reads.ask(question).values())

    @staticmethod
    def _sum(pair_lists):
        total = {}
        for pairs in pair_lists:
            for key, count in pairs:
                total[key] = total.get(key, 0) + count
        return total


class ClusterOverview:
    """The experience overview in cluster mode, with storage/views/overview_store.OverviewReader's
    run(): each partition's worker runs the reads on its partition's overview store, in one
    snapshot (worker/stream_runner.py), and the rows of every partition are put together for
    app/overview_query.py to merge (an install's events are all in one partition, so its
    sessions are whole in one store; people and sums merge across them). Raises Unavailable
    (503) as WorkerReads says."""

    def __init__(self, link, partition_names):
        self.reads = WorkerReads(link, partition_names, overview_query_subject,
                                 "the experience overview", lambda answer: answer["position"])

    def states(self):
        """{partition: its overview store's OverviewState}."""
        return {partition: OverviewState(*reads.decode_rows(answer["results"][0])[0])
                for partition, answer in self.reads.ask({"calls": [["state"]]}).items()}

    def run(self, calls, project=""):
        results = [[] for _ in calls]
        for _, answer in sorted(self.reads.ask({"calls": calls, "project": project}).items()):
            for rows, more in zip(results, answer["results"]):
                rows.extend(reads.decode_rows(more))
        return results
