"""data2, the checkpoint: the worker's position in data1 and the counts up to it, in one file.

The store that writes and reads it is storage/log/checkpoint_store.py.

Format (version 1)
    One JSON object, replaced whole on every commit:

        {"version": 1, "offset": 8, "events": 3, "skipped": 0, "fingerprint": "9f2c...",
         "updated_at": "2026-11-25T10:00:05.123Z", "counts": {"1": 2, "100": 1}}

    version      the format's version; a data2 without one was written before versions
                 existed and reads as version 1. A newer version is refused, never guessed at.
    offset       bytes of data1 consumed: always just after a separator
    counts       experience id (canonical decimal string) -> times seen, in numeric order,
                 of the default project's events (storage/projects.py): with no projects,
                 every event
    events       sum of counts
    projects     present once a named project has events: its id -> {"events": the sum of
                 its counts, "counts": its counts, as above}, in id order:

        ..., "counts": {"1": 2}, "projects": {"shop": {"events": 3, "counts": {"7": 3}}}}
    skipped      complete tokens before offset that were not valid ids
    fingerprint  sha256 of data1's first 64 bytes and the 64 bytes before offset, so a data1
                 that was replaced or rewritten under the checkpoint is noticed
                 (storage/log/reader.py computes it)
    updated_at   when this checkpoint was committed (UTC)

Invariant, true at every instant because offset and counts live in one atomically replaced
file (Kafka stores a consumer's position with its output for the same reason):

    counts == Counter(valid complete bare tokens in data1[0:offset])
    projects[p].counts == Counter(ids of the valid complete tokens of project p in it)

Cluster mode: one checkpoint per partition (version 1)
    The value of key partition.<name> in the checkpoint bucket
    (storage/stream/checkpoint_store.py), replaced by compare-and-set:

        {"version": 1, "partition": "p1", "stream": "MINI_ANALYTICS created 2026-11-25T09:...",
         "sequence": 41, "messages": 17, "events": 3, "skipped": 0, "owner": "worker@host:pid",
         "revision_before": 12, "updated_at": "2026-11-25T10:00:05.123Z",
         "counts": {"1": 2, "100": 1}}

    stream           which stream the counts are of: its name and creation time (the
                     Checkpoint's fingerprint), so that a stream deleted and created again
                     under the checkpoint is noticed, as a replaced data1 is

    sequence         the stream sequence of the partition's last message counted (the
                     Checkpoint's offset: the position in the log, as data2's byte offset)
    messages         how many of the partition's messages that is (the lag is the stream's
                     message count for the partition minus this)
    overview_reached the sequence the partition's overview store had counted to when this
                     was committed (at most `sequence`; absent, as before the overview could
                     fall behind the counts, it is `sequence`): a store behind it is being
                     counted again, and answers no reads until it is there
                     (worker/stream_answers.py); one at it or past it answers, even while
                     it is behind the counts
    owner            the worker that committed it
    revision_before  the bucket revision this commit replaced (0 for the first): a
                     compare-and-set accepts a commit only from the latest revision, so the
                     revisions form one chain, which an audit of the key's history can check

    projects         as in data2

    Invariant: counts == Counter(valid ids in the partition's messages up to sequence), and
    projects[p].counts the same of project p's.
"""

import dataclasses
import datetime
import hashlib
import heapq
import json

from storage.log.format import parse_token
from storage.projects import is_project_id

VERSION = 1

# The fingerprint of offset 0 is the hash of no bytes at all: data1[0:0] is empty whatever
# file it is, so the empty checkpoint matches every data1, as it should: counting from 0
# needs nothing from the file.
EMPTY_FINGERPRINT = hashlib.sha256(b"").hexdigest()


class CorruptCheckpoint(Exception):
    """data2 exists but cannot be trusted; the message says why."""


