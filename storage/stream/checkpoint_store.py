"""The partition checkpoints (cluster mode): data2's store, on a replicated key-value bucket.

The format is in storage/checkpoint.py ("Cluster mode"). Guarantees:

* commit() replaces a partition's checkpoint by compare-and-set: the bucket accepts it only if
  the key's latest revision is still the one this store loaded or last committed. So a
  checkpoint is always a whole one (the old or the new), and a second worker committing the
  same partition is refused (Fenced) as soon as the first one commits: at most one owner's
  commits ever join the key's chain of revisions.
* The bucket is replicated like the stream, and a commit returns once a quorum stored it.
* Every read goes through the bucket's leader, never a follower that may lag: load()'s
  revision is the latest, so a worker starting after another one died resumes from its last
  commit, and read_latest() never serves the read side a checkpoint older than the leader
  holds (a lagging replica would: counts seen on the dashboard would go down). Without a
  leader there is no answer: the caller reports the lost majority rather than guessing.
* read_latest() is linearizable: it first writes a barrier to the bucket, which only a
  leader with a majority behind it can acknowledge. A leader cut off with a minority still
  believes it leads for a few seconds, and without the barrier would serve a node on its
  side checkpoints older than another node already showed (found by tests/test_partitions.py).
* Nothing is ever deleted: the key keeps its last commits as history (stream_setup.py), an
  unreadable value among them.
"""

import dataclasses

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from storage import checkpoint
from storage.stream.names import (CHECKPOINT_BUCKET, CHECKPOINT_BUCKET_STREAM, READ_BARRIER_KEY,
                                  checkpoint_key, kv_subject)
from storage.stream.reader import read_subject

TIMEOUT = 10.0


class Fenced(Exception):
    """Another worker committed this partition since this one loaded it."""


def bucket(js):
    """The checkpoint bucket, read through its leader (see the module's docstring)."""
    return KeyValue(name=CHECKPOINT_BUCKET, stream=CHECKPOINT_BUCKET_STREAM,
                    pre=kv_subject(), js=js, direct=False)


class StreamCheckpointStore:
    """One partition's checkpoint: its one writer (the worker that owns the partition)."""

    def __init__(self, link, partition, owner):
        self.link = link
        self.partition = partition
        self.key = checkpoint_key(partition)
        self.owner = owner
        self.revision = 0  # the key's revision this store is at; 0: no checkpoint yet
        self._bucket = bucket(link.js)

    def load(self):
        """The partition's committed checkpoint, or None if there is none. Raises
        CorruptCheckpoint, or what the link raises if the cluster cannot answer."""
        try:
            entry = self.link.call(self._bucket.get(self.key), TIMEOUT)
        except KeyNotFoundError:
            self.revision = 0
            return None
        # Remembered before decoding: a bad value is committed over (CAS on its revision).
        self.revision = entry.revision
        loaded, _ = checkpoint.decode_partition(entry.value, self.partition)
        return loaded

    def commit(self, new):
        """Make `new` the partition's checkpoint, stamped with the time and this owner;
        return the stamped checkpoint.

        Raises Fenced if another worker committed since, or what the link raises if the
        cluster did not answer in time: then the commit may or may not have happened, and
        the caller must exit (its restart reloads whichever it was).
        """
        stamped = dataclasses.replace(new, updated_at=checkpoint.utc_now_iso(), owner=self.owner)
        value = checkpoint.encode_partition(stamped, self.partition, self.revision)
        try:
            self.revision = self.link.call(
                self._bucket.update(self.key, value, last=self.revision), TIMEOUT)
        except KeyWrongLastSequenceError:
            raise Fenced(
                f"partition {self.partition}'s checkpoint is no longer at revision "
                f"{self.revision}: another worker committed it"
            ) from None
        return stamped


def read_latest(link, partitions, known=None):
    """{partition: (Checkpoint, revision)} for those of `partitions` that have a checkpoint.

    `known`, a previous answer, saves decoding a checkpoint whose revision did not change.
    Raises CorruptCheckpoint, or what the link raises if the cluster cannot answer.
    """
    known = known or {}

    async def read_all():
        store = bucket(link.js)
        await store.put(READ_BARRIER_KEY, b"")  # see the module's docstring
        found = {}
        for partition in partitions:
            try:
                entry = await store.get(checkpoint_key(partition))
            except KeyNotFoundError:
                continue
            previous = known.get(partition)
            if previous and previous[1] == entry.revision:
                found[partition] = previous
            else:
                loaded, _ = checkpoint.decode_partition(entry.value, partition)
                found[partition] = (loaded, entry.revision)
        return found

    return link.call(read_all(), TIMEOUT)


def history(link, partition):
    """The partition's kept commits, oldest first: (revision, revision_before, owner,
    sequence) each. What an audit of fencing reads: each revision_before must be the
    revision just before it. Raises what the link raises."""
    # Read from the bucket's stream directly: nats-py's KeyValue.history() may find nothing
    # when its watcher starts before the server counted the key's messages.
    chain = []
    for message in read_subject(link, CHECKPOINT_BUCKET_STREAM,
                                kv_subject(checkpoint_key(partition)), 0,
                                "history"):
        loaded, before = checkpoint.decode_partition(message.data, partition)
        chain.append((message.metadata.sequence.stream, before, loaded.owner, loaded.offset))
    return chain
