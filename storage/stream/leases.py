"""Which worker counts which partition (cluster mode): leases and signs of life in the
replicated key-value bucket, and the observations that tell when one has lapsed.

Keys (storage/stream/names.py), in the checkpoint bucket:

    member.<member>     a worker's sign of life: {"owner", "since"}. <member> names the
                        worker's place (its host and state folder), so a restarted worker
                        takes its place back; one process holds a place at a time (the worker
                        holds worker.lock in its state folder).
    lease.<partition>   the worker counting the partition: {"member", "owner", "since"};
                        {"member": ""} once released.

Guarantees:

* Each key is written by its holder only, by compare-and-set on the revision it last wrote
  (renew()): a worker whose lease was taken over while it was paused or cut off learns it at
  its next renewal, which fails, and drops the partition.
* A key lapses when its revision has not changed for `takeover` seconds as this worker saw
  it, on its own monotonic clock: no clocks are compared across machines, and a worker that
  has just started waits a whole `takeover` before it calls anything lapsed. Those seconds
  count only while this worker's own renewals succeed on time: after a spell in which it
  could not renew (the cluster electing a leader, this worker paused or cut off), nobody
  else could be seen renewing either, and it waits a whole `takeover` again. A lapsed or
  released lease is taken by compare-and-set on the revision seen, so of two workers taking
  it at once, one wins.
* A lease says who should count; it does not by itself stop an old owner that has not
  noticed yet. The checkpoint's compare-and-set does: a worker that takes a lease commits the
  partition's checkpoint at once (worker/stream_runner.py), so the old owner's next commit is
  refused (Fenced), and the counts are exact whichever worker commits.
"""

import asyncio
import dataclasses
import hashlib
import json
import socket
import time

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from storage.checkpoint import utc_now_iso
from storage.stream.checkpoint_store import TIMEOUT, bucket
from storage.stream.names import (CHECKPOINT_BUCKET_STREAM, MEMBER_KEY_PREFIX, kv_subject,
                                  lease_key, member_key)

MEMBERS_SUBJECTS = kv_subject(f"{MEMBER_KEY_PREFIX}>")


def member_name(state_dir):
    """The key-safe name of a worker's place: its host and its state folder."""
    place = f"{socket.gethostname()}:{state_dir}"
    return hashlib.blake2b(place.encode(), digest_size=8).hexdigest()


@dataclasses.dataclass
class Seen:
    revision: int  # 0: the key does not exist
    value: dict  # {} for a missing or deleted key
    since: float  # when this worker first saw this revision (its monotonic clock)


@dataclasses.dataclass
class View:
    members: list  # the live members, sorted; this worker's own always among them
    holders: dict  # partition -> the live member holding its lease, or None if it is free
    leases: dict  # partition -> the lease's value, as last seen


