"""`python -m app`: the ingest process. Bottle on waitress, appending to state/data1 (in
cluster mode, with MINI_ANALYTICS_CLUSTER set, to its partition of the NATS JetStream stream).

Takes no arguments; every setting is a MINI_ANALYTICS_* environment variable, listed below
(the README's configuration table says more of each).
"""

import json
import logging
import sys
import time

import waitress
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask, WSGITask

from app.access import Access, BadToken, Tokens, digest
from app.projects import BadProjects, Projects
from app.admission import Admission
from app.api import BATCH_BODY_LIMIT, HOLD_ANSWER, make_app
from app.readside import FileReadSide
from storage import process, settings
from storage.layout import Layout
from storage.lockfile import hold_exclusive_lock
from storage.log.writer import EventLog

log = logging.getLogger("ingest")


# Slow and idle connections (docs/security.md): a request must arrive whole within this long
# of its first byte, or its connection is closed (a client sending a byte every few seconds,
# slowloris, would otherwise hold its place for as long as it likes) ...
REQUEST_READ_TIMEOUT = 10
# ... a connection with nothing under way is closed after this long ...
IDLE_TIMEOUT = 15
# ... and while every place is taken, the connections idle longest are closed, down to this
# share of the limit, so that a new client is let in within a second (CLEANUP_INTERVAL)
# rather than wait in the kernel's backlog for as long as the others hold on.
CONNECTION_LIMIT = 800
ROOM_AT_THE_LIMIT = 0.9
CLEANUP_INTERVAL = 1


def maintenance(server, now):
    """The server's once-a-second upkeep (waitress calls it every cleanup_interval): close
    the connections past their time, and make room when the server is full. A connection is
    closed gracefully (will_close), never while a request is served or an answer is owed."""
    channels = list(server.active_channels.values())
    idle = []
    for channel in channels:
        if channel.owing():
            continue
        if channel.request is not None:  # a request being read
            if now - channel.request_began > REQUEST_READ_TIMEOUT:
                channel.will_close = True
                server.slow_closed += 1
            else:
                idle.append((channel.request_began, channel))
        elif now - channel.last_activity > IDLE_TIMEOUT:
            channel.will_close = True
        else:
            idle.append((channel.last_activity, channel))
    excess = len(channels) - int(server.adj.connection_limit * ROOM_AT_THE_LIMIT)
    if len(channels) >= server.adj.connection_limit and excess > 0:
        # Full: the ones that have waited longest without a whole request go first.
        idle.sort(key=lambda pair: pair[0])
        for _, channel in idle[:excess]:
            channel.will_close = True
        server.evicted += min(excess, len(idle))
        if now - server.eviction_logged > 60:
            log.warning("connections: all %d places taken; closed %d of the connections "
                        "idle or slow the longest (%d so far; %d closed for a request not "
                        "whole within %d s)", server.adj.connection_limit,
                        min(excess, len(idle)), server.evicted, server.slow_closed,
                        REQUEST_READ_TIMEOUT)
            server.eviction_logged = now


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


class HoldingTask(WSGITask):
    """A request whose write may hold its answer back: see Channel."""

    def get_environment(self):
        environ = super().get_environment()
        environ[HOLD_ANSWER] = self.channel.hold
        return environ


class Channel(HTTPChannel):
    """A connection whose answers wait for the writes they acknowledge to be durable, without
    a thread waiting for them (storage/log/writer.py's group commit).

    A write hands its Ticket to hold(); until ticket.durable(), nothing more is sent on the
    connection: its thread serves the next request meanwhile, and the server's loop sends
    the answer once a sync covered it (the log's on_durable wakes the loop). Tickets on one
    connection only ever grow (a log's end only grows, and its requests run one at a time),
    so the last one covers every answer before it. Bytes leave only through _flush_some, so
    holding it back there holds everything, whichever thread flushes.
    """

    error_task_class = JsonErrorTask
    task_class = HoldingTask
    held = None  # the Ticket of the last write on this connection; never cleared (no race)
    request_began = 0.0  # when the first byte of the request being read arrived (time.time)

    def received(self, data):
        if data and self.request is None:
            self.request_began = time.time()
        return super().received(data)

    def owing(self):
        """True while a request is served here or its answer is still to send (or held):
        such a connection is never closed by maintenance()."""
        return bool(self.requests or self.total_outbufs_len or self._holding())

    def hold(self, ticket):
        self.held = ticket

    def _holding(self):
        held = self.held
        return held is not None and not held.durable()

    def writable(self):
        # Asked of every connection on every turn of the loop: waitress's own cheap test
        # first (HTTPChannel.writable: output to send, or a close due), then the hold.
        return ((self.total_outbufs_len or self.will_close or self.close_when_flushed)
                and not self._holding())

    def _flush_some(self, do_close=True):
        if self._holding():
            return False
        return super()._flush_some(do_close)


