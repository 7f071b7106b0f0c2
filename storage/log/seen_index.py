"""data1.seen: the SDK event ids accepted within the dedupe window, so a retry is kept once.

The SDKs send an event again, with the same id, whenever they did not read a 2xx for it:
possibly hours later, possibly to another node. The ingest answers such a repeat as
accepted, and neither stores nor counts it again.

Design (Kafka's idempotent producer: dedupe at the log, with state rebuilt from the log;
LevelDB's sorted runs and Bloom filters: every write to disk sequential)
    data1.details (storage/log/details.py) is the truth: it holds every accepted event's id with
    its receive time, made durable before the 2xx. This index is derived from it and can
    always be rebuilt from it:

    * Ids are keyed by a 16-byte BLAKE2b hash (storage/backend.event_key; a collision among
      20 M ids has odds near 10^-24). Those claimed in the last second or so wait in memory;
      a flusher thread writes them, once their groups are durable, as a sorted run: a file
      written once, in one sequential write, never changed. A random insert into a B-tree
      of 20 M keys dirties a page of its own; a run costs its own bytes only.
    * Runs of similar size are merged (size-tiered, storage/sorted_runs.py), so a day's
      ids are a few dozen runs, each id rewritten a few times in all. A merge holds a range
      of about SLICE_KEYS ids at a time, not its runs.
    * Lookups ask memory first: each period's Bloom filter (built from its runs when the
      index opens) answers "never seen" for a new id without touching a run. Only an id it
      may hold (a repeat, or 1 in 200 to 1,600 new ids) is searched for in the runs: each run's
      fence (every BLOCK-th key, in memory) names the 4 KB of the run to read.
    * Memory grows with the window's ids, far more slowly than they do: 1.5 to 3 bytes an id
      for the filters (made for 1.5 times the ids they are opened with, twice when they
      grow: 45 MB for 20 M ids), 1/64 byte for the fences. The ids are on disk, 20 bytes
      each.
    * Ids expire by period: the ids received in window-long period g are its runs; once all
      of period g is older than the window, its runs are deleted whole. A lookup also
      checks each id's receive time against the window.
    * The manifest names the runs, and the details offset up to which every group's ids are
      in them (`covered`): a run is durable (fsync) before a manifest names it, and the
      manifest is replaced durably, so a crash or power loss leaves the old manifest or the
      new, each naming only whole runs. On open, the groups after the mark are added again
      (read from data1.details, which is durable); files no manifest names (a crash
      between a run and its manifest, or after a merge) are deleted.
    * It only ever holds ids whose groups are durable (see note_synced): a first delivery
      is never swallowed by an id that a crash then took away.
    * Never trusted blindly: an index whose manifest or runs cannot be read, whose runs fail
      their CRC, that was built from another details file (its identity differs), covers
      more than the details file holds, or was built with another window, is set aside and
      rebuilt from the details of the last window.

Format (a folder)
    MANIFEST     JSON: {"version": 2, "details": identity of the details file (hex),
                        "covered": details offset, "window": seconds, "next": next run number,
                        "runs": [[file name, period, ids], ...]}
    <n>.run      header  b"SEENRUN2"  magic
                         u64          ids in the run (n)
                         u32          CRC-32 (zlib.crc32) of the three columns
                         u32          reserved, 0
                 columns hi  u64[n]   the key's first 8 bytes, ascending (the runs' order)
                         lo  u64[n]   its last 8 bytes
                         second u32[n]  the receive time (Unix seconds) of its first delivery
    All integers little-endian. A folder's ids are ids of one details file, one window.

One writer and reader: the ingest (storage/log/writer.py calls it under data1's write lock).
"""

import collections
import itertools
import json
import logging
import operator
import os
import shutil
import struct
import threading
import time
import zlib

import numpy as np

from storage.backend import event_keys
from storage.bloom import Bloom, key_columns
from storage import sorted_runs
from storage.sorted_runs import blocks_of, to_merge
from storage.durable import fsync_directory, pwrite_all, replace_durably
from storage.log import details as details_file
from storage.process import die, unpin_this_thread

