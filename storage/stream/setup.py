"""The stream and the checkpoint bucket: created if missing, checked if present (cluster mode).

Every ingest node and worker calls ensure() at start, so any of them may be first, and two
starting at once both succeed (JetStream's create is idempotent for an identical config).
A stream or bucket that exists with different settings is never changed here: changing
replicas or limits under live data is an operator's decision. It is a SetupMismatch naming
each difference, and the program exits with the "bad setup" code. Two exceptions, each only
adding to what a stream does: a stream's duplicate window shorter than the dedupe window is
raised to it (a longer window only remembers message ids longer; a stream created before
the dedupe window existed had 120 s), and atomic batches are allowed on a stream created
before they were used (storage/stream/writer.py). The window is never lowered: a program set
to a shorter window than the stream's is refused.

The stream's partitions are fixed when it is created, and recorded in the bucket
(config.partitions): the first program to start records MINI_ANALYTICS_PARTITION_COUNT's
(settings.DEFAULT_PARTITION_COUNT if unset), every other takes the recorded list, and one set
to another count is refused (SetupMismatch). The count cannot change on a live stream: an
install's SDK events go to the partition its anonymousID picks among them
(storage/stream/writer.py), so a new count would send its later events to another partition,
counted by another worker, and split its sessions. A cluster grows by adding workers, up to
one per partition (storage/stream/leases.py).
"""

import time

from nats.js import api
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError, NotFoundError

from storage import process, settings
from storage.layout import partition_names
from storage.stream.checkpoint_store import bucket as checkpoint_bucket
from storage.stream.link import UNAVAILABLE, Link
from storage.stream.names import (CHECKPOINT_BUCKET, CHECKPOINT_BUCKET_STREAM,
                                  LEGACY_PARTITIONS_KEY, PARTITIONS_KEY, STREAM, SUBJECT_PREFIX)

# The largest message: one group commit of ids (an ingest node cuts its messages below this).
MAX_MESSAGE_BYTES = 1024 * 1024
# The largest checkpoint value: about 20 bytes per experience, so some 400,000 experiences per
# partition. The servers' max_payload (cluster/nats.conf) must be at least this.
MAX_CHECKPOINT_BYTES = 8 * 1024 * 1024
# A publish retried with the same Nats-Msg-Id within the duplicate window is stored once. It
# is the dedupe window (settings.dedupe_window: an SDK event's retry), and never shorter than
# this, an ingest node's longest retry of a publish (settings.publish_timeout, at most 60 s).
MIN_DUPLICATE_WINDOW_SECONDS = 120.0
# Each checkpoint key keeps its last commits: who committed which revision after which, for an
# operator (and the tests) to audit that no two workers ever committed from the same revision.
CHECKPOINT_HISTORY = 64


class SetupMismatch(Exception):
    """The stream or the bucket exists with settings other than the ones this cluster needs."""


def stream_config(replicas, dedupe_window):
    return api.StreamConfig(
        name=STREAM,
        subjects=[SUBJECT_PREFIX + "*"],
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        retention=api.RetentionPolicy.LIMITS,
        # No limit may ever remove an event the checkpoints have not counted: keep them all.
        max_msgs=-1,
        max_bytes=-1,
        max_age=0,
        duplicate_window=max(float(dedupe_window), MIN_DUPLICATE_WINDOW_SECONDS),
        max_msg_size=MAX_MESSAGE_BYTES,
        # A request's SDK events in one atomic batch (storage/stream/writer.py).
        allow_atomic=True,
    )


def bucket_config(replicas):
    return api.KeyValueConfig(
        bucket=CHECKPOINT_BUCKET,
        storage=api.StorageType.FILE,
        replicas=replicas,
        history=CHECKPOINT_HISTORY,
        max_value_size=MAX_CHECKPOINT_BYTES,
        # Allowed, and checked like every setting, because buckets were created with it;
        # nothing reads directly: a replica that lags would serve older counts
        # (storage/stream/checkpoint_store.py reads through the leader).
        direct=True,
    )


# How long a starting program waits for JetStream to answer (a cluster starting at the same
# time elects its meta leader in a few seconds) before it exits to be restarted.
READY_TIMEOUT = 30.0