class UnsupportedVersion(CorruptCheckpoint):
    """data2 was written in a format this code does not know (by a newer version of it)."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    offset: int = 0
    counts: dict = dataclasses.field(default_factory=dict)  # int id -> int count
    skipped: int = 0
    fingerprint: str = EMPTY_FINGERPRINT
    updated_at: str = ""
    # Cluster mode only: the partition's messages counted, and who committed.
    messages: int = 0
    owner: str = ""
    overview_reached: int | None = None  # None: offset (see the format above)
    # Each named project's counts, as `counts` (storage/projects.py).
    projects: dict = dataclasses.field(default_factory=dict)  # project -> {id -> count}

    @property
    def events(self):
        """The default project's events."""
        return sum(self.counts.values())

    @property
    def overview_mark(self):
        """Cluster mode: how far the partition's overview had counted (overview_reached, or
        the sequence itself in a checkpoint written before the field existed)."""
        return self.offset if self.overview_reached is None else self.overview_reached

    def counts_of(self, project):
        """A project's counts (id -> count): "" for the default project."""
        return self.counts if not project else self.projects.get(project, {})

    def top(self, n):
        """The n largest (id, count) pairs, largest first; equal counts in id order."""
        return heapq.nlargest(n, self.counts.items(), key=lambda item: (item[1], -item[0]))

    def age(self, now=None):
        """Seconds since this checkpoint was committed, or None before the first commit."""
        if not self.updated_at:
            return None
        committed = datetime.datetime.fromisoformat(self.updated_at)
        now = now or datetime.datetime.now(datetime.timezone.utc)
        return max(0.0, (now - committed).total_seconds())


def merge(checkpoints):
    """One Checkpoint holding the counts of several partitions' checkpoints (counts are
    additive; None stands for a partition with no checkpoint yet). Its updated_at is the
    newest of theirs: when the counts last changed, as on one machine (each partition's own
    time is in its entry of /stats)."""
    counts, projects, skipped, times = {}, {}, 0, []
    for checkpoint in checkpoints:
        if checkpoint is None:
            continue
        skipped += checkpoint.skipped
        times.append(checkpoint.updated_at)
        _add(counts, checkpoint.counts)
        for project, project_counts in checkpoint.projects.items():
            _add(projects.setdefault(project, {}), project_counts)
    return Checkpoint(counts=counts, skipped=skipped, fingerprint="",
                      updated_at=max(times) if times else "", projects=projects)


def _add(counts, more):
    for experience, count in more.items():
        counts[experience] = counts.get(experience, 0) + count


def utc_now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="milliseconds"
    ).replace("+00:00", "Z")


def encode(checkpoint):
    return _encode({
        "version": VERSION,
        "offset": checkpoint.offset,
        "events": checkpoint.events,
        "skipped": checkpoint.skipped,
        "fingerprint": checkpoint.fingerprint,
        "updated_at": checkpoint.updated_at,
    }, checkpoint.counts, checkpoint.projects)


def encode_partition(checkpoint, partition, revision_before):
    return _encode({
        "version": VERSION,
        "partition": partition,
        "stream": checkpoint.fingerprint,
        "sequence": checkpoint.offset,
        "messages": checkpoint.messages,
        **({} if checkpoint.overview_reached is None else
           {"overview_reached": checkpoint.overview_reached}),
        "events": checkpoint.events,
        "skipped": checkpoint.skipped,
        "owner": checkpoint.owner,
        "revision_before": revision_before,
        "updated_at": checkpoint.updated_at,
    }, checkpoint.counts, checkpoint.projects)


def _encode(head, counts, projects):
    head = json.dumps(head)
    tail = ""
    if projects:
        tail = ", ".join([f'"{project}": {{"events": {sum(projects[project].values())}, '
                          f'"counts": {{{_counts_json(projects[project])}}}}}'
                          for project in sorted(projects)])
        tail = f', "projects": {{{tail}}}'
    return f'{head[:-1]}, "counts": {{{_counts_json(counts)}}}{tail}}}\n'.encode("ascii")


def _counts_json(counts):
    # Written by hand rather than with json.dumps over a new dict: the ids are ints and the
    # output must be in numeric order, and this avoids building a million-entry str dict.
    return ", ".join([f'"{key}": {counts[key]}' for key in sorted(counts)])