log = logging.getLogger("ingest")

VERSION = 2
MANIFEST = "MANIFEST"
RUN_SUFFIX = ".run"
RUN_HEADER = struct.Struct("<8sQII")
RUN_MAGIC = b"SEENRUN2"
FLUSH_EVERY = 1.0  # seconds between writes of waiting ids to the index
BLOCK = 512  # ids a fence entry stands for: a search reads 4 KB of a run's hi column
MIN_CAPACITY = 1_000_000  # ids a period's filter is made for at least (1.5 MB)
CHUNK_ROWS = 256 * BLOCK  # rows a run is read through at a time (its CRC, a filter)
# A period is deleted this long after its last second left the window: a claim's window
# ends at its request's receive time, which the flusher's clock may be a little past.
EXPIRY_SLACK = 60


class _Run:
    """One run file. In memory only its fence (every BLOCK-th key's hi): a search reads the
    block of hi its key may be in, and a match's lo and second, with pread."""

    def __init__(self, path, fence=None):
        self.path = path
        # Closed when the last reference goes: a lookup under way keeps the run it reads
        # open, and a file a merge unlinked stays readable through it.
        self.file = open(path, "rb", buffering=0)
        magic, count, self.crc, _ = RUN_HEADER.unpack(self.file.read(RUN_HEADER.size))
        if magic != RUN_MAGIC or os.fstat(self.file.fileno()).st_size != (
                RUN_HEADER.size + 20 * count):
            raise ValueError(f"{path.name} is not a whole run")
        self.count = count
        # A run written here comes with its fence; one opened from disk has it made by
        # check(), which the opening calls for every run (its CRC checked) before its filter
        # is built.
        self.fence = None if fence is None else fence.tolist()

    def _offset(self, column, row):
        """Where row `row` of a column is in the file: 0 hi, 1 lo, 2 second."""
        return RUN_HEADER.size + 8 * self.count * column + (4 if column == 2 else 8) * row

    def _column(self, column, count, first=0):
        """`count` values from row `first` of a column."""
        size, dtype = (4, "<u4") if column == 2 else (8, "<u8")
        raw = os.pread(self.file.fileno(), size * count, self._offset(column, first))
        if len(raw) != size * count:
            raise ValueError(f"{self.path.name} is shorter than its header says")
        return np.frombuffer(raw, dtype)

    def read_blocks(self, first, end):
        """Its rows of blocks `first` to `end` (exclusive) as (hi, lo, second) arrays: what
        a merge reads (storage/sorted_runs.merged_slices)."""
        row, rows = first * BLOCK, min(end * BLOCK, self.count) - first * BLOCK
        return tuple(self._column(column, rows, row) for column in (0, 1, 2))

    def check(self):
        """Read it through, CHUNK_ROWS at a time: ValueError if its columns fail their CRC.
        Makes its fence if it has none."""
        crc, fence = 0, [] if self.fence is None else None
        for column in (0, 1, 2):
            for first in range(0, self.count, CHUNK_ROWS):
                values = self._column(column, min(CHUNK_ROWS, self.count - first), first)
                crc = zlib.crc32(values, crc)
                if column == 0 and fence is not None:
                    fence += values[::BLOCK].tolist()  # CHUNK_ROWS is whole blocks
        if crc != self.crc:
            raise ValueError(f"{self.path.name} fails its CRC")
        if fence is not None:
            self.fence = fence

    def key_chunks(self):
        """Its keys as (n, 2) u64 arrays of up to CHUNK_ROWS: what a filter is given."""
        for first in range(0, self.count, CHUNK_ROWS):
            rows = min(CHUNK_ROWS, self.count - first)
            keys = np.empty((rows, 2), dtype="<u8")
            keys[:, 0], keys[:, 1] = self._column(0, rows, first), self._column(1, rows, first)
            yield keys

    def holds(self, key, since):
        """Whether it holds `key` (16 bytes) with a receive time at or after `since`."""
        # In Python, not numpy: a key is looked for here in a few runs a second, and a
        # numpy call costs more than this whole search.
        hi, fd = key[:8], self.file.fileno()
        first, end = blocks_of(self.fence, int.from_bytes(hi, "little"))
        first, end = first * BLOCK, min(end * BLOCK, self.count)
        block = os.pread(fd, 8 * (end - first), self._offset(0, first))
        at = block.find(hi)
        while at != -1:
            if at % 8 == 0:
                row = first + at // 8
                lo = os.pread(fd, 8, self._offset(1, row))
                second = os.pread(fd, 4, self._offset(2, row))
                if lo == key[8:] and int.from_bytes(second, "little") >= since:
                    return True
            at = block.find(hi, at + 1)
        return False


