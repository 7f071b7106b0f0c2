"""`python -m app`: the ingest process. Bottle on waitress, appending to state/data1."""

import logging
import signal
import sys

import waitress

from app.api import BATCH_BODY_LIMIT, make_app
from storage import process, settings
from storage.layout import Layout
from storage.lockfile import AlreadyLocked, hold_exclusive_lock
from storage.log_writer import EventLog

log = logging.getLogger("ingest")

def stop_like_sigint(signum, frame):
    # waitress treats KeyboardInterrupt as "shut down": it stops serving and waits (up to
    # 5 s) for the requests in flight to finish. SIGTERM, supervisord's stop signal, would
    # otherwise kill the process with those requests half done (written, never answered).
    raise KeyboardInterrupt


def main():
    process.start_logging()
    # waitress warns "Task queue depth is N" whenever all threads are busy, which under load
    # is every request: the flood costs real CPU and says nothing an operator can act on.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    try:
        host, port = settings.host(), settings.port()
        state_dir, durable, threads = settings.state_dir(), settings.fsync(), settings.threads()
    except settings.ConfigError as error:
        return process.bad_setting("ingest", error)
    layout = Layout(state_dir)

    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        # Held until the process exits: one ingest per state folder, so no other writer can
        # interleave with our appends or our torn-tail repair.
        hold_exclusive_lock(layout.ingest_lock)
        eventlog = EventLog(layout.data1, durable=durable)
    except AlreadyLocked:
        log.error("another ingest process is already running on %s; exiting", state_dir)
        return process.EXIT_FAILED
    except OSError as error:
        log.critical("cannot open data1 in state folder %s: %s; exiting", state_dir, error)
        return process.EXIT_FAILED
    log.info(
        "ingest starting: http://%s:%d state_dir=%s fsync=%s threads=%d data1=%d bytes",
        host, port, state_dir, "on" if durable else "off", threads, eventlog.size,
    )
    try:
        server = waitress.create_server(
            make_app(eventlog, state_dir),
            host=host,
            port=port,
            threads=threads,
            # At or above the app's own largest limit, so an ordinary oversize body gets the
            # app's JSON 413; only far larger ones meet waitress's plain-text 413.
            max_request_body_size=2 * BATCH_BODY_LIMIT,
            max_request_header_size=64 * 1024,
            # Slow or idle clients hold only a connection, never a thread; allow many of them
            # (within the default limit of 1024 open files) and drop the idle ones sooner.
            connection_limit=800,
            channel_timeout=30,
            ident="mini-analytics",
        )
    except OSError as error:
        log.critical("cannot listen on %s:%d: %s; exiting", host, port, error)
        return process.EXIT_FAILED
    signal.signal(signal.SIGTERM, stop_like_sigint)
    signal.signal(signal.SIGINT, stop_like_sigint)  # even where SIGINT was inherited ignored
    log.info("ingest ready on http://%s:%s", host, server.effective_port)
    server.run()  # returns on SIGINT/SIGTERM, once requests in flight are done

    eventlog.sync()  # with fsync off, a clean stop still leaves everything durable
    eventlog.close()
    log.info("ingest stopped")
    return process.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