def load_access(write, read, projects_file=None):
    """Access from the settings' (tokens, file) pairs and projects file; ConfigError if a
    file is unusable."""
    kinds = {}
    for kind, (tokens, path) in (("write", write), ("read", read)):
        try:
            kinds[kind] = Tokens(kind, tokens, path)
        except (OSError, BadToken) as problem:
            raise settings.ConfigError(
                f"{settings.PREFIX}{kind.upper()}_TOKENS_FILE {path}: {problem}") from None
    projects = None
    if projects_file is not None:
        try:
            projects = Projects(projects_file, digest,
                                lambda: kinds["write"].digests() | kinds["read"].digests())
        except (OSError, UnicodeError, BadProjects) as problem:
            raise settings.ConfigError(
                f"{settings.PREFIX}PROJECTS_FILE {projects_file}: {problem}") from None
    return Access(kinds["write"], kinds["read"], projects)


def describe(access, kind):
    tokens = access.write if kind == "write" else access.read
    if not access.required(kind):
        return "open"
    held = ", ".join(tokens.labels()) or "none"
    whose = " in the default project" if access.projects else ""
    return f"need a token ({len(tokens)}: {held}{whose})"


def serve(*, host, port, threads, state_dir, durable, stalled_after, cpu, minute_retention,
          dedupe_window, access, trusted_proxy, overview_store="sqlite", cluster=None):
    """Serve the API until SIGTERM/SIGINT; return the exit code. `cluster`, in cluster mode,
    is (NATS server URLs, the partition count asked for or None, replicas, publish
    timeout)."""
    # Not in cluster mode: there an answer waits for NATS servers, which may share the core,
    # and an ingest thread woken by their acknowledgement would wait out their time slice
    # (bench cluster: p99 of single events 12 -> 50 ms).
    process.place_on_cpus("ingest", cpu, batch=cluster is None)
    process.limit_malloc_arenas("ingest")
    process.raise_open_files_limit("ingest")
    log.info("access: writes %s; reads %s%s%s", describe(access, "write"),
             describe(access, "read"),
             f"; {len(access.projects.projects)} projects from {access.projects.path}"
             if access.projects else "",
             f"; client addresses from {trusted_proxy}'s X-Forwarded-For" if trusted_proxy
             else "")
    server_settings = {"host": host, "port": port, "threads": threads, "access": access,
                       "trusted_proxy": trusted_proxy}
    if cluster:
        return serve_cluster(stalled_after=stalled_after, dedupe_window=dedupe_window,
                             cluster=cluster, **server_settings)
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
    admission = Admission(eventlog, threads, access)
    read_side = FileReadSide(eventlog, state_dir, stalled_after,
                             worker_answers=overview_store == "duckdb")
    app = make_app(eventlog, read_side, minute_retention, access, admission)
    code = run_server(app, eventlog, admission, **server_settings)
    eventlog.close()
    log.info("ingest stopped")
    return code


def serve_cluster(*, host, port, threads, stalled_after, dedupe_window, cluster, access,
                  trusted_proxy):
    # Imported here: only cluster mode imports nats-py.
    from app.cluster_readside import ClusterReadSide
    from storage.stream import setup as stream_setup
    from storage.stream.writer import StreamLog

    servers, partition_count, replicas, publish_timeout = cluster
    log.info("ingest starting in cluster mode: http://%s:%d servers=%s replicas=%d threads=%d",
             host, port, ",".join(servers), replicas, threads)
    link, partitions, failed = stream_setup.connect(servers, "ingest", replicas, dedupe_window,
                                                    log, partition_count)
    if link is None:
        return failed
    log.info("ingest: events go to the stream's %d partitions (%s to %s)", len(partitions),
             partitions[0], partitions[-1])
    eventlog = StreamLog(link, partitions, publish_timeout, dedupe_window)
    admission = Admission(eventlog, threads, access)
    app = make_app(eventlog, ClusterReadSide(link, stalled_after, partitions), access=access,
                   admission=admission)
    code = run_server(app, eventlog, admission, host=host, port=port, threads=threads,
                      access=access, trusted_proxy=trusted_proxy)  # as on one machine
    link.close()
    log.info("ingest stopped")
    return code


