"""Everything the engine keeps, and the rules both of its programs share.

The ingest (app/) and the worker (worker/) never import each other; both import this package.

    layout.py            every file name in the state folder, with its writer and its reader
    checkpoint.py        data2's format, versioned (both backends' checkpoints)
    backend.py           what a backend provides (an event log, a checkpoint store), declared
    sdk_event.py         the SDKs' events: the fields the ingest checks and the worker counts
    log/                 the file backend (one machine): data1, its details and dedupe index,
                         data2's store
    stream/              the NATS JetStream backend (cluster mode); the only package that
                         imports nats-py, and stream/names.py names its subjects and keys
    views/               the derived stores (counts over time, the overview), kept by the
                         worker and read by the ingest
    durable.py           write temp -> fsync -> rename -> fsync folder
    lockfile.py          one process per role per state folder (flock), and its probe
    settings.py          every MINI_ANALYTICS_* setting, parsed and checked
    process.py           log format, exit codes, bad-setting report: the same for every program
    stop_on_bad_setup.py supervisord's event listener: a program exiting 2 ends the run

docs/design.md's layout says what each module of the three packages holds.
"""
