"""The derived stores: what the worker counts beside the checkpoint, each a SQLite file it
alone writes, committed with its position in the log, and read by the ingest (in cluster
mode, one per partition, read through the worker that owns it).

    series_store.py      counts over time (series.sqlite3)
    overview_store.py    the experience overview and flows (overview.sqlite3)
    sketches.py          distinct people (exact sets, then HLL) and duration histograms
    derived_store.py     what the two stores share: creation, version check, set aside,
                         per-thread readers
"""
