"""The checker for cluster tests under faults, as Jepsen's: a watcher of what users and the
checkpoints show while the faults run, and the checks on the stream and the checkpoints
afterwards. (The ledgers of what clients were told are tests/ledger.py's.)"""

import itertools
import threading
import time

from http_client import NO_ANSWER, request, wait_for
from storage.stream.checkpoint_store import history, read_latest
from storage.stream.link import UNAVAILABLE, Link
from storage.stream.reader import StreamReader
from worker.tally import Tally


class Watcher:
    """Polls the stream's leader, the checkpoints and the read endpoints while the chaos
    runs: counts leader changes, and fails if a checkpoint or a count read ever goes
    backwards."""

    def __init__(self, node, hours):
        self.node = node
        self.hours = hours  # a range of whole hours that holds the whole test
        self.leaders = []
        self.observations = 0
        self.reads = 0
        self.failures = []
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._watch_leader, daemon=True),
                         threading.Thread(target=self._watch_checkpoints, daemon=True)]
        self._threads += [threading.Thread(target=self._watch_reads, args=(path,), daemon=True)
                          for path in ("/counts", "/stats", "/counts?" + hours)]

    def __enter__(self):
        self.link = Link(self.node.servers, "chaos watcher")
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.link.close()
        assert not self.failures, self.failures[:3]

    def watched(self):
        """Wait for the watcher to look at the checkpoints and at a read once more: how
        often it can depends on the machine's speed and on which NATS node its own link is
        on (a cut may hold it up for seconds), so a test waits for it."""
        observations, reads = self.observations, self.reads
        wait_for(lambda: self.observations > observations and self.reads > reads, 60,
                 what="the watcher to look again")

    def _watch_leader(self):
        while not self._stopping.wait(0.1):
            leader = self.node.stream_leader()
            if leader and (not self.leaders or self.leaders[-1] != leader):
                self.leaders.append(leader)

    def _watch_checkpoints(self):
        seen = {}
        while not self._stopping.wait(0.2):
            try:
                latest = read_latest(self.link, self.node.partitions)
            except UNAVAILABLE:
                continue  # a node is down or paused: nothing to observe this time
            for name, (checkpoint, revision) in latest.items():
                before = seen.get(name)
                if before and (revision < before[1] or checkpoint.offset < before[0].offset
                               or any(checkpoint.counts.get(k, 0) < v
                                      for k, v in before[0].counts.items())):
                    self.failures.append(f"{name} went backwards: revision {before[1]} -> "
                                         f"{revision}, sequence {before[0].offset} -> "
                                         f"{checkpoint.offset}")
                seen[name] = (checkpoint, revision)
                self.observations += 1


    def _watch_reads(self, path):
        """Ask `path` of both ingest nodes in turn. Each answer's counts must be at least
        every count of an answer that either node gave before this request was sent: a
        user reading one node, or both behind a load balancer, never sees one go down."""
        answered = []  # (when the answer came, its counts)
        ports = [self.node.ingest_port(1), self.node.ingest_port(2)]
        for turn in itertools.count():
            if self._stopping.wait(0.1):
                return
            sent = time.monotonic()
            try:
                status, body = request(ports[turn % 2], "GET", path, timeout=10)
            except NO_ANSWER:
                continue  # that ingest node is down, or killed mid-answer: nothing to observe
            if status != 200:
                continue  # a 503 (no majority, a worker missing) shows nothing old
            counts = {"events": body["events"], **body.get("counts", {})}
            floor = {}
            for when, earlier in answered:
                if when < sent:
                    for key, count in earlier.items():
                        floor[key] = max(floor.get(key, 0), count)
            lower = {key: (count, counts.get(key, 0)) for key, count in floor.items()
                     if counts.get(key, 0) < count}
            if lower:
                self.failures.append(f"{path} on ingest-{turn % 2 + 1} went backwards: "
                                     f"{dict(list(lower.items())[:3])}")
            answered = [(when, earlier) for when, earlier in answered if when >= sent]
            answered.append((time.monotonic(), counts))
            self.reads += 1


def recount(link, partition):
    """The partition's counts and each named project's, recounted from its messages in the
    stream, the repeats of SDK events left out by the rule (storage/views/seen_store.py's),
    applied here on its own: the latest time each key was stored at, over the whole stream."""
    tally, counts, projects = Tally(), {}, {}
    latest = {}
    for message in StreamReader(link, partition).messages(0):
        part, records = message.sdk, message.records
        if part is not None:
            kept, inside = [], set()
            for key, token in zip(part.keys, part.tokens):
                before = latest.get(key)
                repeat = part.window and (key in inside or before is not None and (
                    before >= message.stored_ms - part.window * 1000))
                inside.add(key)
                latest[key] = max(before or 0, message.stored_ms)
                if not repeat and token != b"-":
                    kept.append(token + b" ")
            records = b"".join(kept)
        tally.add(records)
    tally.drain_into(counts, projects)
    return counts, projects


def check_partitions(link, partitions):
    """Each partition's checkpoint equals a recount of its messages in the stream, and its
    kept commits form one chain: each committed from the revision just before it, so no two
    workers ever committed from the same revision. Returns the chains."""
    chains = {}
    for partition in partitions:
        checkpoint, _ = read_latest(link, [partition])[partition]
        assert (checkpoint.counts, checkpoint.projects) == recount(link, partition), partition
        chain = chains[partition] = history(link, partition)
        assert chain, f"{partition} has a checkpoint, and no commit in its history"
        for (revision, _, _, _), (_, before, _, _) in zip(chain, chain[1:]):
            assert before == revision, (partition, chain)
    return chains
