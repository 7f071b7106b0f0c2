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
    older than the widest window: the store keeps, per key, the latest time it was stored
    at (latest by time, whatever the sequence), and drops keys older than the widest window
    seen, plus SLACK_MS for the servers' clocks, before the newest message.

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
    * SQLite, WAL, synchronous=NORMAL (storage/views/derived_store.py); or, with no path, in
      memory, built again from the stream at each start (a tool, a test).

Format (version 1)
    state(version, position, source, newest_ms, widest, repeats, exact_after), one row
        position     the stream sequence up to which every message is decided
        source       the stream it decides (its identity: storage/stream/setup.py)
        newest_ms    the latest stored time of a decided SDK message
        widest       the widest window of a decided SDK message (seconds)
        repeats      how many repeats were found
        exact_after  0, or, for a store begun at a window's start (begin_at), the sequence
                     after which its decisions are exact
    seen(key BLOB PRIMARY KEY, stored_ms INTEGER) WITHOUT ROWID, indexed by stored_ms
    repeat(sequence INTEGER, item INTEGER, PRIMARY KEY (sequence, item)) WITHOUT ROWID

One writer and reader: the worker owning the partition.
"""

from storage.views import derived_store

VERSION = 1
STATE_COLUMNS = "position, source, newest_ms, widest, repeats, exact_after"
# How far back the servers' clocks may step between two messages of a partition without
# changing a decision: keys are kept this much longer than the widest window.
SLACK_MS = 3600 * 1000
# Keys asked of SQLite in one statement.
LOOKUP_CHUNK = 500

SCHEMA = """
CREATE TABLE state (version INTEGER NOT NULL, position INTEGER NOT NULL, source TEXT NOT NULL,
    newest_ms INTEGER NOT NULL, widest INTEGER NOT NULL, repeats INTEGER NOT NULL,
    exact_after INTEGER NOT NULL);
CREATE TABLE seen (key BLOB PRIMARY KEY, stored_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX seen_by_time ON seen (stored_ms);
CREATE TABLE repeat (sequence INTEGER NOT NULL, item INTEGER NOT NULL,
    PRIMARY KEY (sequence, item)) WITHOUT ROWID;
"""
FIRST_STATE = "INSERT INTO state VALUES (?, 0, ?, 0, 0, 0, 0)"


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

    def open(self, source):
        """Open the store, creating it if missing; one of another stream, or one that cannot
        be read, is set aside and started over (it is derived from the stream). Returns why
        it was started over, or None."""
        problem = None
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
            except derived_store.Unusable as unusable:
                problem = str(unusable)
            if problem:
                self.set_aside()
                derived_store.create(self.path, SCHEMA, FIRST_STATE, (VERSION, source))
                self.db, state = derived_store.open_writer(self.path, VERSION, STATE_COLUMNS)
        (self.position, self.source, self._newest_ms, self._widest, self.repeats,
         self.exact_after) = state
        self._decided = self.position
        self._pending, self._pending_repeats = {}, {}
        return problem

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
            db.execute("DELETE FROM seen")
            db.execute("DELETE FROM repeat")
            db.execute("UPDATE state SET position = 0, newest_ms = 0, widest = 0, "
                       "repeats = 0, exact_after = ?", (exact_after,))
        self.position = self._decided = self._newest_ms = self._widest = self.repeats = 0
        self.exact_after = exact_after
        self._pending, self._pending_repeats = {}, {}

    def remove(self):
        """Close the store and delete it (it is derived: nothing is lost)."""
        self.close()
        if self.path is not None:
            # Its write-ahead log first: one left beside a store made later would be replayed
            # into it.
            for path in (*derived_store.sidecars(self.path), self.path):
                if path.exists():
                    path.unlink()

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
        window_ms = sdk.window * 1000
        since = stored_ms - window_ms
        repeats, inside = [], set()
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
        latest, asked = {}, []
        for key in keys:
            found = self._pending.get(key)
            if found is None:
                asked.append(key)
            else:
                latest[key] = found
        for start in range(0, len(asked), LOOKUP_CHUNK):
            chunk = asked[start:start + LOOKUP_CHUNK]
            latest.update(self.db.execute(
                f"SELECT key, stored_ms FROM seen WHERE key IN ({','.join('?' * len(chunk))})",
                chunk))
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
        db = self.db
        with derived_store.transaction(db):
            db.executemany("INSERT INTO seen VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                           "stored_ms = max(stored_ms, excluded.stored_ms)",
                           self._pending.items())
            db.executemany("INSERT INTO repeat VALUES (?, ?)",
                           [(sequence, item) for sequence, items in self._pending_repeats.items()
                            for item in items])
            db.execute("DELETE FROM seen WHERE stored_ms < ?",
                       (self._newest_ms - self._widest * 1000 - SLACK_MS,))
            db.execute("UPDATE state SET position = ?, newest_ms = ?, widest = ?, "
                       "repeats = repeats + ?", (position, self._newest_ms, self._widest, found))
        self.position = self._decided = position
        self.repeats += found
        self._pending, self._pending_repeats = {}, {}
