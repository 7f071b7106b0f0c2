"""The file backend, the embedded default (one machine): the event log is data1, with the
SDK events' details (data1.details), their dedupe index (data1.seen) and the time index
(data1.timeindex) beside it, and the checkpoint is data2. storage/backend.py declares what
it provides; storage/layout.py names every file.

    format.py            data1's format
    writer.py            data1's writer (the ingest): EventLog
    reader.py            data1's reader (the worker)
    checkpoint_store.py  data2's writer and reader: CheckpointStore
    details.py           data1.details: its format, writer and reader
    seen_index.py        data1.seen/: the dedupe window's event ids (sorted runs)
    time_index.py        data1.timeindex: its format, writer and reader
"""
