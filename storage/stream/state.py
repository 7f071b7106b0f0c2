"""Where a cluster stands, partition by partition (cluster mode): what the ingest's /stats
and /healthz and `python -m worker status` report.

For each partition: the messages the stream holds for it, its checkpoint (sequence, messages
counted, owner, time), the lag between the two, and whether its worker answers its ping.
For the stream: its leader and replicas, which tell whether it has a quorum.
"""

import asyncio
import contextlib
import dataclasses
import logging
import time

import nats.errors
import nats.js.errors

from storage.stream import reads
from storage.stream.checkpoint_store import read_latest
from storage.stream.link import UNAVAILABLE
from storage.stream.names import (STREAM, SUBJECT_PREFIX, partition_subject,
                                  worker_ping_subject)

log = logging.getLogger("nats")

STREAM_INFO_TIMEOUT = 3.0
PING_TIMEOUT = 1.0
# The same NATS failure is logged again after this long, not on every request that meets it.
REPEAT_LOG_SECONDS = 60.0


class NoQuorum(Exception):
    """The cluster did not answer: no leader, most often because no majority of its servers
    is up (or this node reaches no NATS server at all). The message is in the engine's words,
    the same whichever node answers; NATS's own error is in the log."""


@contextlib.contextmanager
def asking(link, what):
    """Turn a NATS failure inside the block, while asking the cluster for `what`, into
    NoQuorum; log NATS's own words for the operator (once a minute while they repeat)."""
    try:
        yield
    except UNAVAILABLE as error:
        _log_now_and_then(f"{what} did not answer: {type(error).__name__}: {error}".rstrip(": "))
        if not link.connected:
            raise NoQuorum("no NATS server is reachable from this node (reconnecting)") from None
        raise NoQuorum(f"no majority: the cluster has no leader for {what} just now (it is "
                       "electing one, or fewer than a majority of its NATS servers are up); "
                       "try again in a few seconds") from None


_logged = {}  # line -> when it was last logged


def _log_now_and_then(line):
    now = time.monotonic()
    if now - _logged.get(line, -REPEAT_LOG_SECONDS) >= REPEAT_LOG_SECONDS:
        _logged.clear()  # only the latest matters: a changed error is logged at once
        _logged[line] = now
        log.warning("%s", line)


@dataclasses.dataclass
class PartitionState:
    name: str
    stream_messages: int
    checkpoint: object = None  # the Checkpoint, or None before the first commit
    revision: int = 0
    worker: dict = None  # the owning worker's answer to a ping, or None if none answered

    @property
    def counted_messages(self):
        return self.checkpoint.messages if self.checkpoint else 0

    @property
    def lag_messages(self):
        return max(0, self.stream_messages - self.counted_messages)


@dataclasses.dataclass
class ClusterState:
    leader: str
    replicas: list  # [{"name", "current", "lag"}] of the stream's followers
    last_sequence: int
    partitions: list  # [PartitionState], by name


def stream_state(link):
    """The stream's leader, replicas, last sequence and messages per partition. Raises
    NoQuorum if it does not answer in time."""
    with asking(link, f"stream {STREAM}"):
        info = link.call(link.js.stream_info(STREAM, subjects_filter=SUBJECT_PREFIX + "*"),
                         STREAM_INFO_TIMEOUT)
    cluster = info.cluster
    replicas = [{"name": peer.name, "current": bool(peer.current), "lag": peer.lag or 0}
                for peer in (cluster.replicas or [])] if cluster else []
    messages = {subject[len(SUBJECT_PREFIX):]: count
                for subject, count in (info.state.subjects or {}).items()}
    return (cluster.leader if cluster else None), replicas, info.state.last_seq, messages


def stored_after(link, positions):
    """{partition: when the stream stored the partition's first message after sequence
    `positions[partition]` (Unix seconds), or None if it has none}. Raises NoQuorum if the
    stream does not answer in time."""
    async def first(partition, sequence):
        try:
            message = await link.js.get_msg(STREAM, seq=sequence + 1, next=True,
                                            subject=partition_subject(partition))
        except nats.js.errors.NotFoundError:
            return None
        return message.time.timestamp()

    async def ask_all():
        found = await asyncio.gather(*(first(partition, sequence)
                                       for partition, sequence in positions.items()))
        return dict(zip(positions, found))

    with asking(link, f"stream {STREAM}"):
        return link.call(ask_all(), STREAM_INFO_TIMEOUT)


def ask_each(link, partitions, subject, question, timeout):
    """Send `question` (bytes) to each partition's `subject(partition)` at once, and return
    {partition: its JSON answer, or the exception that stood for it (no answer in time, no
    one listening, an answer that is not JSON)}. Their workers answer these subjects."""
    async def ask(partition):
        try:
            reply = await link.nc.request(subject(partition), question, timeout=timeout)
            return reads.decode(reply.data)
        except (nats.errors.Error, asyncio.TimeoutError, ValueError) as error:
            return error

    async def ask_all():
        answers = await asyncio.gather(*(ask(partition) for partition in partitions))
        return dict(zip(partitions, answers))

    return link.call(ask_all(), timeout + 2)


def ping_workers(link, partitions):
    """{partition: the owning worker's answer, or None if no worker answered in time}."""
    with asking(link, "the workers' pings"):
        answers = ask_each(link, partitions, worker_ping_subject, b"", PING_TIMEOUT)
    return {partition: None if isinstance(answer, Exception) else answer
            for partition, answer in answers.items()}


def cluster_state(link, extra_partitions=(), known=None):
    """The whole picture. Partitions are those the stream has messages for, and
    `extra_partitions` (say, ones a worker is configured for but nothing was written to yet).
    `known`: checkpoints read before, as read_latest takes them. Raises NoQuorum, or
    CorruptCheckpoint."""
    leader, replicas, last_sequence, messages = stream_state(link)
    names = sorted(set(messages) | set(extra_partitions))
    with asking(link, "the checkpoints"):
        checkpoints = read_latest(link, names, known)
    workers = ping_workers(link, names)
    partitions = []
    for name in names:
        checkpoint, revision = checkpoints.get(name, (None, 0))
        partitions.append(PartitionState(name, messages.get(name, 0), checkpoint, revision,
                                         workers[name]))
    return ClusterState(leader, replicas, last_sequence, partitions)
