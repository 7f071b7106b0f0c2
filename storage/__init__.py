"""Everything the engine keeps on disk, and the rules both of its programs share.

The ingest (app/) and the worker (worker/) never import each other; both import this package.

    layout.py            every file name in the state folder, with its writer and its reader
    log_format.py        data1's format
    log_writer.py        data1's writer (the ingest): one write per append, group-commit fsync
    log_reader.py        data1's reader (the worker): complete tokens from an offset
    checkpoint.py        data2's format, versioned
    checkpoint_store.py  data2's writer and reader: atomic durable commit, load, set aside
    durable.py           write temp -> fsync -> rename -> fsync folder
    lockfile.py          one process per role per state folder (flock), and its probe
    settings.py          every MINI_ANALYTICS_* setting, parsed and checked
    process.py           log format, exit codes, bad-setting report: the same for every program
    stop_on_bad_setup.py supervisord's event listener: a program exiting 2 ends the run
    series_store.py, time_index.py, and the cluster mode's stream_*.py, nats_link.py,
    cluster_state.py: see docs/design.md's layout
"""