def create_server(app, eventlog, connections, *, host, port, threads, trusted_proxy=None):
    """The ingest's waitress server (not yet serving): Channel's connections, woken by the
    log after each sync. `connections` is the dict of the sockets its loop watches (waitress
    fills it). Raises OSError if it cannot listen."""
    proxy = {}
    if trusted_proxy:
        # REMOTE_ADDR becomes the client the proxy names: the device a share is counted for.
        proxy = {"trusted_proxy": trusted_proxy, "trusted_proxy_count": 1,
                 "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"},
                 "clear_untrusted_proxy_headers": True}
    server = waitress.create_server(
        app,
        map=connections,
        host=host,
        port=port,
        threads=threads,
        **proxy,
        # At or above the app's own largest limit, so an ordinary oversize body gets the
        # app's 413 naming the route's limit; a larger one gets JsonErrorTask's, sent
        # before the body is read.
        max_request_body_size=2 * BATCH_BODY_LIMIT,
        max_request_header_size=64 * 1024,
        # Slow or idle clients hold only a connection, never a thread; allow many of them
        # (within the usual soft limit of 1024 open files, which the ingest raises besides:
        # storage/process.raise_open_files_limit). maintenance() (above) closes the slow and
        # the idle ones, and makes room when all places are taken.
        connection_limit=CONNECTION_LIMIT,
        # poll(), not select(): select() fails on a descriptor past 1023, which an ingest
        # holding its connections and data1.seen's runs may have.
        asyncore_use_poll=True,
        channel_timeout=IDLE_TIMEOUT,
        cleanup_interval=CLEANUP_INTERVAL,
        ident="mini-analytics",
    )
    server.channel_class = Channel
    server.evicted = server.slow_closed = 0
    server.eviction_logged = 0.0
    server.maintenance = lambda now: maintenance(server, now)
    # After each sync, the loop looks again at the connections whose answers it holds.
    eventlog.on_durable = server.pull_trigger
    return server


def run_server(app, eventlog, admission, *, host, port, threads, access, trusted_proxy):
    connections = {}
    try:
        server = create_server(app, eventlog, connections, host=host, port=port,
                               threads=threads, trusted_proxy=trusted_proxy)
    except OSError as error:
        # Most often the port is taken by another program: restarting cannot cure that.
        return process.bad_setup(log, f"cannot listen on {host}:{port}: {error}")
    # Requests read and waiting for a thread: what tells admission the ingest is behind.
    admission.waiting = lambda: len(server.task_dispatcher.queue)
    signals = process.Signals(hangup=True)
    SignalWakeup(signals, connections)
    log.info("ingest ready on http://%s:%s", host, server.effective_port)
    serve_until_stopped(server, connections, signals, access)
    held = with_answers_to_send(connections)
    log.info("ingest stopping: a last sync, then the answers held for it (%d)", len(held))
    eventlog.sync()  # with fsync off too, a clean stop leaves everything durable
    send_held_answers(held)
    return process.EXIT_OK


class SignalWakeup(wasyncore.file_dispatcher):
    """The signals' wakeup pipe in the server's loop: a signal ends the loop's wait."""

    def __init__(self, signals, connections):
        super().__init__(signals.wakeup, connections)  # watched through a dup of it
        self.signals = signals

    def writable(self):
        return False

    def handle_read(self):
        self.signals.drain()


def serve_until_stopped(server, connections, signals, access):
    """Run the server's loop until SIGTERM or SIGINT, then let the requests in flight finish
    (up to 5 s, as waitress's own stop does).

    The signals act only between two turns of the loop, never inside one (storage/process.py's
    Signals says what that prevents). SIGHUP reads the token files again (they are also looked
    at once a second)."""
    while not signals.stop:
        wasyncore.loop(timeout=server.adj.asyncore_loop_timeout, map=connections,
                       use_poll=server.adj.asyncore_use_poll, count=1)
        if signals.hangup:
            signals.hangup = False
            access.reload()
    server.task_dispatcher.shutdown()


def with_answers_to_send(connections):
    """Those of the loop's `connections` (by socket) that are HTTP connections still open with
    output not yet sent."""
    return {fd: c for fd, c in connections.items()
            if isinstance(c, Channel) and c.connected and c.total_outbufs_len}


def send_held_answers(held, timeout=5.0):
    """Send the answers the server's loop held for a sync when it stopped (`held`: their
    connections by socket): their events are durable now, and a client left without its
    answer would send them again. For at most `timeout` seconds; a connection that takes
    nothing is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = with_answers_to_send(held)
        if not held:
            return
        # A connection with an answer to send reads no new request (HTTPChannel.readable).
        wasyncore.loop(timeout=0.05, map=held, count=1)


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
            "overview_store": settings.overview_store(),
            "access": load_access(settings.tokens("WRITE"), settings.tokens("READ"),
                                  settings.projects_file()),
            "trusted_proxy": settings.trusted_proxy(),
        }
        if not settings.is_loopback(config["host"]) and not config["access"].required("write"):
            raise settings.ConfigError(
                f"{settings.PREFIX}HOST={config['host']} takes events from anyone who can reach "
                f"it, and no write token is set: set {settings.PREFIX}WRITE_TOKENS (or "
                f"{settings.PREFIX}WRITE_TOKENS_FILE), or listen on 127.0.0.1 behind a proxy")
        servers = settings.cluster()
        if servers:
            config["cluster"] = (servers, settings.partition_count(), settings.replicas(),
                                 settings.publish_timeout())
    except settings.ConfigError as error:
        return process.bad_setting("ingest", error)
    return process.run_in_state_folder("ingest", config["state_dir"], lambda: serve(**config))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