def connect(servers, name, replicas, dedupe_window, log, partition_count=None):
    """A Link to the cluster, with the stream and the bucket created or checked, and the
    stream's partitions (`partition_count`: the count asked for, None to take the stream's):
    (link, partitions, None). Or (None, None, the exit code a program should exit with),
    after one log line saying why."""
    try:
        link = Link(servers, name)
    except UNAVAILABLE as error:
        log.error("no NATS server answered at %s (%s); exiting", ",".join(servers),
                  type(error).__name__)
        return None, None, process.paced(process.EXIT_FAILED)

    def set_up():
        link.call(ensure(link.js, replicas, dedupe_window, log), READY_TIMEOUT)
        return link.call(agree_on_partitions(link.js, partition_count, log), READY_TIMEOUT)

    try:
        return link, until_ready(set_up, log), None
    except SetupMismatch as mismatch:
        link.close()
        return None, None, process.paced(process.bad_setup(log, mismatch))
    except (NotReady, *UNAVAILABLE) as error:
        log.error("JetStream did not answer for %g s (%s); exiting", READY_TIMEOUT,
                  _problem(error))
        link.close()
        return None, None, process.paced(process.EXIT_FAILED)


def until_ready(attempt, log, stopping=lambda: False):
    """attempt()'s answer, asked again every half second while JetStream does not answer
    (NotReady, or what the link raises), as a starting program waits for it (a cluster
    starting at the same time, a server restarting, a network cut): past READY_TIMEOUT, or
    once stopping() is true, the last error is raised. The first wait is logged, once."""
    deadline = time.monotonic() + READY_TIMEOUT
    waiting_logged = False
    while True:
        try:
            return attempt()
        except (NotReady, *UNAVAILABLE) as error:
            if time.monotonic() > deadline or stopping():
                raise
            if not waiting_logged:
                log.info("waiting for JetStream to answer (%s)", _problem(error))
                waiting_logged = True
            time.sleep(0.5)


def _problem(error):
    return f"{type(error).__name__}: {error}".rstrip(": ")


# (what the setting means, its name in JetStream's stream config)
_CHECKED_STREAM = [
    ("subjects", "subjects"),
    ("storage", "storage"),
    ("replicas", "num_replicas"),
    ("retention", "retention"),
    ("max messages", "max_msgs"),
    ("max bytes", "max_bytes"),
    ("max age", "max_age"),
    ("duplicate window", "duplicate_window"),
    ("max message size", "max_msg_size"),
]
_CHECKED_BUCKET = [
    ("storage", "storage"),
    ("replicas", "num_replicas"),
    ("history", "max_msgs_per_subject"),
    ("max value size", "max_msg_size"),
    ("direct reads", "allow_direct"),
]


class NotReady(Exception):
    """The stream or the bucket has no leader, or too few current replicas, to take writes."""


async def ensure(js, replicas, dedupe_window, log=None):
    """Create the stream and the checkpoint bucket, or check the existing ones, and check
    that both can take writes now (a leader and a majority of current replicas: a cluster
    that has just started may not have them yet). Raises SetupMismatch naming every
    difference, NotReady, or what NATS raised if it cannot answer."""
    wanted = stream_config(replicas, dedupe_window)
    try:
        await js.add_stream(wanted)
    except BadRequestError:
        pass  # exists with another config: the check below names the differences
    info = await js.stream_info(STREAM)
    found_window = info.config.duplicate_window or 0.0
    if found_window < wanted.duplicate_window:
        info.config.duplicate_window = wanted.duplicate_window
        info = await js.update_stream(info.config)
        if log:
            log.warning("stream %s: duplicate window raised from %g s to the dedupe window, "
                        "%g s", STREAM, found_window, wanted.duplicate_window)
    if not info.config.allow_atomic:
        info.config.allow_atomic = True
        info = await js.update_stream(info.config)
        if log:
            log.warning("stream %s: atomic batches allowed now (a request's SDK events are "
                        "stored in one)", STREAM)
    _compare(f"stream {STREAM}", info.config, wanted, _CHECKED_STREAM)
    _check_ready(f"stream {STREAM}", info)

    bucket = bucket_config(replicas)
    try:
        await js.key_value(CHECKPOINT_BUCKET)
    except NotFoundError:
        try:
            await js.create_key_value(bucket)
        except BadRequestError:
            pass  # created meanwhile by another node, perhaps otherwise: checked below
    info = await js.stream_info(CHECKPOINT_BUCKET_STREAM)
    wanted_kv = api.StreamConfig(
        storage=bucket.storage,
        num_replicas=bucket.replicas,
        max_msgs_per_subject=bucket.history,
        max_msg_size=bucket.max_value_size,
        allow_direct=bucket.direct,
    )
    _compare(f"key-value bucket {CHECKPOINT_BUCKET}", info.config, wanted_kv, _CHECKED_BUCKET)
    _check_ready(f"key-value bucket {CHECKPOINT_BUCKET}", info)


