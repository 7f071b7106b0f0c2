"""What the engine asks of a backend, declared once (Litestream's way: one interface, one
small package per backend). Two backends provide it:

    storage/log/      one machine: data1 and its files, data2 (the embedded default)
    storage/stream/   cluster mode: a NATS JetStream stream, and checkpoints in its bucket

The ingest (app/) writes through an EventLog and the worker (worker/runner.py's one loop)
commits through a CheckpointStore; neither knows which backend it has. The read side's
interface is app/readside.py's ReadSide.

Shared by both backends: AppendError, and event_key (event_keys for many), the key an SDK
event's id is deduped by.
"""

import hashlib
from typing import Protocol

from storage.checkpoint import Checkpoint


class AppendError(Exception):
    """The append was not acknowledged: answer 503, and the client sends it again. On one
    machine nothing of it is left in data1 (it was undone); in cluster mode it may or may not
    be stored, and its retry is stored once (the stream's message ids)."""


def event_key(event_id, project=""):
    """The 16-byte key an SDK event's id is deduped by: data1.seen's key on one machine, the
    message id in cluster mode. Lone surrogates, which JSON allows, are kept as they came.
    A named project's ids are keyed apart (BLAKE2's key is the project's id): one project's
    ids can never make another's events duplicates."""
    return hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=16,
                           key=project.encode("ascii")).digest()


def event_keys(event_ids, project=""):
    """event_key of each of `event_ids`, the same keys at two thirds of the cost: the keyed
    hash's state is made once and copied, not made again for each id (100 ids: 31 against
    48 us)."""
    keyed = hashlib.blake2b(digest_size=16, key=project.encode("ascii"))
    keys = []
    for event_id in event_ids:
        state = keyed.copy()
        state.update(event_id.encode("utf-8", "surrogatepass"))
        keys.append(state.digest())
    return keys


class EventLog(Protocol):
    """The log the ingest appends to: storage/log/writer.EventLog, or
    storage/stream/writer.StreamLog. Every append returns only once it is durable (or hands
    `hold` a ticket to wait on), and raises AppendError otherwise."""

    def append(self, records: bytes, hold=None) -> None:
        """Append minimal events' records (storage/log/format.py's encode, which names their
        project), whole or not at all."""

    def append_events(self, ids, events, received: float, sent=None, hold=None,
                      project="") -> list[bool]:
        """Append minimal `ids` and SDK `events` (app/validate.SdkEvent) of `project`
        (storage/projects.py) received at `received` (Unix seconds); for each event, True if
        it was new, False if it repeats one of the project's accepted within the dedupe
        window."""

    def problem(self) -> str | None:
        """Why an append would fail now (answered 503 before any work), or None."""

    def notes(self) -> list[str]:
        """What an operator should know that does not stop writes (/healthz/ingest)."""

    def sync(self) -> None:
        """Make everything appended so far durable (a clean stop)."""

    def close(self) -> None:
        """Release what the log holds open."""


class CheckpointStore(Protocol):
    """Where the worker's counts and their position in the log are committed, together:
    storage/log/checkpoint_store.CheckpointStore (data2), or one partition's
    storage/stream/checkpoint_store.StreamCheckpointStore."""

    def load(self) -> Checkpoint | None:
        """The committed checkpoint, or None if there is none. Raises CorruptCheckpoint."""

    def commit(self, new: Checkpoint) -> Checkpoint:
        """Make `new` the committed checkpoint, atomically and durably, stamped with the
        time; return it as stamped. The caller has made the log durable up to new.offset."""
