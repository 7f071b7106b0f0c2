"""seen-<partition>.sqlite3: which SDK events of a partition's messages repeat an earlier one
(cluster mode). The dedupe at the partition, as Kafka's idempotent producer dedupes at the
log; data1.seen (storage/log/seen_index.py) does it at the ingest on one machine.

The rule (a function of the stream alone, so every worker finds the same repeats)
    Event i of the SDK message at stream sequence s, stored at time t (the stream's, in ms)
    with the window W (its Mini-Analytics-Window: storage/stream/sdk_message.py) and the
    key k, is a repeat when W > 0 and either an event before it in the message has the key
    k, or a message before s that holds k was stored at t - W or later. A repeat is not
    counted, by the counts or by any view.

    Every earlier occurrence of k counts, repeat or not: a retry that goes on being sent
    keeps being a repeat. Only the window before t matters, so the rule needs no history
    older than the widest window: the store keeps each key's occurrences with the times
    they were stored at (a lookup takes the latest by time, whatever the sequence), and
    drops those older than the widest window seen, plus SLACK_MS for the servers' clocks,
    before the newest message (by period, below).

Design
    * A view of the partition, like the series and overview stores, with its own position:
      every message up to it has been decided. Decisions are made in sequence order, only
      past the position; a message at or before it (read again after a crash, or by a view
      that is behind) is answered from the `repeat` table, which keeps every repeat found,
      so the answer is the same one.
    * Committed before the views and the checkpoint (worker/stream_runner.py), so it is
      never behind what they have counted; a store behind the checkpoint (one a power loss
      took commits from) is brought up to it, from its own position, before the partition
      is counted further. Atomicity, not durability: a commit lost to a power loss is
      decided again, the same way.
    * Since the rule looks back one window only, a worker taking a partition over needs not
      read its whole history before counting it: its store begins at the window before the
      checkpoint (begin_at), exact from the checkpoint on. Its views, counted again from the
      partition's first message, ask a second store, begun at the stream's start, about the
      messages before that (worker/stream_runner.py).
    * Keys are kept as LevelDB keeps them, and as data1.seen does at the ingest
      (storage/log/seen_index.py): each commit writes its keys as one sorted run, never
      changed after, and runs of similar size are merged (size-tiered:
      storage/sorted_runs.py, as data1.seen's), a range of keys at a time. A B-tree of
      the keys themselves, as this store was before, dirties a page of its own for each
      new key: at 2 M keys it took 49,000 SDK events a CPU-second, and two thirds of a
      cluster worker's profile in the soak.
    * Lookups ask memory first: a Bloom filter of every run's keys (storage/bloom.py, built
      from the runs when the store opens) answers "never seen" for a new key without
      reading a run. The reader asks it about a whole fetch of messages at once
      (look_ahead): numpy's cost is mostly per call, and a message holds a few dozen keys.
      Only a key it may hold (a repeat, or 1 in 200 to 1,600 new keys) is searched for in
      each run: the run's fence (the first hi of each block, in memory) names the one
      block to read. The filter is made for half as many keys again as it
      holds, and built anew from the runs, twice as large, when full.
    * Runs are by period (PERIOD_MS of stored time); a period's runs are deleted whole once
      all of it is older than the widest window and SLACK_MS before the newest message, so
      a key may be kept up to a period longer than the rule needs (a lookup compares its
      times: keeping more never changes a decision).
    * SQLite, WAL, synchronous=NORMAL (storage/views/derived_store.py): a commit's run, its
      merges and expiries, its repeats and its position are one transaction. Or, with no
      path, in memory, built again from the stream at each start (a tool, a test).

Format (version 2)
    state(version, position, source, newest_ms, widest, repeats, exact_after), one row
        position     the stream sequence up to which every message is decided
        source       the stream it decides (its identity: storage/stream/setup.py)
        newest_ms    the latest stored time of a decided SDK message
        widest       the widest window of a decided SDK message (seconds)
        repeats      how many repeats were found
        exact_after  0, or, for a store begun at a window's start (begin_at), the sequence
                     after which its decisions are exact
    run(id, period, keys): a sorted run of `keys` keys, all stored in period `period`
        (stored_ms // PERIOD_MS); ids ascend in the order runs are made
    run_block(run, block, hi, lo, stored_ms): the run's keys in blocks of BLOCK, sorted by
        hi (a key's first 8 bytes, as a little-endian u64): each column BLOCK (the last
        block fewer) little-endian 8-byte integers: hi and lo (its last 8 bytes) unsigned,
        and the stored time (ms, signed) of the message it was in
    repeat(sequence INTEGER, item INTEGER, PRIMARY KEY (sequence, item)) WITHOUT ROWID

One writer and reader: the worker owning the partition.
"""