class Leases:
    def __init__(self, link, member, owner, takeover, clock=time.monotonic):
        """`member`: this worker's place (member_name); `owner`: how it signs (readable,
        unique to its process); `takeover`: seconds after which an unchanged key lapses."""
        self.link, self.member, self.owner, self.takeover = link, member, owner, takeover
        self.clock = clock
        self.held = {}  # partition -> the revision of this worker's lease on it
        self.taken_at = {}  # partition -> when this worker took it (ISO 8601, UTC)
        self._member_revision = None  # of this worker's member key; None: not yet read
        # Since when this worker's renewals have all succeeded on time (None: the last one
        # failed): the time others' keys must stay unchanged is counted from here at most.
        self._healthy_since = None
        self._renewed_at = None
        self._last_renewal_started = None  # of the last renewal that succeeded
        self._seen = {}  # key -> Seen
        self._bucket = bucket(link.js)

    def _value(self, since=None):
        return json.dumps({"member": self.member, "owner": self.owner,
                           "since": since or utc_now_iso()}).encode()

    def renew(self):
        """Write this worker's sign of life and its leases again. Returns the partitions
        whose lease another worker took; they are no longer held. Raises what the link
        raises if the cluster does not answer (then nothing is known to be lost)."""
        async def renew_member():
            if self._member_revision is None:
                self._member_revision, _ = await self._read(member_key(self.member))
            try:
                self._member_revision = await self._bucket.update(
                    member_key(self.member), self._value(), last=self._member_revision)
            except KeyWrongLastSequenceError:
                # Written by an earlier process in this place: the place is this one's now.
                self._member_revision = None

        async def renew_lease(partition, revision):
            try:
                self.held[partition] = await self._bucket.update(
                    lease_key(partition), self._value(self.taken_at[partition]),
                    last=revision)
            except KeyWrongLastSequenceError:
                self.forget(partition)
                return partition

        async def renew_all():
            # All at once: a renewal takes one round of the bucket's replication, not one
            # per key, so it stays well inside the time this worker may answer (fresh()).
            renewed = await asyncio.gather(renew_member(), *(
                renew_lease(partition, revision)
                for partition, revision in list(self.held.items())))
            return [partition for partition in renewed[1:] if partition is not None]

        started = self.clock()
        if self._renewed_at is None or started - self._renewed_at > self.takeover / 2:
            self._healthy_since = None  # a spell without renewals: start counting again
        try:
            lost = self.link.call(renew_all(), TIMEOUT)
        except BaseException:
            self._healthy_since = None
            raise
        self._renewed_at = self.clock()
        self._last_renewal_started = started
        if self._healthy_since is None:
            self._healthy_since = started
        return lost

    def fresh(self):
        """True while no other worker can have taken this worker's leases over: less than
        half the take-over time since its last renewal began (the others count a whole
        take-over time from when they saw it). Only then may it answer for its partitions
        (their counts over time, their overview): past that, another worker may count them,
        and this one's answers could be older than what readers were already shown."""
        return self.since_renewal() < self.takeover / 2

    def since_renewal(self):
        """Seconds since the last renewal that succeeded began (inf before the first)."""
        started = self._last_renewal_started
        return float("inf") if started is None else self.clock() - started

    def observe(self, partitions):
        """Read every member key and the leases of `partitions`, and say who is alive and who
        holds what (View). Raises what the link raises if the cluster does not answer."""
        async def read_all():
            info = await self.link.js.stream_info(CHECKPOINT_BUCKET_STREAM,
                                                  subjects_filter=MEMBERS_SUBJECTS)
            prefix = kv_subject()
            keys = [subject[len(prefix):] for subject in (info.state.subjects or {})]
            keys += [lease_key(partition) for partition in partitions]
            return dict(zip(keys, await asyncio.gather(*(self._read(key) for key in keys))))

        now = self.clock()
        for key, (revision, value) in self.link.call(read_all(), TIMEOUT).items():
            seen = self._seen.get(key)
            if seen is None or seen.revision != revision:
                self._seen[key] = Seen(revision, value, now)
        members = {self.member}
        for key, seen in self._seen.items():
            if key.startswith(MEMBER_KEY_PREFIX) and seen.value and not self._lapsed(seen):
                members.add(key[len(MEMBER_KEY_PREFIX):])
        holders, leases = {}, {}
        for partition in partitions:
            seen = self._seen[lease_key(partition)]
            holder = seen.value.get("member") or None
            if holder != self.member and (holder not in members or self._lapsed(seen)):
                holder = None
            holders[partition], leases[partition] = holder, seen.value
        return View(sorted(members), holders, leases)

    async def _read(self, key):
        """(the key's revision, its value); (0, {}) if it never existed, and a deleted key's
        tombstone revision with {}."""
        try:
            entry = await self._bucket.get(key)
        except KeyNotFoundError as missing:
            entry = getattr(missing, "entry", None)  # a deleted key's tombstone
            return (entry.revision if entry else 0), {}
        try:
            value = json.loads(entry.value)
        except ValueError:
            value = {}  # not ours to read: free, and taken over by compare-and-set
        return entry.revision, value if isinstance(value, dict) else {}

    def _lapsed(self, seen):
        if self._healthy_since is None:
            return False
        return self.clock() - max(seen.since, self._healthy_since) >= self.takeover

    def take(self, partition):
        """Take the partition's lease, by compare-and-set on the revision last observed.
        True if this worker holds it now."""
        seen = self._seen.get(lease_key(partition))
        since = utc_now_iso()
        try:
            self.held[partition] = self.link.call(self._bucket.update(
                lease_key(partition), self._value(since), last=seen.revision if seen else 0),
                TIMEOUT)
        except KeyWrongLastSequenceError:
            return False
        self.taken_at[partition] = since
        return True

    def release(self, partition):
        """Give the partition's lease up, so another worker may take it at once. Best
        effort: if the cluster does not answer, the lease lapses by itself."""
        revision = self.held.get(partition)
        self.forget(partition)
        if revision is not None:
            try:
                self.link.call(self._bucket.update(
                    lease_key(partition), json.dumps({"member": "", "released_by": self.owner,
                                                      "at": utc_now_iso()}).encode(),
                    last=revision), TIMEOUT)
            except KeyWrongLastSequenceError:
                pass  # taken over meanwhile: another worker's to keep, not to release

    def forget(self, partition):
        """Stop renewing a lease found taken over (the checkpoint's fencing said so)."""
        self.held.pop(partition, None)
        self.taken_at.pop(partition, None)

    def leave(self):
        """Release every lease and delete this worker's sign of life (a clean stop), so the
        others take its partitions at once rather than after `takeover`."""
        for partition in list(self.held):
            self.release(partition)
        if self._member_revision:
            try:
                self.link.call(self._bucket.delete(member_key(self.member),
                                                   last=self._member_revision), TIMEOUT)
            except KeyWrongLastSequenceError:
                pass  # a later process in this place wrote it: its sign of life, not ours
