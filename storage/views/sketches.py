"""The overview's two summaries that are not plain sums: distinct people, and session durations.

Both are mergeable (a range's summary is the merge of its hours' and days' summaries, never a
sum of their figures), and both are stored as bytes in storage/views/overview_store.py.

People: a distinct count, exact up to EXACT_LIMIT, an HLL sketch past it
    A person is a 64-bit hash (person_key). Up to EXACT_LIMIT distinct people are kept as
    the set of their hashes, so small counts are exact (a collision among a thousand 64-bit
    hashes has a chance of about 3e-14). Past it, an Apache DataSketches HLL sketch at
    lg_k 14 (GA4's precision for users) takes over: 0.81 % standard error after unions.
    Merging is a set union below the limit and an HLL union above it: the same people seen
    on several days are counted once.

    Encoded:  b"E" + the hashes as little-endian int64, ascending   (exact)
              b"H" + the HLL sketch, serialize_compact(), HLL_4      (estimated)

Durations: an exact histogram of session durations, for medians
    Session durations are whole seconds (both SDKs send whole-second timestamps). The
    histogram counts sessions per duration, exactly below 4,096 s (68 minutes); above, per
    duration with its 12 leading bits kept (a bucket no wider than 1/2048 of its value).
    So a median is exact below 68 minutes and within 0.05 % of its value above.

    Why not a KLL sketch: a session changes as its events arrive (a late screen view stretches
    it, or joins two), so its old duration must be taken out. A histogram's counts can go
    down; a KLL sketch has no delete.

    Encoded:  pairs of little-endian int64 (duration bucket, sessions), ascending.
"""

import hashlib
import os
import struct

# numpy (which DataSketches imports too) starts OpenBLAS's pool of threads when it is
# imported: threads this code never uses (it does no linear algebra), and which would escape
# the ingest's CPU pinning (storage/process.py). With one thread, it starts none.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy  # noqa: E402 - after the setting above; installed with datasketches
from datasketches import hll_sketch, hll_union, tgt_hll_type

from storage.projects import person_text

EXACT_LIMIT = 1000
LG_K = 14
EXACT_DURATION_BELOW = 4096


def person_key(text):
    """A person's (or a device's) 64-bit hash, as a signed integer (what SQLite and the HLL
    sketch take)."""
    # surrogatepass: any str hashes, even one holding half an emoji (JSON can carry it).
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"),
                                          digest_size=8).digest(), "little", signed=True)


def project_person_key(project, kind, text):
    """The key of an install (`kind` "anon:") or a user ("user:") `text` of `project`, the
    one every reader counts it as: the ingest writing it in the counted columns
    (storage/log/counted.py), the worker's rule reading an event (worker/sdk_events.py)."""
    return person_key(person_text(project, kind + text))


def _int64s(blob):
    return numpy.frombuffer(blob, dtype="<i8")


def _blob(values):
    return struct.pack(f"<{len(values)}q", *values)  # faster than numpy for short lists


_ONE_PERSON = struct.Struct("<cq")


def encode_people(keys):
    """A set of person keys, encoded as People.encode() would, without building a People."""
    if len(keys) == 1:  # most of a commit's screens and hours: a view or a person's views
        (key,) = keys
        return _ONE_PERSON.pack(b"E", key)
    if len(keys) <= EXACT_LIMIT:
        return b"E" + _blob(sorted(keys))
    return People(keys).encode()


def encode_distinct(keys):
    """Distinct person keys, a numpy int64 array in ascending order, encoded as
    encode_people() would encode them (a column store's answer, without a set a key)."""
    if len(keys) <= EXACT_LIMIT:
        return b"E" + keys.astype("<i8", copy=False).tobytes()
    return People(keys.tolist()).encode()


class People:
    """A set of people that counts them exactly below EXACT_LIMIT and estimates above."""

    __slots__ = ("exact", "hll", "_pending")

    def __init__(self, keys=()):
        self.exact = set(keys)
        self.hll = None  # an hll_union once past the limit
        self._pending = []  # encoded exact sets merged, not yet unpacked (see _settle)
        self._spill_if_large()

    def _spill_if_large(self):
        if self.hll is None and len(self.exact) > EXACT_LIMIT:
            self._to_hll()

    def _to_hll(self):
        if self.hll is None:
            self.hll = hll_union(LG_K)
            for key in self.exact:
                self.hll.update(key)
            self.exact = set()

    def _settle(self):
        """Unpack the exact sets merged so far, all at once: a range merges thousands of
        small ones, and numpy finds their distinct members far faster than set updates."""
        if self._pending:
            keys = numpy.unique(_int64s(b"".join(self._pending)))
            self._pending = []
            self.update(keys.tolist())

    def add(self, key):
        if self.hll is not None:
            self.hll.update(key)
        else:
            self.exact.add(key)
            if len(self.exact) > EXACT_LIMIT:
                self._to_hll()

    def update(self, keys):
        self._settle()
        if self.hll is not None:
            for key in keys:
                self.hll.update(key)
        else:
            self.exact.update(keys)
            self._spill_if_large()

    def merge_encoded(self, blob):
        """Add the members of an encoded People (a union: a person in both counts once)."""
        if blob[:1] == b"H":
            self._to_hll()
            self.hll.update(hll_sketch.deserialize(blob[1:]))
        elif len(blob) > 1:
            self._pending.append(blob[1:])

    @property
    def estimated(self):
        self._settle()
        return self.hll is not None

    def count(self):
        self._settle()
        if self.hll is None:
            return len(self.exact)
        return round(self.hll.get_estimate())

    def encode(self):
        self._settle()
        if self.hll is None:
            return b"E" + _blob(sorted(self.exact))
        return b"H" + self.hll.get_result(tgt_hll_type.HLL_4).serialize_compact()

    @classmethod
    def decode(cls, blob):
        people = cls()
        people.merge_encoded(blob)
        return people