async def agree_on_partitions(js, count, log=None):
    """The stream's partitions: recorded now if no program recorded them before (`count` of
    them, or settings.DEFAULT_PARTITION_COUNT if None), else the recorded ones. Raises
    SetupMismatch if `count` differs from the recorded count (see the module's docstring)."""
    bucket = checkpoint_bucket(js)
    found = await _recorded(bucket, PARTITIONS_KEY)
    if found is None:
        # A cluster from before the partition count: its ingest nodes recorded the partitions
        # its SDK events were spread over, and its checkpoints count them.
        wanted = (await _recorded(bucket, LEGACY_PARTITIONS_KEY)
                  or partition_names(count or settings.DEFAULT_PARTITION_COUNT))
        try:
            await bucket.create(PARTITIONS_KEY, ",".join(wanted).encode())
            found = wanted
            if log:
                log.info("stream %s: recorded its %d partitions: %s", STREAM, len(found),
                         ",".join(found))
        except KeyWrongLastSequenceError:  # recorded meanwhile by another program
            found = await _recorded(bucket, PARTITIONS_KEY)
    if count is not None and count != len(found):
        raise SetupMismatch(
            f"stream {STREAM} has {len(found)} partitions ({found[0]} to {found[-1]}), fixed "
            f"when it was created, and this program is set to {count} "
            f"({settings.PREFIX}PARTITION_COUNT): the count of a live stream cannot change, "
            "since each app install's events would move to another partition and its "
            f"sessions be split. Unset {settings.PREFIX}PARTITION_COUNT to use the stream's "
            f"{len(found)}; for more, start a new cluster with the count it needs (it grows by "
            "adding workers, up to one per partition)")
    return found


def recorded_partitions(link):
    """The stream's partitions as recorded, or [] if no program recorded them yet. Raises
    what the link raises."""
    async def read():
        bucket = checkpoint_bucket(link.js)
        return (await _recorded(bucket, PARTITIONS_KEY)
                or await _recorded(bucket, LEGACY_PARTITIONS_KEY) or [])

    return link.call(read(), READY_TIMEOUT)


async def _recorded(bucket, key):
    """The partitions recorded under `key`, or None."""
    try:
        return (await bucket.get(key)).value.decode().split(",")
    except NotFoundError:
        return None


def stream_identity(link):
    """Which stream this is: its name and creation time. A partition checkpoint records it
    (as its fingerprint), so that counts of a stream deleted since are never continued on
    a new one. Raises what the link raises."""
    info = link.call(link.js.stream_info(STREAM), READY_TIMEOUT)
    return f"{STREAM} created {info.created.isoformat() if info.created else 'at an unknown time'}"


def widest_window(link):
    """The stream's duplicate window, in seconds: no SDK message's dedupe window is wider (an
    ingest node with a wider one raises it before it writes; ensure()). Raises what the link
    raises."""
    info = link.call(link.js.stream_info(STREAM), READY_TIMEOUT)
    return int(info.config.duplicate_window or 0)


def current_majority(leader, followers_current, replicas):
    """(how many of a stream's `replicas` are current: its leader, if it has one, and the
    followers caught up with it; whether that is a majority, which acknowledging a write
    needs)."""
    current = (1 if leader else 0) + followers_current
    return current, 2 * current > replicas


def _check_ready(what, info):
    cluster = info.cluster
    if cluster is None:  # a single server, not clustered: its own leader
        return
    current, majority = current_majority(
        cluster.leader, sum(1 for peer in cluster.replicas or [] if peer.current),
        info.config.num_replicas)
    if not cluster.leader or not majority:
        raise NotReady(f"{what} has {'a leader' if cluster.leader else 'no leader'} and "
                       f"{current} of {info.config.num_replicas} replicas current")


def _compare(what, found, wanted, checked):
    differences = [
        f"{meaning} is {getattr(found, name)!r}, not {getattr(wanted, name)!r}"
        for meaning, name in checked
        if _normal(getattr(found, name)) != _normal(getattr(wanted, name))
    ]
    if differences:
        raise SetupMismatch(
            f"{what} exists with other settings than this cluster needs: "
            f"{'; '.join(differences)}. It is left as it is: change it (or the "
            "MINI_ANALYTICS_REPLICAS setting) deliberately, e.g. with the nats CLI"
        )


def _normal(value):
    # The server reports "no limit" as -1 or 0 depending on the field, and durations as floats.
    if value in (None, 0, -1, 0.0, False):
        return None
    return value.value if hasattr(value, "value") else value
