"""The worker in cluster mode: the same loop and counting as worker/runner.py, on the stream.

Each partition it owns is counted on its own: a pass reads the partition's messages after its
checkpoint's sequence (storage/stream/reader.py), counts their ids (worker/tally.py, the same
code as for data1), and commits sequence and counts together by compare-and-set
(storage/stream/checkpoint_store.py). Recovery needs no special case, as with data2: the
checkpoint is the old one or the new one, each consistent with the stream.

Which partitions a worker counts is not configured: the live workers share the stream's
partitions between them, each holding a lease on the ones it counts (worker/stream_shares.py).
When a lease lapses (its worker died, is paused, or is cut off from the cluster) or is
released (its worker stopped, or has more than its share), another worker takes it and
commits the partition's checkpoint at once (adopt). That commit is the fence: the old
owner's next commit is refused (Fenced), and it drops the partition. So the counts stay
exact whichever worker commits, and the lease only decides who should. A commit that goes
unanswered (the cluster cut off) drops the partition too: the checkpoint may or may not have
changed, and only taking the partition again, which reloads it, knows which.

A worker answers for the partitions it counts, while its leases are fresh
(worker/stream_answers.py): "who counts partition p, and since when?" for the ingest's
/healthz and `python -m worker status`, and the ingest's reads of their views.

Which of a partition's SDK events repeat an earlier one (a retry sent in another request)
is decided before anything counts them, by a rule that is a function of the stream alone
(storage/views/seen_store.py), and committed before the views and the checkpoint: every
view, and every worker, leaves out the same repeats. A partition new to this worker is
decided from the window before its checkpoint (all the rule looks at) before it is counted
further; its views, counted again from the first message, ask a seen store of their own
about the messages before that.

The counts over time are a second view of each partition, as data1 has: a series store per
partition in the worker's state folder (storage/views/series_store.py; the stream sequence
is its offset), each message dated by when the stream stored it. It is committed just
before the checkpoint, each view with its own position, so a crash between the two leaves
one ahead.
A pass reads from the checkpoint and feeds each view only the messages past its own
position, so none counts a message twice; a view behind the checkpoint (a partition new to
this worker has none, or an old one) is then brought closer a bounded stretch per pass, so
that counting never waits for its recount. A series store lost with its machine is counted
again from the stream.

The experience overview is a third view of each partition, as on one machine: an overview
store per partition (worker/overview.py's OverviewCounter, the stream sequence its position)
counted from the details that ride with the partition's SDK messages. The ingest sends each
install's SDK events to one partition (storage/stream/writer.py), so its sessions are whole
there. It is committed with the series, before the checkpoint, and read the same way: the
worker answers the ingest's reads of it on the partition's overview subject, and
app/cluster_readside.py merges the answers.

The overview counts several times more slowly than the rest, so a running worker gives each
partition's overview its share of an interval a pass, in commits sized to fit it (at the
speed of its last commits), to its first commit past it; the counts commit with each of them,
and read on without it once its time is up. An overview out of time is left behind, and is
brought closer by the passes after it, which then follow each other without waiting until
every view has caught up.
"""

import collections
import dataclasses
import datetime
import logging
import os
import socket
import time

from storage.checkpoint import Checkpoint, CorruptCheckpoint, utc_now_iso
from storage.layout import Layout
from storage.stream.checkpoint_store import Fenced, StreamCheckpointStore
from storage.stream.link import UNAVAILABLE
from storage.stream.reader import StreamReader, stored_at_ms
from storage.stream.setup import stream_identity, until_ready, widest_window
from storage.stream.state import NoQuorum, stream_state
from storage.views.overview_store import OverviewReader, OverviewStore
from storage.views.seen_store import SLACK_MS, SeenStore
from storage.views.series_store import CorruptSeries, SeriesReader, SeriesStore
from worker.overview import FactCounter, OverviewCounter
from worker.sdk_events import SdkEvents
from worker.runner import COMMIT_EVERY, PassLoop, plural, report_skipped
from worker.stream_answers import Answers
from worker.stream_shares import Shares
from worker.tally import Tally

log = logging.getLogger("worker")