def duration_bucket(seconds):
    """The histogram bucket of a duration: itself below EXACT_DURATION_BELOW, else its value
    with only its 12 leading bits kept."""
    if seconds < EXACT_DURATION_BELOW:
        return seconds
    drop = seconds.bit_length() - 12
    return seconds >> drop << drop


_PAIR = struct.Struct("<qq")


def encode_durations(histogram):
    """{bucket: sessions} -> bytes, leaving out empty buckets."""
    if len(histogram) == 1:  # most of a commit's histograms: one session's one bucket
        ((bucket, sessions),) = histogram.items()
        return _PAIR.pack(bucket, sessions) if sessions else b""
    pairs = []
    for bucket in sorted(histogram):
        if histogram[bucket]:
            pairs += (bucket, histogram[bucket])
    return _blob(pairs)


def encode_histogram(buckets, sessions):
    """A histogram as two numpy int64 arrays, buckets ascending and sessions none zero,
    encoded as encode_durations() would encode it."""
    return numpy.column_stack((buckets, sessions)).astype("<i8", copy=False).tobytes()


def add_encoded_durations(histogram, blob, sign=1):
    """Add (or, with sign=-1, take out) an encoded histogram's counts to `histogram`."""
    values = struct.unpack(f"<{len(blob) // 8}q", blob)
    for index in range(0, len(values), 2):
        bucket = values[index]
        histogram[bucket] = histogram.get(bucket, 0) + sign * values[index + 1]


def add_durations(stored, added):
    """The histogram of two encoded ones added up, encoded."""
    if not added:
        return stored
    if not stored:
        return added
    histogram = {}
    add_encoded_durations(histogram, stored)
    add_encoded_durations(histogram, added)
    return encode_durations(histogram)


def merge_people(stored, added):
    """The union of two encoded People, encoded."""
    if stored[:1] == added[:1] == b"E":  # two exact sets: a union of sets, no numpy
        keys = set(struct.unpack_from(f"<{(len(stored) - 1) // 8}q", stored, 1))
        keys.update(struct.unpack_from(f"<{(len(added) - 1) // 8}q", added, 1))
        if len(keys) <= EXACT_LIMIT:
            return b"E" + _blob(sorted(keys))
    people = People.decode(stored)
    people.merge_encoded(added)
    return people.encode()


class Durations:
    """Encoded histograms merged for a median (the read side): the bytes are kept as they
    come and summed once, in numpy, rather than bucket by bucket in Python."""

    def __init__(self):
        self._blobs = []

    def add_encoded(self, blob):
        if blob:
            self._blobs.append(blob)

    def median(self):
        """The nearest-rank median, the ceil(n/2)-th smallest duration's bucket, or None if
        there are no sessions."""
        return self.quantile(1, 2)

    def quantile(self, part, whole):
        """The nearest-rank quantile part/whole: the ceil(n * part / whole)-th smallest
        duration's bucket, or None if there are none."""
        if not self._blobs:
            return None
        pairs = numpy.frombuffer(b"".join(self._blobs), dtype="<i8").reshape(-1, 2)
        buckets, sessions = pairs[:, 0], pairs[:, 1]
        total = int(sessions.sum())
        if total <= 0:
            return None
        rank = max(1, -(-total * part // whole))
        if len(buckets) < EXACT_DURATION_BELOW // 4:  # few: sorting them is the cheaper
            order = numpy.argsort(buckets, kind="stable")
            return int(buckets[order[numpy.searchsorted(numpy.cumsum(sessions[order]),
                                                        rank)]])
        # Many: the exact seconds by counting (no sort); the rare long ones sorted, if needed.
        short = buckets < EXACT_DURATION_BELOW
        ranks = numpy.cumsum(numpy.bincount(buckets[short], weights=sessions[short],
                                            minlength=EXACT_DURATION_BELOW))
        if ranks[-1] >= rank:
            return int(numpy.searchsorted(ranks, rank))
        long_buckets, long_sessions = buckets[~short], sessions[~short]
        order = numpy.argsort(long_buckets, kind="stable")
        ranks = ranks[-1] + numpy.cumsum(long_sessions[order])
        return int(long_buckets[order[numpy.searchsorted(ranks, rank)]])
