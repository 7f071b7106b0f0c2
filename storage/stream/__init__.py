"""The NATS JetStream backend (cluster mode): the event log is a replicated stream cut into
partitions, and each partition's checkpoint is a key in a replicated key-value bucket,
committed by compare-and-set. storage/backend.py declares what it provides. This is the
only package that imports nats-py, and names.py the only module that names the stream's
subjects and the bucket's keys.

    names.py             the stream, its subjects, the bucket and its keys
    reads.py             the worker reads' wire format (questions and answers)
    link.py              one NATS connection on its own event loop thread
    setup.py             the stream, the bucket and its partitions, created or checked
    writer.py            the stream's writer (the ingest): StreamLog
    reader.py            a partition's reader (the worker), from a sequence
    checkpoint_store.py  a partition's checkpoint: StreamCheckpointStore
    leases.py            which worker counts which partition
    state.py             partitions, lag, workers, quorum (/stats, `status`)
"""