import collections
import sqlite3

import numpy as np

from storage.bloom import Bloom, key_columns
from storage.sorted_runs import blocks_of, merged_slices, sorted_slices, to_merge
from storage.views import derived_store

VERSION = 2
STATE_COLUMNS = "position, source, newest_ms, widest, repeats, exact_after"
# How far back the servers' clocks may step between two messages of a partition without
# changing a decision: keys are kept this much longer than the widest window.
SLACK_MS = 3600 * 1000
PERIOD_MS = 6 * 3600 * 1000  # a run's keys were all stored within one such period
BLOCK = 512  # keys in a run_block row: a search reads one (12 KB)
MIN_CAPACITY = 1_000_000  # keys the filter is made for at least (1.5 MB)
GROW_BLOCKS = 256  # blocks (131,072 keys) a filter built again is given at a time

SCHEMA = """
CREATE TABLE state (version INTEGER NOT NULL, position INTEGER NOT NULL, source TEXT NOT NULL,
    newest_ms INTEGER NOT NULL, widest INTEGER NOT NULL, repeats INTEGER NOT NULL,
    exact_after INTEGER NOT NULL);
CREATE TABLE run (id INTEGER PRIMARY KEY, period INTEGER NOT NULL, keys INTEGER NOT NULL);
CREATE TABLE run_block (run INTEGER NOT NULL, block INTEGER NOT NULL, hi BLOB NOT NULL,
    lo BLOB NOT NULL, stored_ms BLOB NOT NULL, PRIMARY KEY (run, block)) WITHOUT ROWID;
CREATE TABLE repeat (sequence INTEGER NOT NULL, item INTEGER NOT NULL,
    PRIMARY KEY (sequence, item)) WITHOUT ROWID;
"""
FIRST_STATE = "INSERT INTO state VALUES (?, 0, ?, 0, 0, 0, 0)"

# A run as a lookup needs it: its id, period, count of keys, and fence (each block's first
# hi).
_Run = collections.namedtuple("_Run", "id period count fence")