def decode(data):
    """Parse and check data2's bytes. Raises CorruptCheckpoint (or UnsupportedVersion)."""
    document, field = _document(data)
    offset, skipped = field("offset", int), field("skipped", int)
    counts, digest = _counts(field("counts", dict)), field("fingerprint", str)
    projects = _projects(document.get("projects", {}))
    if offset < 0 or skipped < 0:
        raise CorruptCheckpoint(f"negative offset ({offset}) or skipped ({skipped})")
    events = sum(counts.values()) + sum(sum(more.values()) for more in projects.values())
    # Every token takes at least two bytes (a digit and a separator).
    if 2 * (events + skipped) > offset:
        raise CorruptCheckpoint(f"{events + skipped} tokens cannot fit in {offset} bytes")
    return Checkpoint(offset, counts, skipped, digest, str(document.get("updated_at", "")),
                      projects=projects)


def decode_partition(data, partition):
    """Parse and check a partition checkpoint's bytes; return (Checkpoint, revision_before).
    Raises CorruptCheckpoint (or UnsupportedVersion)."""
    document, field = _document(data)
    if field("partition", str) != partition:
        raise CorruptCheckpoint(f"it is partition {document['partition']!r}'s checkpoint, "
                                f"stored under partition {partition!r}'s key")
    stream = field("stream", str)
    sequence, messages = field("sequence", int), field("messages", int)
    skipped, revision_before = field("skipped", int), field("revision_before", int)
    if min(sequence, messages, skipped, revision_before) < 0 or messages > sequence:
        raise CorruptCheckpoint(f"impossible positions: sequence {sequence}, messages "
                                f"{messages}, skipped {skipped}")
    reached = document.get("overview_reached")
    if reached is not None and (type(reached) is not int or not 0 <= reached <= sequence):
        raise CorruptCheckpoint(f"impossible overview_reached {reached!r} (sequence {sequence})")
    checkpoint = Checkpoint(
        offset=sequence, counts=_counts(field("counts", dict)), skipped=skipped,
        fingerprint=stream, updated_at=str(document.get("updated_at", "")), messages=messages,
        owner=str(document.get("owner", "")), projects=_projects(document.get("projects", {})),
        overview_reached=reached,
    )
    return checkpoint, revision_before


def _document(data):
    """The checked JSON object, and a function reading one of its fields by name and type."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as error:  # includes empty, NUL-filled, truncated
        raise CorruptCheckpoint(f"not valid JSON ({error})") from None
    if type(document) is not dict:
        raise CorruptCheckpoint("not a JSON object")
    version = document.get("version", 1)
    if version != VERSION:
        raise UnsupportedVersion(
            f"format version {version!r}; this program reads version {VERSION} "
            "(was it written by a newer mini-analytics?)"
        )

    def field(name, kind):
        value = document.get(name)
        if type(value) is not kind:
            raise CorruptCheckpoint(f"{name!r} is missing or not of type {kind.__name__}")
        return value

    return document, field


def _projects(raw_projects):
    if type(raw_projects) is not dict:
        raise CorruptCheckpoint("'projects' is not an object")
    projects = {}
    for project, entry in raw_projects.items():
        if not is_project_id(project):
            raise CorruptCheckpoint(f"projects has a key that is not a project id: {project!r}")
        if type(entry) is not dict or type(entry.get("counts")) is not dict:
            raise CorruptCheckpoint(f"projects[{project!r}] has no counts")
        counts = projects[project] = _counts(entry["counts"])
        if entry.get("events") != sum(counts.values()):
            raise CorruptCheckpoint(f"projects[{project!r}]'s events are not its counts' sum")
    return projects


def _counts(raw_counts):
    counts = {}
    for key, count in raw_counts.items():
        # The same rule data1's tokens follow: one canonical spelling per id.
        experience_id = parse_token(key.encode("utf-8", "replace"))
        if experience_id is None:
            raise CorruptCheckpoint(f"counts has a key that is not an experience id: {key!r}")
        if type(count) is not int or count <= 0:
            raise CorruptCheckpoint(f"counts[{key!r}] is not a positive integer")
        counts[experience_id] = count
    return counts