# A view behind the checkpoint (a partition new to this worker) is counted again at most this
# many bytes of messages a pass, after the pass counted what is new.
CATCH_UP_BYTES = COMMIT_EVERY
# A seen store behind the checkpoint reads at most this many bytes of messages a pass: the
# counts wait for it, so it reads more than a view's catch-up, but other partitions wait too.
DECIDE_BYTES = 4 * COMMIT_EVERY
# Taking a partition commits its checkpoint as loaded; an old owner committing between the
# load and that commit makes it fail (Fenced): load and try again, this many times.
ADOPT_ATTEMPTS = 3


def utc_iso_of(ms):
    return datetime.datetime.fromtimestamp(max(0, ms) / 1000, datetime.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def read_failed(partition, reached, error):
    """Log a read of `partition` that failed after sequence `reached`; False (incomplete)."""
    log.warning("partition %s: reading the stream failed after sequence %d (%s); retrying "
                "next pass", partition.name, reached,
                f"{type(error).__name__}: {error}".rstrip(": "))
    return False


def owner_name():
    """How this worker signs its commits: unique among live processes, readable by people."""
    return f"worker@{socket.gethostname()}:{os.getpid()}"


class Overcounted(Exception):
    """A pass counted more messages than the stream holds between its positions: nothing of
    it is committed."""


class Partition:
    """One owned partition: its reader, its checkpoint store, its series store and its
    overview (or None), and where each stands."""

    def __init__(self, link, name, owner, seen_dir, series_dir, minute_retention,
                 overview_dir=None, session_timeout=1800, overview_store="sqlite"):
        self.name = name
        self.reader = StreamReader(link, name)
        self.store = StreamCheckpointStore(link, name, owner)
        self.checkpoint = Checkpoint(fingerprint="")  # until recover() loads it
        # Which SDK events repeat an earlier one: decided here, before any view counts them
        # (storage/views/seen_store.py). `views_seen`, while a view is counted again from
        # before where `seen` is exact; `seen_since_ms`, where `seen` begins when begun at
        # a window's start.
        self._seen_layout = Layout(seen_dir) if seen_dir is not None else None
        self.seen = SeenStore(self._seen_layout, self._seen_path())
        self.views_seen = None
        self.seen_since_ms = None
        self.series = self.series_reader = None
        if series_dir is not None:
            path = Layout(series_dir).partition_series(name)
            self.series = SeriesStore(series_dir, minute_retention, path)
            self.series_reader = SeriesReader(series_dir, path)
        self.series_offset = 0
        # True when the last pass left a view behind the checkpoint, out of time or bytes
        # for it: the next pass begins at once.
        self.behind = False
        self.overview = self.overview_reader = None
        if overview_dir is not None and overview_store == "duckdb":
            # Only a worker keeping its overviews in DuckDB loads it (21 MB of memory).
            from storage.views.overview_facts import FactReader, FactStore

            store = FactStore(Layout(overview_dir).partition_overview_facts(name))
            self.overview = FactCounter(store, session_timeout, f"partition {name}")
            self.overview_reader = FactReader(store)
        elif overview_dir is not None:
            path = Layout(overview_dir).partition_overview(name)
            self.overview = OverviewCounter(OverviewStore(overview_dir, path), session_timeout,
                                            f"partition {name}")
            self.overview_reader = OverviewReader(overview_dir, path)

        self.subscriptions = []  # the subjects this worker answers for the partition
        self.taken_at = utc_now_iso()
        # The stream's count of the partition's messages when a pass last read all of them:
        # while it is the same, a pass has nothing to read (messages are never removed).
        self.read_through = None

    def _seen_path(self, views=False):
        layout = self._seen_layout
        return layout and layout.partition_seen(self.name, views)

    def view_positions(self):
        return ([self.series_offset] if self.series is not None else []) + (
            [self.overview.position] if self.overview is not None else [])

    def positions(self):
        """Where each view stands: the checkpoint's sequence, then each store's (and the
        views' seen store's, while they have one)."""
        return [self.checkpoint.offset] + self.view_positions() + (
            [self.views_seen.position] if self.views_seen is not None else [])

    def keep_views_seen(self):
        """Open the views' seen store while a view is behind where `seen` is exact, and
        delete it once none is. Returns why an unusable one was begun again, or None."""
        behind = min(self.view_positions(), default=self.seen.exact_after) < (
            self.seen.exact_after)
        path = self._seen_path(views=True)
        if behind and self.views_seen is None:
            self.views_seen = SeenStore(self._seen_layout, path)
            return self.views_seen.open(self.seen.source)
        if not behind and (self.views_seen is not None or (path and path.exists())):
            (self.views_seen or SeenStore(self._seen_layout, path)).remove()
            self.views_seen = None
        return None

    def seen_for(self, sequence):
        """The seen store that is exact at `sequence`."""
        return self.seen if sequence > self.seen.exact_after else self.views_seen

    def look_ahead(self, messages):
        """Let each seen store ask its filter about a fetch's SDK messages at once
        (SeenStore.look_ahead), before they are decided one by one."""
        asking = collections.defaultdict(list)
        for message in messages:
            if message.sdk is not None:
                asking[self.seen_for(message.sequence)].append((message.sequence, message.sdk))
        for seen, parts in asking.items():
            if seen is not None:
                seen.look_ahead(parts)

    def close(self):
        self.seen.close()
        if self.views_seen is not None:
            self.views_seen.close()
        if self.series is not None:
            self.series.close()
        if self.overview is not None:
            self.overview.close()


class StreamWorker(PassLoop):
    def __init__(self, link, partitions, owner=None, seen_dir=None, series_dir=None,
                 minute_retention=48 * 3600, overview_dir=None, session_timeout=1800,
                 overview_store="sqlite", leases=None):
        """With `leases` (storage/stream/leases.Leases), `partitions` are the stream's, and the
        worker counts its share of them, as assigned among the live workers; without, it
        counts `partitions` (a test, or a tool). `seen_dir`: the folder of the partitions'
        seen stores, or None to keep them in memory, decided again from the stream at each
        start; `series_dir`: the folder of their series stores, or None to keep no counts
        over time (MINI_ANALYTICS_SERIES=off); `overview_dir` the same for their overview
        stores (MINI_ANALYTICS_OVERVIEW=off), kept in `overview_store` (sqlite or duckdb)."""
        self.link = link
        self.all_partitions = list(partitions)
        self.owner = owner or owner_name()
        self.leases = leases
        self._stores = (seen_dir, series_dir, minute_retention, overview_dir, session_timeout,
                        overview_store)
        self.partitions = {}  # name -> Partition: those this worker counts now
        self._stream = None  # the stream's identity, which every checkpoint must name
        self.shares = Shares(leases, partitions, self) if leases else None
        # When this worker last finished a pass or committed: its ping answer carries it, so
        # the ingest can tell a worker that answers but no longer counts (stalled).
        self.progress_at = time.time()
        self.answers = Answers(link, self.owner, leases, lambda: self.progress_at)

    def take_ownership(self):
        """Nothing to take yet: partitions are taken one by one (adopt)."""

    def recover(self):
        # The stream answered connect() a moment ago, but may stop answering for a while (a
        # network cut): wait for it as connect() does, rather than exit at the first timeout.
        self._stream = until_ready(lambda: stream_identity(self.link), log,
                                   lambda: bool(self.signals and self.signals.stop))
        if self.leases is None:
            for name in self.all_partitions:
                self.adopt(name)

    def wait(self, seconds):
        """Wait for the next pass, keeping the leases meanwhile (upkeep)."""
        deadline = time.monotonic() + seconds
        while True:
            if self.shares:
                self.shares.upkeep()
            left = deadline - time.monotonic()
            if left <= 0:
                return self.signals.stop
            until_upkeep = self.shares.seconds_to_upkeep() if self.shares else left
            if self.signals.wait(max(0.0, min(left, until_upkeep))):
                return True

    def _keep_leases(self):
        if self.shares:
            self.shares.renew()

    def catching_up(self):
        return any(partition.behind for partition in self.partitions.values())

    def between_passes(self):
        """Passes that follow each other without a wait still share the partitions."""
        if self.shares:
            self.shares.upkeep()

    def adopt(self, name, how=""):
        """Count partition `name` from now on: load its checkpoint and commit it at once
        (the fence: an old owner's next commit is refused), open its views, answer its
        subjects. Raises Fenced, or what the link raises."""
        partition = Partition(self.link, name, self.owner, *self._stores)
        try:
            for attempt in range(1, ADOPT_ATTEMPTS + 1):
                try:
                    self._recover_checkpoint(partition)
                    break
                except Fenced:
                    if attempt == ADOPT_ATTEMPTS:
                        raise
            self._open_views(partition)
            self._record_overview_reached(partition)
            self.answers.subscribe(partition)
        except BaseException:
            self.answers.unsubscribe(partition)
            partition.close()
            raise
        self.partitions[name] = partition
        loaded = partition.checkpoint
        log.info("partition %s: taken%s: counting from sequence %d (%s, %s)", name,
                 f" {how}" if how else "", loaded.offset, plural(loaded.events, "event"),
                 plural(len(loaded.counts), "experience"))

    def drop(self, name, why, level=logging.WARNING):
        """Stop counting partition `name` (what was committed stays; nothing is pending
        between passes). Logged at `level`: a warning, unless the drop is routine."""
        partition = self.partitions.pop(name, None)
        if partition is None:
            return
        self.answers.unsubscribe(partition)
        partition.close()
        log.log(level, "partition %s: no longer counted here: %s (its checkpoint is at "
                "sequence %d)", name, why, partition.checkpoint.offset)

    def _recover_checkpoint(self, partition):
        """Load the partition's checkpoint and commit it back (see adopt): a rejected one
        is replaced by empty counts. Raises Fenced, or what the link raises."""
        stream = self._stream
        try:
            loaded = partition.store.load()
            if loaded is not None and loaded.fingerprint != stream:
                raise CorruptCheckpoint(
                    f"it counts {loaded.fingerprint!r}, but the stream is now {stream!r} "
                    "(deleted and created again?)")
        except CorruptCheckpoint as problem:
            # Committed over, not deleted: the key's history keeps the bad value.
            log.error("CHECKPOINT REJECTED: partition %s's checkpoint cannot be used: %s; "
                      "recounting the partition from its first message", partition.name,
                      problem)
            loaded = None
        partition.checkpoint = partition.store.commit(loaded or Checkpoint(fingerprint=stream))

    def _open_views(self, partition):
        stream = self._stream
        seen = partition.seen
        problem = seen.open(stream)
        if problem:
            log.error("SEEN REJECTED: partition %s: %s; set it aside, deciding the partition's "
                      "repeats again", partition.name, problem)
        counted = partition.checkpoint.offset
        if seen.position < counted:
            # The rule looks back one window (storage/views/seen_store.py): a store with
            # nothing of the window before the checkpoint begins there, exact from the
            # checkpoint on, rather than read the partition's whole history.
            stored_ms = stored_at_ms(self.link, counted)
            since_ms = 0 if stored_ms is None else (
                stored_ms - widest_window(self.link) * 1000 - SLACK_MS)
            if seen.position == 0 or seen.newest_ms < since_ms:
                seen.begin_at(counted)
                partition.seen_since_ms = since_ms
            log.info("partition %s: deciding its repeats from %s up to sequence %d",
                     partition.name, f"sequence {seen.position}" if seen.position else
                     f"{utc_iso_of(since_ms)} (a window before sequence {counted})", counted)
        if partition.series is not None:
            self._open_series(partition, stream)
        if partition.overview is not None:
            partition.overview.open()
            if partition.overview.source not in (b"", stream.encode()):
                partition.overview.start_over(
                    f"it counts {partition.overview.source.decode(errors='replace')!r}, "
                    f"but the stream is now {stream!r}", aside=False)

    def _record_overview_reached(self, partition):
        """Commit the checkpoint again if the partition's overview store has counted past
        its mark but not past its sequence: this worker counted the partition before, and
        lost it between its store's commit and its checkpoint's (Fenced, or unanswered),
        while the next owner's overview stayed behind. The store is exact up to where it
        stands (it counted the stream's messages, with the repeats every worker decides), but
        answers only from the mark (worker/stream_answers.py), and with no new message no
        pass would move the mark: the overview would answer 503 until the partition's next
        message. Raises Fenced, or what the link raises."""
        overview, current = partition.overview, partition.checkpoint
        if overview is None or not current.overview_mark < overview.position <= current.offset:
            return
        partition.checkpoint = partition.store.commit(
            dataclasses.replace(current, overview_reached=overview.position))
        log.info("partition %s: its overview store had counted to sequence %d, past the %d "
                 "its checkpoint recorded: recorded, so it answers from there", partition.name,
                 overview.position, current.overview_mark)

    def _open_series(self, partition, stream):
        """Open the partition's series store, or start it over if it cannot be used or
        counts another stream; its position is its own (see the module's docstring)."""
        try:
            state = partition.series.open(stream)
            problem = (None if state.fingerprint == stream else
                       f"it counts {state.fingerprint!r}, but the stream is now {stream!r}")
        except CorruptSeries as corrupt:
            problem = str(corrupt)
        if problem:
            aside = partition.series.set_aside()
            log.error("SERIES REJECTED: partition %s: %s; moved it aside to %s; counting the "
                      "partition's series from its first message", partition.name, problem,
                      aside)
            state = partition.series.open(stream)
        partition.series_offset = state.offset
        log.info("partition %s: series store at sequence %d, %d events", partition.name,
                 state.offset, state.events)

    def run_pass(self):
        """Count what each partition gained since its last commit, and commit it. Returns
        the events counted."""
        try:
            _, _, _, stored = stream_state(self.link)
        except NoQuorum:
            stored = {}  # unknown: read every partition (the reads say why they fail)
        counted = 0
        # A running worker gives each partition's overview its share of an interval (see the
        # module's docstring); a pass called on its own gives it all the time it needs.
        share = (None if self.interval is None else
                 self.interval / max(1, len(self.partitions)))
        for name, partition in list(self.partitions.items()):
            if stored.get(name) is not None and stored[name] == partition.read_through:
                continue  # nothing new since the last complete read
            until = None if share is None else time.monotonic() + share
            try:
                counted += self._count(partition, stored.get(name), until)
            except Fenced as fenced:
                self.drop(name, f"FENCED: {fenced}")
                if self.leases:
                    self.leases.forget(name)
            except Overcounted as refused:
                # Nothing of the pass was committed; taking the partition again reloads the
                # committed state, and the next pass reads from there.
                self.drop(name, f"COMMIT REFUSED: {refused}", logging.ERROR)
            except UNAVAILABLE as error:
                # The commit may or may not have happened: taking the partition again
                # (next upkeep, if its lease is still this worker's) reloads whichever.
                self.drop(name, f"a commit was not answered ({type(error).__name__}: "
                                f"{error})".replace(":  )", ")"))
            if self.stop_requested():
                break
        if self.shares:
            self.shares.drop_lost()
        self.progress_at = time.time()
        return counted

    def _count(self, partition, stored, until=None):
        """Count the partition's new messages, from its checkpoint on, feeding each view
        that is level with it (or ahead); then bring the views that are behind closer, at
        most CATCH_UP_BYTES of messages a pass. A partition this worker takes over has no
        views of its own yet, or old ones: their recount of the whole stream must not hold
        the counting up. Nor may the overview's own slowness: with `until` (a
        time.monotonic() moment), the overview is fed to its first commit past it, and left
        behind from there. `stored`, the stream's count of the partition's messages before
        the read (or None), is what a complete read has read through. Returns the events
        counted."""
        counted = partition.checkpoint.offset
        if partition.seen.position < counted:
            # New to this worker (or a power loss took commits back): which events repeat
            # is decided up to the checkpoint before anything past it is counted.
            complete = self._decide(partition, counted)
            if partition.seen.position < counted:
                partition.read_through = None
                partition.behind = complete
                return 0
        self._keep_views_seen(partition)
        lowest = min(partition.positions())
        series_level = partition.series is not None and partition.series_offset >= counted
        overview_level = partition.overview is not None and partition.overview.position >= counted
        events, complete = self._read(partition, counted, series_level, overview_level,
                                      overview_until=until)
        series_behind = partition.series is not None and not series_level
        # An overview left behind by the read above has had its time this pass.
        overview_behind = partition.overview is not None and not overview_level
        if (series_behind or overview_behind) and complete and not self.stop_requested():
            _, complete = self._read(partition, min(partition.positions()), series_behind,
                                     overview_behind, until=partition.checkpoint.offset,
                                     overview_until=until)
        self._keep_views_seen(partition)
        level = min(partition.positions()) >= partition.checkpoint.offset
        partition.read_through = stored if complete and level else None
        # The next pass begins at once only while the views are catching up: views that
        # were not brought closer wait for the interval.
        partition.behind = complete and not level and min(partition.positions()) > lowest
        return events

    def _keep_views_seen(self, partition):
        problem = partition.keep_views_seen()
        if problem:
            log.error("SEEN REJECTED: partition %s's views' seen store: %s; set it aside, "
                      "deciding again from the first message", partition.name, problem)

    def _decide(self, partition, until):
        """Bring the partition's seen store closer to sequence `until`, at most
        DECIDE_BYTES of messages a pass, committing as it goes. Returns whether the read
        ended where meant to rather than on an error."""
        seen = partition.seen
        start = reached = seen.position
        pending_bytes = read_bytes = 0
        complete = True
        reading = partition.reader.messages(
            start, None if start else partition.seen_since_ms,
            look_ahead=lambda fetched: seen.look_ahead(
                (message.sequence, message.sdk) for message in fetched
                if message.sdk is not None))
        try:
            for message in reading:
                if self.stop_requested():
                    return False
                if message.sequence > until:
                    reached = until  # every message up to it was read
                    break
                self._keep_leases()
                part = message.sdk
                if part is not None:
                    seen.repeats_in(message.sequence, message.stored_ms, part)
                pending_bytes += message.size
                read_bytes += message.size
                reached = message.sequence
                if pending_bytes >= COMMIT_EVERY:
                    seen.commit(reached)
                    pending_bytes = 0
                if read_bytes >= DECIDE_BYTES:
                    break
            else:
                reached = max(reached, until)  # every message up to it was read
        except UNAVAILABLE as error:
            complete = read_failed(partition, reached, error)
        finally:
            reading.close()
        seen.commit(reached)
        log.info("partition %s: repeats decided again up to sequence %d of %d (%s found)",
                 partition.name, reached, until, plural(seen.repeats, "repeat"))
        return complete

    def _read(self, partition, start, feed_series, feed_overview, until=None,
              overview_until=None):
        """Read the partition's messages after `start`: into the counts (unless `until`, a
        catch-up of the views, which reads at most CATCH_UP_BYTES and no further than that
        sequence), the series if `feed_series` and the overview if `feed_overview`, each
        only past its own position; commit as it goes. With `overview_until` (a
        time.monotonic() moment), the overview's commits are sized to end by then, and it is
        fed no further than its first commit past it: the counts read on without it, a
        catch-up stops there. Returns (events counted, whether the read ended where meant to
        rather than on an error)."""
        started = time.monotonic()
        counted, dated = partition.checkpoint.offset, partition.series_offset
        overviewed = partition.overview.position if partition.overview is not None else None
        counts, series, sdk = Tally(), Tally(), []
        messages = pending_bytes = read_bytes = repeated = sdk_events = 0
        reached, complete = start, True
        # The overview's commit is sized by the time it has left, and the counts commit with it.
        overview_commit = (partition.overview.commit_size(overview_until) if feed_overview
                           else None)
        # A read from before where the seen store is exact (a catch-up of the views) decides
        # with the views' seen store there, and commits it.
        views_seen = partition.views_seen if start < partition.seen.exact_after else None
        reading = partition.reader.messages(start, look_ahead=partition.look_ahead)
        try:
            for message in reading:
                sequence = message.sequence
                if self.stop_requested():
                    return 0, False
                if until is not None and sequence > until:
                    break
                self._keep_leases()  # a long read keeps its leases too
                to_count = until is None and sequence > counted
                to_date = feed_series and sequence > dated
                to_overview = feed_overview and sequence > overviewed
                part, records, repeats = message.sdk, message.records, ()
                # The views' seen store decides every message it is shown, needed or not.
                if part is not None and (to_count or to_date or to_overview or (
                        views_seen is not None and sequence <= partition.seen.exact_after)):
                    # The dedupe at the partition: the same repeats for every view.
                    repeats = partition.seen_for(sequence).repeats_in(
                        sequence, message.stored_ms, part)
                    records = part.records(repeats)
                    repeated += len(repeats) if to_count else 0
                elif message.flaw and to_count:
                    log.error("partition %s: message %d is not in the format, so it counts "
                              "no event: %s", partition.name, sequence, message.flaw)
                if to_count:
                    counts.add(records)
                    messages += 1
                if to_date:
                    second = message.stored_ms // 1000
                    series.add(records, second - second % 60)
                if to_overview and part is not None:
                    sdk.append((part, repeats))  # decoded by SdkEvents.read_stream, at the commit
                    sdk_events += len(part.tokens) - len(repeats)
                pending_bytes += message.size
                read_bytes += message.size
                reached = sequence
                if pending_bytes >= COMMIT_EVERY or (
                        feed_overview and sdk_events >= overview_commit):
                    self._commit(partition, counts, feed_series and series,
                                 feed_overview and sdk, reached, messages, views_seen)
                    messages = pending_bytes = sdk_events = 0
                    sdk = []
                    if feed_overview:
                        if overview_until is not None and time.monotonic() >= overview_until:
                            if until is not None:
                                break  # a catch-up: the overview's time is up for this pass
                            feed_overview = False  # the counts read on; the overview waits
                        else:
                            overview_commit = partition.overview.commit_size(overview_until)
                if until is not None and read_bytes >= CATCH_UP_BYTES:
                    break
        except UNAVAILABLE as error:
            # What was read is consistent up to `reached`: commit it; the next pass reads on.
            complete = read_failed(partition, reached, error)
        finally:
            reading.close()  # ends its consumer
        if reached > start:
            self._commit(partition, counts, feed_series and series, feed_overview and sdk,
                         reached, messages, views_seen)
            if until is None:
                log.info("pass: partition %s: counted %s (%d skipped, %s left out) in "
                         "%.3fs; sequence %d -> %d; lag %s", partition.name,
                         plural(counts.events, "event"), counts.skipped,
                         plural(repeated, "repeat"), time.monotonic() - started, start,
                         reached, plural(partition.reader.pending, "message"))
            else:
                log.info("partition %s: %s counted again up to sequence %d of %d",
                         partition.name, " and ".join(
                             view for view, fed in (("counts over time", feed_series),
                                                    ("overview", feed_overview)) if fed),
                         reached, until)
        return counts.events, complete

    def _commit(self, partition, counts, series, sdk, sequence, messages, views_seen=None):
        """Commit the seen stores (`views_seen`, the views' one, if the read fed it), then the
        views fed up to `sequence` (`series`, a Tally, and `sdk`, the SDK messages past the
        overview's position with their repeats; False for a view not fed), then the
        checkpoint."""
        if messages > max(0, sequence - partition.checkpoint.offset):  # 0 in a views' catch-up
            # Sequences only rise in a read (storage/stream/reader.py), so this cannot happen;
            # were it to, no view may claim messages the stream does not hold.
            raise Overcounted(f"partition {partition.name}: {messages} messages counted "
                              f"between sequences {partition.checkpoint.offset} and "
                              f"{sequence}, which hold at most "
                              f"{sequence - partition.checkpoint.offset}")
        # First which events were repeats: never behind a view that counted without them.
        partition.seen.commit(sequence)
        if views_seen is not None:
            views_seen.commit(min(sequence, partition.seen.exact_after))
        overview = partition.overview
        if sdk is not False and overview is not None and sequence > overview.position:
            # Acknowledged messages are on a quorum's disks: nothing to make durable first.
            read = SdkEvents()
            read.read_stream(sdk)
            overview.count(read, partition.checkpoint.fingerprint.encode(), sequence, sequence)
        if series is not False and partition.series is not None and (
                sequence > partition.series_offset):
            _, _, minute_rows, hour_rows = series.drain_into({}, {})
            partition.series.commit(minute_rows, hour_rows, sequence,
                                    partition.checkpoint.fingerprint)
            partition.series_offset = sequence
        current = partition.checkpoint
        counted = max(sequence, current.offset)  # a catch-up of the views counts nothing
        reached = current.overview_reached
        if overview is not None:  # how far the overview has counted, never back
            reached = min(counted, max(overview.position, current.overview_mark))
        # The overview moving on in a catch-up is committed too: the next owner of the
        # partition must not answer from a store behind what this one answered from.
        if counted > current.offset or reached != current.overview_reached:
            # Extended in place, as in worker/runner.py: should the commit fail, the
            # partition is dropped and this state goes with it.
            totals, projects = current.counts, current.projects
            skipped, samples, _, _ = counts.drain_into(totals, projects)
            report_skipped(skipped, samples)
            # Raises Fenced if another worker committed meanwhile: the caller drops the
            # partition.
            partition.checkpoint = partition.store.commit(dataclasses.replace(
                current, offset=counted, counts=totals, projects=projects,
                skipped=current.skipped + skipped,
                messages=current.messages + messages, overview_reached=reached,
            ))
        self.progress_at = time.time()
        self._keep_leases()  # a long catch-up keeps its leases too

    def close(self):
        at = ", ".join(f"{name} sequence {partition.checkpoint.offset}"
                       for name, partition in sorted(self.partitions.items()))
        for partition in self.partitions.values():
            partition.close()
        self.partitions = {}
        if self.leases:
            try:
                self.leases.leave()  # the others take its partitions at once
            except UNAVAILABLE:
                pass  # they lapse instead
        if self.signals:
            log.info("worker stopped at %s", at or "no partition")