class SeenStore(derived_store.Writer):
    def __init__(self, layout, path):
        """`path`: the store's file (Layout.partition_seen), or None to keep it in memory."""
        super().__init__(layout, path)
        self.position = 0  # committed: decided up to here
        self.source = ""
        self.repeats = 0  # committed
        self.exact_after = 0  # see begin_at
        self._decided = 0  # decided up to here, committed or not
        self._newest_ms = self._widest = 0
        self._pending = {}  # key -> latest stored_ms, decided since the commit
        self._pending_repeats = {}  # sequence -> [item, ...], decided since the commit
        self._runs = []  # _Run, committed, in the order made
        self._bloom = Bloom(MIN_CAPACITY)  # of every committed run's keys (and expired ones)
        # key -> whether the filter may hold it, asked ahead (look_ahead) or by _latest. The
        # filter only gains keys at a commit, or is replaced: every change to it empties
        # this (_filter_changed), so no answer is older than the filter it came from, and
        # it holds no more than the keys decided since the last commit, and a fetch's.
        self._looked_ahead = {}

    def open(self, source):
        """Open the store, creating it if missing; one of another stream, or one that cannot
        be read, is set aside and started over (it is derived from the stream). Returns why
        it was started over, or None."""
        problem = None
        self._runs, self._bloom = [], Bloom(MIN_CAPACITY)
        self._filter_changed()
        if self.path is None:
            self.db = derived_store.writer(":memory:")
            self.db.executescript(SCHEMA)
            self.db.execute(FIRST_STATE, (VERSION, source))
            state = self.db.execute(f"SELECT {STATE_COLUMNS} FROM state").fetchone()
        else:
            if not self.path.exists():
                derived_store.create(self.path, SCHEMA, FIRST_STATE, (VERSION, source))
            try:
                self.db, state = derived_store.open_writer(self.path, VERSION, STATE_COLUMNS)
                if state[1] != source:
                    problem = f"it decides {state[1]!r}, but the stream is now {source!r}"
                else:
                    self._load_runs()
            except derived_store.Unusable as unusable:
                problem = str(unusable)
            if problem:
                self.set_aside()
                derived_store.create(self.path, SCHEMA, FIRST_STATE, (VERSION, source))
                self.db, state = derived_store.open_writer(self.path, VERSION, STATE_COLUMNS)
                self._runs, self._bloom = [], Bloom(MIN_CAPACITY)
                self._filter_changed()
        (self.position, self.source, self._newest_ms, self._widest, self.repeats,
         self.exact_after) = state
        self._decided = self.position
        self._pending, self._pending_repeats = {}, {}
        return problem

    def _load_runs(self):
        """Read the runs' fences and build the filter from their keys; Unusable if a run is
        not whole, or unreadable."""
        try:
            self._read_runs()
        except sqlite3.DatabaseError as error:
            raise derived_store.Unusable(f"its runs cannot be read ({error})") from None

    def _read_runs(self):
        # The filter is sized from the runs' counts first, then given GROW_BLOCKS blocks at
        # a time: a day's keys, or a run's, are never all in memory at once.
        listed = self.db.execute("SELECT id, period, keys FROM run ORDER BY id").fetchall()
        bloom = Bloom(max(MIN_CAPACITY, 3 * sum(count for _, _, count in listed) // 2))
        runs = []
        for run_id, period, count in listed:
            his, los, fence, held = [], [], [], 0
            for hi, lo, stored in self._blocks(run_id):
                if not len(hi) == len(lo) == len(stored) or len(hi) % 8 or not hi:
                    raise derived_store.Unusable(f"run {run_id} has a block of unequal "
                                                 "columns")
                fence.append(int.from_bytes(hi[:8], "little"))
                his.append(hi)
                los.append(lo)
                held += len(hi) // 8
                if len(his) == GROW_BLOCKS:  # given to the filter a chunk at a time
                    bloom.add(_as_keys(b"".join(his), b"".join(los)))
                    his, los = [], []
            if held != count:
                raise derived_store.Unusable(f"run {run_id} holds {held} keys, not the "
                                             f"{count} it says")
            runs.append(_Run(run_id, period, count, fence))
            if his:
                bloom.add(_as_keys(b"".join(his), b"".join(los)))
        self._runs, self._bloom = runs, bloom
        self._filter_changed()

    @property
    def newest_ms(self):
        return self._newest_ms

    def begin_at(self, exact_after):
        """Empty the store, to decide from a window's start rather than the stream's: its
        decisions are then exact only for messages after sequence `exact_after` (the
        messages before them in the window are decided without the window before that), and
        are asked of it only there. One transaction."""
        db = self.db
        with derived_store.transaction(db):
            db.execute("DELETE FROM run")
            db.execute("DELETE FROM run_block")
            db.execute("DELETE FROM repeat")
            db.execute("UPDATE state SET position = 0, newest_ms = 0, widest = 0, "
                       "repeats = 0, exact_after = ?", (exact_after,))
        self.position = self._decided = self._newest_ms = self._widest = self.repeats = 0
        self.exact_after = exact_after
        self._pending, self._pending_repeats = {}, {}
        self._runs, self._bloom = [], Bloom(MIN_CAPACITY)
        self._filter_changed()

    def remove(self):
        """Close the store and delete it (it is derived: nothing is lost)."""
        self.close()
        if self.path is not None:
            # Its write-ahead log first: one left beside a store made later would be replayed
            # into it.
            for path in (*derived_store.sidecars(self.path), self.path):
                if path.exists():
                    path.unlink()

    def look_ahead(self, parts):
        """Ask the filter now, in one call, about the keys of `parts` ([(sequence, SdkPart)],
        messages about to be given to repeats_in): what it answers is the same as it would
        be then, since only a commit changes the filter, and a commit forgets these answers.
        Messages already decided are left out (repeats_in reads their repeats)."""
        if not self._runs:
            return  # nothing committed: _latest asks no filter
        self._ask_filter([key for sequence, sdk in parts if sequence > self._decided
                          for key in sdk.keys])

    def _ask_filter(self, keys):
        """Ask the filter, in one call, about those of `keys` it was not asked about since it
        last changed; the answers are kept in _looked_ahead."""
        asked = self._looked_ahead
        unasked = [key for key in keys if key not in asked]
        if unasked:
            asked.update(zip(unasked,
                             self._bloom.may_hold(key_columns(b"".join(unasked))).tolist()))

    def _filter_changed(self):
        self._looked_ahead = {}

    def repeats_in(self, sequence, stored_ms, sdk):
        """The indexes of the events of `sdk` (storage/stream/sdk_message.SdkPart), the SDK
        message at `sequence` stored at `stored_ms`, that repeat an earlier one (see the
        rule). Messages past the position must come in sequence order, each once, and with
        every SDK message between the position and them."""
        if sequence <= self._decided:
            return self._repeats_of(sequence)
        self._decided = sequence
        keys = sdk.keys
        latest = self._latest(keys)
        repeats = []
        if not latest and len(set(keys)) == len(keys):
            # Every key new, each once (nearly every message): no repeat, in C.
            self._pending.update(dict.fromkeys(keys, stored_ms))
        else:
            window_ms = sdk.window * 1000
            since = stored_ms - window_ms
            inside = set()
            for item, key in enumerate(keys):
                before = latest.get(key)
                if window_ms and (key in inside or (before is not None and before >= since)):
                    repeats.append(item)
                inside.add(key)
                self._pending[key] = stored_ms if before is None else max(before, stored_ms)
        if repeats:
            self._pending_repeats[sequence] = repeats
        self._newest_ms = max(self._newest_ms, stored_ms)
        self._widest = max(self._widest, sdk.window)
        return repeats

    def _latest(self, keys):
        """key -> the latest stored time of an earlier message holding it, for those of
        `keys` that one holds."""
        pending = self._pending
        latest = {key: pending[key] for key in keys if key in pending}
        asked = [key for key in keys if key not in latest] if latest else keys
        if not asked or not self._runs:
            return latest
        self._ask_filter(asked)
        looked_ahead = self._looked_ahead
        for key in asked:
            if not looked_ahead[key]:
                continue  # never in a run: the filter has never been given it
            found = None
            for run in self._runs:
                stored_ms = self._search(run, key)
                if stored_ms is not None and (found is None or stored_ms > found):
                    found = stored_ms
            if found is not None:
                latest[key] = found
        return latest

    def _search(self, run, key):
        """The latest stored time of `key` in `run`, or None if it holds none."""
        first, end = blocks_of(run.fence, int.from_bytes(key[:8], "little"))
        latest = None
        for his, los, times in self.db.execute(
                "SELECT hi, lo, stored_ms FROM run_block WHERE run = ? AND block >= ? AND "
                "block < ?", (run.id, first, end)):
            at = his.find(key[:8])
            while at != -1:
                if at % 8 == 0 and los[at:at + 8] == key[8:]:
                    stored_ms = int.from_bytes(times[at:at + 8], "little", signed=True)
                    latest = stored_ms if latest is None else max(latest, stored_ms)
                at = his.find(key[:8], at + 1)
        return latest

    def _repeats_of(self, sequence):
        pending = self._pending_repeats.get(sequence)
        if pending is not None or sequence > self.position:
            return pending or []
        return [item for item, in self.db.execute(
            "SELECT item FROM repeat WHERE sequence = ? ORDER BY item", (sequence,))]

    def commit(self, position):
        """Commit what was decided, with the position `position`, in one transaction. A
        position short of what was decided (a read ended before the one that decided it did)
        commits nothing, and forgets the decisions past the committed position: they are
        made again, the same way, when those messages are read again."""
        if position < self._decided:
            if self._decided > self.position:
                self._decided = self.position
                self._pending, self._pending_repeats = {}, {}
                self._newest_ms, self._widest = self.db.execute(
                    "SELECT newest_ms, widest FROM state").fetchone()
            return
        if position == self.position:
            return
        found = sum(map(len, self._pending_repeats.values()))
        runs = list(self._runs)
        added = None
        db = self.db
        with derived_store.transaction(db):
            if self._pending:
                added = key_columns(b"".join(self._pending))
                stored = np.fromiter(self._pending.values(), dtype=np.int64,
                                     count=len(self._pending))
                periods = stored // PERIOD_MS
                for period in np.unique(periods).tolist():
                    chosen = periods == period
                    runs.append(self._write_run(period, int(chosen.sum()), sorted_slices(
                        added[chosen], stored[chosen])))
                    self._merge(runs, period)
            db.executemany("INSERT INTO repeat VALUES (?, ?)",
                           [(sequence, item) for sequence, items in self._pending_repeats.items()
                            for item in items])
            # A period all older than any window before the newest message is never asked.
            oldest = (self._newest_ms - self._widest * 1000 - SLACK_MS) // PERIOD_MS
            expired = [run for run in runs if run.period < oldest]
            self._delete(expired)
            runs = [run for run in runs if run.period >= oldest]
            db.execute("UPDATE state SET position = ?, newest_ms = ?, widest = ?, "
                       "repeats = repeats + ?", (position, self._newest_ms, self._widest, found))
        # Only what is committed is searched; a filter holding more only lets more pass.
        self._runs = runs
        if added is not None:
            if self._bloom.count + len(added) > self._bloom.capacity:
                self._bloom = self._grown(runs)
            else:
                self._bloom.add(added)
        self._filter_changed()
        self.position = self._decided = position
        self.repeats += found
        self._pending, self._pending_repeats = {}, {}

    def _write_run(self, period, count, slices):
        """Insert a run of `count` keys, given as `slices` ((hi, lo, stored_ms) arrays, each
        sorted by hi, all in order: storage/sorted_runs.merged_slices); return it."""
        run_id = self.db.execute("INSERT INTO run (period, keys) VALUES (?, ?)",
                                 (period, count)).lastrowid
        fence = []

        def blocks():
            # Whole blocks as the slices come, the rest of one carried into the next: a run
            # of up to MAX_RUN keys is never in memory at once.
            carried = [np.empty(0, "<u8"), np.empty(0, "<u8"), np.empty(0, "<i8")]
            for columns in slices:
                hi, lo, stored = (np.concatenate((before, column.astype(before.dtype, copy=False)))
                                  for before, column in zip(carried, columns))
                whole = len(hi) - len(hi) % BLOCK
                for start in range(0, whole, BLOCK):
                    fence.append(int(hi[start]))
                    yield (run_id, len(fence) - 1, hi[start:start + BLOCK].tobytes(),
                           lo[start:start + BLOCK].tobytes(),
                           stored[start:start + BLOCK].tobytes())
                carried = [hi[whole:], lo[whole:], stored[whole:]]
            if len(carried[0]):
                fence.append(int(carried[0][0]))
                yield (run_id, len(fence) - 1, *(column.tobytes() for column in carried))

        self.db.executemany("INSERT INTO run_block VALUES (?, ?, ?, ?, ?)", blocks())
        return _Run(run_id, period, count, fence)

    def _blocks(self, run_id):
        """The run's (hi, lo, stored_ms) blocks, in order."""
        return self.db.execute(
            "SELECT hi, lo, stored_ms FROM run_block WHERE run = ? ORDER BY block", (run_id,))

    def _read_blocks(self, run, first, end):
        """The run's keys in blocks first to end (exclusive), as (hi, lo, stored_ms)
        arrays."""
        his, los, times = zip(*self.db.execute(
            "SELECT hi, lo, stored_ms FROM run_block WHERE run = ? AND block >= ? AND "
            "block < ? ORDER BY block", (run.id, first, end)))
        return (np.frombuffer(b"".join(his), "<u8"), np.frombuffer(b"".join(los), "<u8"),
                np.frombuffer(b"".join(times), "<i8"))

    def _merge(self, runs, period):
        """Merge `period`'s runs, as storage/sorted_runs.py decides, while any are to be, a
        range of keys at a time (its memory is a worker's peak otherwise); `runs` is changed
        in place."""
        while True:
            group = to_merge([run for run in runs if run.period == period])
            if group is None:
                return
            merged = self._write_run(period, sum(run.count for run in group),
                                     merged_slices(group, self._read_blocks, BLOCK))
            self._delete(group)
            runs[:] = [run for run in runs if run not in group] + [merged]

    def _delete(self, runs):
        self.db.executemany("DELETE FROM run_block WHERE run = ?", [(run.id,) for run in runs])
        self.db.executemany("DELETE FROM run WHERE id = ?", [(run.id,) for run in runs])

    def _grown(self, runs):
        """A filter of `runs`' keys with room for as many again, given GROW_BLOCKS blocks
        at a time: a run read whole (up to MAX_RUN keys, and their times) would be the
        worker's peak."""
        held = sum(run.count for run in runs)
        bloom = Bloom(max(MIN_CAPACITY, 2 * held))
        for run in runs:
            blocks = self.db.execute("SELECT hi, lo FROM run_block WHERE run = ? ORDER BY block",
                                     (run.id,))
            while chunk := blocks.fetchmany(GROW_BLOCKS):
                his, los = zip(*chunk)
                bloom.add(_as_keys(b"".join(his), b"".join(los)))
        return bloom


def _as_keys(his, los):
    """key_columns of the keys whose hi and lo columns are `his` and `los` (bytes)."""
    keys = np.empty((len(his) // 8, 2), dtype="<u8")
    keys[:, 0] = np.frombuffer(his, dtype="<u8")
    keys[:, 1] = np.frombuffer(los, dtype="<u8")
    return keys