def _write_run(path, count, slices):
    """Write a run of `count` keys, given as `slices` ((hi, lo, second) arrays, each sorted
    by hi, all in order: storage/sorted_runs.merged_slices), durably, in column order;
    return its fence."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        header = RUN_HEADER.size
        fence, row = [], 0
        # Each slice's columns go where they belong in the file: a merge holds a slice at a
        # time, not its runs.
        for hi, lo, seconds in slices:
            fence.append(hi[(-row) % BLOCK::BLOCK])  # the run's rows 0, BLOCK, 2 BLOCK...
            for at, column in ((header + 8 * row, hi), (header + 8 * (count + row), lo),
                               (header + 16 * count + 4 * row, seconds.astype("<u4"))):
                pwrite_all(fd, np.ascontiguousarray(column), at)
            row += len(hi)
        if row != count:
            raise ValueError(f"{path.name}: {row} keys given, not {count}")
        # The CRC of the columns in file order, read back a chunk at a time (they were
        # written slice by slice, each column in pieces).
        crc, end = 0, header + 20 * count
        for at in range(header, end, 8 * CHUNK_ROWS):
            crc = zlib.crc32(os.pread(fd, min(8 * CHUNK_ROWS, end - at), at), crc)
        os.pwrite(fd, RUN_HEADER.pack(RUN_MAGIC, count, crc, 0), 0)
        # Before any manifest names it: a named run is whole after any power loss.
        os.fsync(fd)
    finally:
        os.close(fd)
    return np.concatenate(fence) if fence else np.empty(0, "<u8")


class _Index:
    """What lookups read: each period's runs and filter. Replaced whole by the flusher, never
    changed after (but for bits added to a filter), so a lookup needs no lock."""

    def __init__(self, runs, blooms):
        self.runs = runs  # period -> tuple of _Run
        self.blooms = blooms  # period -> Bloom

    def known(self, asked, since, window):
        """The keys of `asked` (a list of 16-byte keys) held with a time at or after `since`."""
        keys = key_columns(b"".join(asked))
        known = set()
        for period, bloom in self.blooms.items():
            if (period + 1) * window <= since:
                continue  # all of it older than the window
            for row in np.flatnonzero(bloom.may_hold(keys)).tolist():
                key = asked[row]
                if any(run.holds(key, since) for run in self.runs[period]):
                    known.add(key)
        return known


class SeenIndex:
    def __init__(self, path, details, window, set_aside, clock=time.time):
        """`details`: the open DetailsWriter whose ids this index holds."""
        self.path = path
        self.window = window
        self._clock = clock
        self._details = details
        # Ids claimed but not yet in a published run: key -> receive second of the claim.
        # Claims add to it under data1's write lock; only the flusher empties it.
        self._recent = {}
        # The claims whose groups were written, in the order of their groups:
        # (keys, receive second, details end of the group). Bound under data1's write lock,
        # taken from the left by the flusher once durable.
        self._bound = collections.deque()
        self._synced_details = 0  # details offset known durable (from note_synced)
        self._claimed, self._claimed_at = [], 0  # the last claim's keys and second
        self._lock = threading.RLock()  # one insert at a time: the flusher's, close's
        self._open(set_aside)
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="seen-index",
                                         daemon=True)
        self._flusher.start()

    # --- opening: trust, or rebuild

    def _open(self, set_aside):
        began = time.monotonic()
        try:
            why = self._load()
        except (OSError, ValueError, KeyError, TypeError) as error:
            why = f"it cannot be read ({error})"
        if why:
            self._rebuild(set_aside, why)
            return
        covered, index = self._covered, self._index
        held = sum(bloom.count for bloom in index.blooms.values())
        runs = sum(len(period_runs) for period_runs in index.runs.values())
        took = time.monotonic() - began
        added = self._add_groups(covered)
        log.info("data1.seen: trusted up to offset %d of data1.details: %d ids in %d runs, "
                 "read in %.1f s; %d ids added from past its mark", covered, held, runs, took,
                 added)

    def _load(self):
        """Read the index on disk into memory; why it cannot be trusted, or None."""
        if not self.path.exists():
            return "it is new"
        if not self.path.is_dir():
            return "it is an index of an older format"
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists() and not any(self.path.iterdir()):
            return "it is new"  # a crash as it was first made
        manifest = json.loads(manifest_path.read_bytes())
        if manifest["version"] != VERSION:
            return f"its version is {manifest['version']}, not {VERSION}"
        if manifest["details"] != self._details.identity.hex():
            return "it was built from another data1.details"
        if manifest["covered"] > self._details.end:
            return "it holds ids past the end of data1.details (lost from there)"
        if manifest["window"] != self.window:
            return "it was built with another window"
        runs = {}
        for name, period, count in manifest["runs"]:
            run = _Run(self.path / name)
            if run.count != count:
                return f"{name} holds {run.count} ids, its manifest says {count}"
            runs.setdefault(period, []).append(run)
        blooms = {}
        for period, period_runs in runs.items():
            # Room for half as many again before it must grow (rebuilt from the runs).
            bloom = blooms[period] = Bloom(
                max(MIN_CAPACITY, 3 * sum(run.count for run in period_runs) // 2))
            for run in period_runs:
                run.check()  # ValueError if it fails its CRC
                for keys in run.key_chunks():
                    bloom.add(keys)
        named = {name for name, _, _ in manifest["runs"]}
        for stray in self.path.iterdir():
            if stray.name != MANIFEST and stray.name not in named:
                stray.unlink()  # a crash left it: no manifest names it
        self._covered, self._next = manifest["covered"], manifest["next"]
        self._index = _Index({period: tuple(rs) for period, rs in runs.items()}, blooms)
        return None

    def _rebuild(self, set_aside, why):
        began = time.monotonic()
        if why != "it is new":
            aside = set_aside(self.path)
            for suffix in ("", "-wal", "-shm"):  # an older format's SQLite files too
                try:
                    self.path.with_name(self.path.name + suffix).rename(
                        aside.with_name(aside.name + suffix))
                except FileNotFoundError:
                    pass
            log.warning("data1.seen: %s; kept aside as %s, rebuilt from data1.details",
                        why, aside.name)
        shutil.rmtree(self.path, ignore_errors=True)  # a first making's remains
        self.path.mkdir()
        fsync_directory(self.path.parent)
        self._covered, self._next = details_file.HEADER.size, 1
        self._index = _Index({}, {})
        self._write_manifest(self._index.runs)
        added = self._add_groups(details_file.HEADER.size)
        log.info("data1.seen: built from data1.details: %d ids in the window, in %.1f s",
                 added, time.monotonic() - began)

    def _add_groups(self, start):
        """Add the ids of the details groups from `start` on (those received within the
        window), and mark the index covered to the end of data1.details."""
        cutoff_ms = int((self._clock() - self.window) * 1000)
        added, keys, seconds = 0, bytearray(), []
        for group in details_file.read_groups(self._details.fd, start, cutoff_ms):
            second = group.received_ms // 1000
            project, items = group.events()
            keys += b"".join(event_keys([item["event"]["id"] for item in items], project))
            seconds.extend([second] * len(items))
            if len(seconds) >= 100_000:
                added += self.insert(bytes(keys), seconds, group.end)
                keys, seconds = bytearray(), []
        added += self.insert(bytes(keys), seconds, self._details.end)
        return added

    # --- the ingest's side, under data1's write lock

    def claim(self, events, received, project=""):
        """For each SdkEvent of `project`, True if it is new (and now claimed: a repeat of
        it, even in this same call, is a duplicate), or False if its id was accepted within
        the window.
        The caller, still holding data1's write lock, must then write the new ones' group
        and call bind, or call unclaim."""
        now = int(received)
        keys = event_keys([event.event_id for event in events], project)
        recent = self._recent
        # One look at the waiting ids, before the runs are asked: the flusher publishes a
        # run before its ids stop waiting, so an id missed here is found there.
        waiting = dict(zip(keys, map(recent.get, keys)))
        asked = [key for key, claimed in waiting.items() if claimed is None]
        since = now - self.window + 1  # remembered while now - second < window
        known = self._index.known(asked, since, self.window) if asked else set()
        self._claimed_at = now
        if not known and len(asked) == len(keys):  # all new, none twice: the common case
            recent.update(waiting.fromkeys(keys, now))
            self._claimed = keys
            return [True] * len(keys)
        fresh, self._claimed = [], []
        for key in keys:
            claimed = waiting[key]
            new = key not in known and (claimed is None or claimed < since)
            if new:
                recent[key] = waiting[key] = now  # a repeat in this call: a duplicate
                self._claimed.append(key)
            fresh.append(new)
        return fresh

    def bind(self, details_end):
        """The last claim's group was written and ends at `details_end`."""
        if self._claimed:
            self._bound.append((self._claimed, self._claimed_at, details_end))

    def unclaim(self):
        """The last claim's group could not be written: its events were never accepted."""
        for key in self._claimed:
            self._recent.pop(key, None)

    def note_synced(self, details_end):
        """data1.details is durable up to `details_end`: its ids may go into the index."""
        self._synced_details = max(self._synced_details, details_end)

    # --- the flusher: waiting ids into runs, off the request path

    def _flush_loop(self):
        # The runs' writes, sorts and merges run without the GIL for the most part: off the
        # ingest's pinned CPU they never hold up a request.
        unpin_this_thread()
        while not self._stop.wait(FLUSH_EVERY):
            try:
                self.flush()
            except Exception as error:
                # Derived state: the restart rebuilds it from data1.details; no event is lost.
                # Never a flusher that ends quietly: the ids would pile up in memory, and the
                # index fall further behind, until the next restart.
                die(log, f"writing data1.seen failed ({error!r}); it is rebuilt on restart")

    def flush(self):
        """Write every claimed id whose group is durable, and mark the index covered up to
        the durable end of data1.details."""
        with self._lock:
            # Every group ending at or before `synced` is bound (log_writer binds before it
            # publishes the end a sync covers), and a later group starts after it: so once
            # the ids bound below it are written, the index is complete up to it.
            synced, bound, ready = self._synced_details, self._bound, []
            while bound and bound[0][2] <= synced:
                ready.append(bound.popleft())
            if not ready and synced <= self._covered:
                return
            self.insert(b"".join(itertools.chain.from_iterable(keys for keys, _, _ in ready)),
                        np.repeat([second for _, second, _ in ready],
                                  [len(keys) for keys, _, _ in ready]), synced)
            # Only now, the run published, do they stop waiting: a lookup that misses one
            # here finds it in the runs. One claimed again since (its window over, or
            # after a clock's step) waits on for that claim's group.
            recent = self._recent
            for keys, second, _ in ready:
                try:
                    claims = operator.itemgetter(*keys)(recent) if len(keys) > 1 else (
                        recent[keys[0]],)
                except KeyError:
                    claims = ()
                if claims.count(second) == len(keys):
                    collections.deque(map(recent.pop, keys), maxlen=0)
                else:
                    for key in keys:
                        if recent.get(key) == second:
                            del recent[key]

    # --- runs: the one way ids reach the disk

    def insert(self, key_blob, seconds, covered):
        """Add the keys in `key_blob` (16 bytes each), received at `seconds` (Unix seconds,
        one each), as runs; merge and expire runs; then replace the manifest, covered up to
        details offset `covered`, and publish the runs to lookups. Returns how many were
        added. (The flusher and the rebuild write through it; bench/sdk.py prefills with
        it.)"""
        with self._lock:
            return self._insert(key_columns(key_blob), np.asarray(seconds, dtype=np.int64),
                                covered)

    def _insert(self, keys, seconds, covered):
        runs = {period: list(rs) for period, rs in self._index.runs.items()}
        blooms = dict(self._index.blooms)
        obsolete = []
        periods = seconds // self.window
        for period in np.unique(periods):
            period = int(period)
            chosen = periods == period
            if period not in runs:
                earlier = blooms.get(period - 1)
                runs[period] = []
                blooms[period] = Bloom(max(MIN_CAPACITY, earlier.count if earlier else 0))
            added, added_seconds = keys[chosen], seconds[chosen]
            for start in range(0, len(added), sorted_runs.MAX_RUN):
                part = slice(start, start + sorted_runs.MAX_RUN)
                runs[period].append(self._new_run(len(added[part]), sorted_runs.sorted_slices(
                    added[part], added_seconds[part])))
            bloom = blooms[period]
            if bloom.count + len(added) > bloom.capacity:
                blooms[period] = self._grown(runs[period], bloom.count + len(added))
            else:
                bloom.add(added)
            obsolete += self._merge(runs[period])
        # Expire: a period whose every second is older than the window is never asked again.
        now = max(int(self._clock()), int(seconds.max()) if len(seconds) else 0)
        for period in [p for p in runs if (p + 2) * self.window <= now + 1 - EXPIRY_SLACK]:
            obsolete += runs.pop(period)
            blooms.pop(period)
        self._covered = covered
        # The new runs' names are durable before a manifest naming them can be.
        fsync_directory(self.path)
        self._write_manifest(runs)
        self._index = _Index({period: tuple(rs) for period, rs in runs.items()}, blooms)
        for run in obsolete:  # no manifest names them any more; a lookup under way reads
            run.path.unlink()  # on through its open file
        return len(keys)

    def _new_run(self, count, slices):
        path = self.path / f"{self._next:06d}{RUN_SUFFIX}"
        self._next += 1
        return _Run(path, _write_run(path, count, slices))

    def _merge(self, runs):
        """Merge runs, as storage/sorted_runs.py decides, while any are to be, a range of
        keys at a time; `runs` is changed in place. Returns the runs merged away."""
        merged_away = []
        while True:
            group = to_merge(runs)
            if group is None:
                return merged_away
            for run in group:
                run.check()  # its keys are copied on only if they are what was written
            merged = self._new_run(sum(run.count for run in group), sorted_runs.merged_slices(
                group, lambda run, first, end: run.read_blocks(first, end), BLOCK))
            runs[:] = [run for run in runs if run not in group] + [merged]
            merged_away += group

    def _grown(self, runs, count):
        """A filter for `runs` with room for twice `count` ids, built from the runs a chunk
        at a time."""
        began = time.monotonic()
        bloom = Bloom(2 * count)
        for run in runs:
            for keys in run.key_chunks():
                bloom.add(keys)
        log.info("data1.seen: a period's filter grew to %d ids (%d held), in %.1f s",
                 bloom.capacity, count, time.monotonic() - began)
        return bloom

    def _write_manifest(self, runs):
        listed = [[run.path.name, period, run.count]
                  for period, period_runs in sorted(runs.items()) for run in period_runs]
        replace_durably(self.path / MANIFEST, json.dumps({
            "version": VERSION, "details": self._details.identity.hex(),
            "covered": self._covered, "window": self.window, "next": self._next,
            "runs": listed}).encode())

    def held(self, since):
        """How many ids the runs hold received at or after `since` (Unix seconds)."""
        return sum(int((run._column(2, run.count) >= since).sum())
                   for runs in self._index.runs.values() for run in runs)

    def close(self):
        self._stop.set()
        self._flusher.join()
        self.flush()
        self._index = _Index({}, {})  # its runs' files close with it
