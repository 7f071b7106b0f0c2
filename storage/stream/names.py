"""The NATS JetStream backend's names (cluster mode), in one place, as storage/layout.py
holds the state folder's: the stream, its subjects, the key-value bucket and its keys, each
with the module that writes and reads it.

    stream MINI_ANALYTICS, subject mini_analytics.events.<partition>
                      storage/stream/writer.py (ingest)  storage/stream/reader.py (worker)
    key-value bucket mini_analytics_checkpoints, key config.partitions
                      storage/stream/setup.py: the stream's partitions, written by the first
                      program to start, read and checked by every other
    key-value bucket mini_analytics_checkpoints, key read-barrier
                      storage/stream/checkpoint_store.py: written empty before each read of
                      the checkpoints, so that only a leader with a majority answers it
    key-value bucket mini_analytics_checkpoints, keys member.<worker> and lease.<partition>
                      storage/stream/leases.py (worker): a live worker's sign of life, and which
                      worker counts a partition; each renewed by its holder only, taken over
                      by compare-and-set once it lapses
    key-value bucket mini_analytics_checkpoints, key partition.<partition>
                      storage/stream/checkpoint_store.py: one writer per partition (the
                      worker owning it, fenced by compare-and-set); read by the same module
                      (worker: recovery; ingest: read side; `python -m worker status`)
    subject mini_analytics.workers.<partition> (request-reply, nothing stored)
                      answered by the worker owning the partition; asked by the ingest
                      and by `status`, to tell whether that worker is alive
    subjects mini_analytics.series.<partition> and mini_analytics.overview.<partition>
                      (request-reply, nothing stored): answered by the worker owning the
                      partition from its stores (worker/stream_runner.py); asked by the
                      ingest (app/cluster_readside.py)
    message headers Mini-Analytics-Keys, -Ids, -Window and -Received: an SDK message's
                      (storage/stream/sdk_message.py, the format; written by
                      storage/stream/writer.py (ingest), read by storage/stream/reader.py
                      (worker)); Mini-Analytics-Details: the older format's, read only

The bucket is JetStream's stream KV_<bucket> (CHECKPOINT_BUCKET_STREAM), each key's values on
the subject `$KV.<bucket>.<key>` (kv_subject): JetStream's own convention for a key-value
bucket, spelt here only.
"""

STREAM = "MINI_ANALYTICS"
SUBJECT_PREFIX = "mini_analytics.events."
CHECKPOINT_BUCKET = "mini_analytics_checkpoints"
# The stream JetStream keeps the bucket in (its own convention for a key-value bucket).
CHECKPOINT_BUCKET_STREAM = f"KV_{CHECKPOINT_BUCKET}"
CHECKPOINT_KEY_PREFIX = "partition."
# In the same bucket: the stream's partitions (storage/stream/setup.py); the key a cluster
# created before the partition count existed recorded them under; and the workers' signs of
# life and the partitions' leases (storage/stream/leases.py).
PARTITIONS_KEY = "config.partitions"
LEGACY_PARTITIONS_KEY = "config.sdk-partitions"
MEMBER_KEY_PREFIX = "member."
LEASE_KEY_PREFIX = "lease."
# Written (empty) before every read of the checkpoints (storage/stream/checkpoint_store.py).
READ_BARRIER_KEY = "read-barrier"
WORKER_PING_PREFIX = "mini_analytics.workers."
SERIES_QUERY_PREFIX = "mini_analytics.series."
OVERVIEW_QUERY_PREFIX = "mini_analytics.overview."
# The headers of an SDK message (storage/stream/sdk_message.py has the format).
KEYS_HEADER = "Mini-Analytics-Keys"
IDS_HEADER = "Mini-Analytics-Ids"
WINDOW_HEADER = "Mini-Analytics-Window"
RECEIVED_HEADER = "Mini-Analytics-Received"
ENCODING_HEADER = "Mini-Analytics-Encoding"
COLUMNS_HEADER = "Mini-Analytics-Columns"
# The older format's: one SDK event's details item, JSON, on a message of its own.
DETAILS_HEADER = "Mini-Analytics-Details"


def partition_subject(partition):
    return SUBJECT_PREFIX + partition


def checkpoint_key(partition):
    return CHECKPOINT_KEY_PREFIX + partition


def lease_key(partition):
    return LEASE_KEY_PREFIX + partition


def member_key(member):
    return MEMBER_KEY_PREFIX + member


def worker_ping_subject(partition):
    return WORKER_PING_PREFIX + partition


def series_query_subject(partition):
    return SERIES_QUERY_PREFIX + partition


def overview_query_subject(partition):
    return OVERVIEW_QUERY_PREFIX + partition


def kv_subject(key=""):
    """The subject of `key` in the checkpoint bucket (the bucket's own stream stores each
    key's values on it); with no key, the prefix of them all."""
    return f"$KV.{CHECKPOINT_BUCKET}.{key}"
