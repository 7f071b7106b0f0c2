"""`python -m app`: the ingest process. Bottle on waitress, appending to state/data1 (in
cluster mode, with MINI_ANALYTICS_CLUSTER set, to its partition of the NATS JetStream stream).

Takes no arguments; every setting is a MINI_ANALYTICS_* environment variable, listed below
(the README's configuration table says more of each).
"""

import json
import logging
import signal
import sys

import waitress
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

from app.api import BATCH_BODY_LIMIT, make_app
from app.readside import FileReadSide
from storage import process, settings
from storage.layout import Layout
from storage.lockfile import hold_exclusive_lock
from storage.log_writer import EventLog

log = logging.getLogger("ingest")


def stop_like_sigint(signum, frame):
    # waitress treats KeyboardInterrupt as "shut down": it stops serving and waits (up to
    # 5 s) for the requests in flight to finish. SIGTERM, supervisord's stop signal, would
    # otherwise kill the process with those requests half done (written, never answered).
    raise KeyboardInterrupt


class JsonErrorTask(ErrorTask):
    """waitress's own error answers (a body over its limit, headers too large, a malformed
    request) in the API's JSON shape rather than plain text.

    waitress sends them before the app runs, straight from the request's headers: a body far
    over the limit is refused at once and never read into memory.
    """

    def execute(self):
        error = self.request.error
        body = json.dumps({"error": f"{error.reason}: {error.body}"}).encode() + b"\n"
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class Channel(HTTPChannel):
    error_task_class = JsonErrorTask


def serve(*, host, port, threads, state_dir, durable, stalled_after, cpu, minute_retention,
          dedupe_window, cluster=None):
    """Serve the API until SIGTERM/SIGINT; return the exit code. `cluster`, in cluster mode,
    is (NATS server URLs, this node's partition, replicas, publish timeout)."""
    process.place_on_cpus("ingest", cpu)
    if cluster:
        return serve_cluster(host=host, port=port, threads=threads, stalled_after=stalled_after,
                             dedupe_window=dedupe_window, cluster=cluster)
    layout = Layout(state_dir)
    # Held until the process exits: one ingest per state folder, so no other writer can
    # interleave with our appends or our torn-tail repair.
    hold_exclusive_lock(layout.ingest_lock)
    eventlog = EventLog(layout.data1, durable=durable, time_index=layout.time_index,
                        details=layout.details, seen=layout.seen, dedupe_window=dedupe_window,
                        set_aside=layout.set_aside)
    log.info(
        "ingest starting: http://%s:%d state_dir=%s fsync=%s threads=%d dedupe_window=%ds "
        "data1=%d bytes", host, port, state_dir, "on" if durable else "off", threads,
        dedupe_window, eventlog.size,
    )
    app = make_app(eventlog, FileReadSide(eventlog, state_dir, stalled_after), minute_retention)
    code = run_server(app, host, port, threads)
    eventlog.sync()  # with fsync off, a clean stop still leaves everything durable
    eventlog.close()
    log.info("ingest stopped")
    return code


def serve_cluster(*, host, port, threads, stalled_after, dedupe_window, cluster):
    # Imported here: only cluster mode imports nats-py.
    from app.cluster_readside import ClusterReadSide
    from storage import stream_setup
    from storage.stream_writer import StreamLog

    servers, partition, replicas, publish_timeout = cluster
    log.info("ingest starting in cluster mode: http://%s:%d partition=%s servers=%s "
             "replicas=%d threads=%d", host, port, partition, ",".join(servers), replicas, threads)
    link, failed = stream_setup.connect(servers, f"ingest {partition}", replicas,
                                        dedupe_window, log)
    if link is None:
        return failed
    eventlog = StreamLog(link, partition, publish_timeout)
    code = run_server(make_app(eventlog, ClusterReadSide(link, stalled_after)), host, port,
                      threads)
    link.close()
    log.info("ingest stopped")
    return code


def run_server(app, host, port, threads):
    try:
        server = waitress.create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            # At or above the app's own largest limit, so an ordinary oversize body gets the
            # app's 413 naming the route's limit; a larger one gets JsonErrorTask's, sent
            # before the body is read.
            max_request_body_size=2 * BATCH_BODY_LIMIT,
            max_request_header_size=64 * 1024,
            # Slow or idle clients hold only a connection, never a thread; allow many of them
            # (within the default limit of 1024 open files) and drop the idle ones sooner.
            connection_limit=800,
            channel_timeout=30,
            ident="mini-analytics",
        )
    except OSError as error:
        # Most often the port is taken by another program: restarting cannot cure that.
        return process.bad_setup(log, f"cannot listen on {host}:{port}: {error}")
    server.channel_class = Channel
    signal.signal(signal.SIGTERM, stop_like_sigint)
    signal.signal(signal.SIGINT, stop_like_sigint)  # even where SIGINT was inherited ignored
    log.info("ingest ready on http://%s:%s", host, server.effective_port)
    server.run()  # returns on SIGINT/SIGTERM, once requests in flight are done
    return process.EXIT_OK


def main(argv):
    usage = f"{__doc__.strip()}\n\n{settings.help_table()}"
    if argv in (["-h"], ["--help"]):
        print(usage)
        return process.EXIT_OK
    if argv:
        print(f"python -m app takes no arguments, got {' '.join(argv)!r}\n\n{usage}",
              file=sys.stderr)
        return process.EXIT_BAD_SETUP
    try:
        state_dir = settings.state_dir()
    except settings.ConfigError as error:
        process.start_logging("ingest")
        return process.bad_setting("ingest", error)
    process.start_logging("ingest", state_dir)
    # waitress warns "Task queue depth is N" whenever all threads are busy, which under load
    # is every request: the flood costs real CPU and says nothing an operator can act on.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    try:
        config = {
            "host": settings.host(),
            "port": settings.port(),
            "threads": settings.threads(),
            "state_dir": state_dir,
            "durable": settings.fsync(),
            "stalled_after": settings.stalled_after(),
            "cpu": settings.ingest_cpu(),
            "minute_retention": settings.minute_retention(),
            "dedupe_window": settings.dedupe_window(),
        }
        servers = settings.cluster()
        if servers:
            config["cluster"] = (servers, settings.partition(), settings.replicas(),
                                 settings.publish_timeout())
    except settings.ConfigError as error:
        return process.bad_setting("ingest", error)
    return process.run_in_state_folder("ingest", config["state_dir"], lambda: serve(**config))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
