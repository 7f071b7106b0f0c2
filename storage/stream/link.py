"""One connection to the NATS cluster, for code that is not asyncio: waitress's request
threads and the worker's loop.

nats-py is asyncio-only. A Link runs one event loop in a thread of its own, connects there,
and runs coroutines on it for the calling thread: `link.call(coroutine, timeout)`. Every
NATS operation of a process goes through its one Link, so they share one connection (and
one reconnect, should a node die: nats-py moves to another server in the list by itself).

Only the cluster mode imports this module (and with it nats-py).
"""

import asyncio
import concurrent.futures
import logging
import threading

import nats
import nats.errors
import nats.js.errors

log = logging.getLogger("nats")

CONNECT_TIMEOUT = 5.0
# A connection that goes silent (its server cut off by the network, not closed) is noticed
# when this many pings in a row, one every PING_INTERVAL seconds, go unanswered; then the
# link moves to another server. nats-py's default, 2 minutes, would leave an ingest node
# refusing writes, or a worker unable to renew its leases, for that long.
PING_INTERVAL = 2
MAX_OUTSTANDING_PINGS = 3
# How long one JetStream API request may take. A leader election takes about 7 s (measured in
# docs/cluster.md); callers that must ride one out retry.
REQUEST_TIMEOUT = 5.0

# What a NATS operation raises when the cluster cannot answer (now): no server reachable, no
# stream leader (no quorum), a request not answered in time. Callers report these as "NATS
# unavailable" rather than as bugs.
UNAVAILABLE = (
    nats.errors.Error,  # includes timeouts, no responders, connection closed
    nats.js.errors.Error,  # includes the JetStream API's own errors
    asyncio.TimeoutError,
    concurrent.futures.TimeoutError,
    OSError,
)


class Link:
    def __init__(self, servers, name):
        """Connect to the first reachable server of `servers` (nats:// URLs); `name` is how
        the servers' monitoring shows this client. Raises one of UNAVAILABLE if none answers.
        """
        self.servers = servers
        self.closing = False
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="nats", daemon=True)
        self._thread.start()
        try:
            self.nc = self.call(self._connect(name), CONNECT_TIMEOUT + 1)
        except BaseException:
            self._stop_loop()
            raise
        self.js = self.nc.jetstream(timeout=REQUEST_TIMEOUT)

    async def _connect(self, name):
        async def disconnected():
            if not self.closing:
                log.warning("disconnected from NATS; reconnecting")

        async def reconnected():
            log.info("reconnected to NATS at %s", self.nc.connected_url.netloc)

        async def error(problem):
            log.warning("NATS connection: %s", problem or type(problem).__name__)

        return await nats.connect(
            servers=self.servers,
            name=name,
            connect_timeout=CONNECT_TIMEOUT,
            # Once connected, never give up: a whole-cluster restart must not need ours.
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            ping_interval=PING_INTERVAL,
            max_outstanding_pings=MAX_OUTSTANDING_PINGS,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )

    @property
    def connected(self):
        return self.nc.is_connected

    def call(self, coroutine, timeout):
        """Run `coroutine` on the link's loop and return its result; raise what it raised,
        or concurrent.futures.TimeoutError after `timeout` seconds (it is then cancelled)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def close(self):
        self.closing = True
        try:
            self.call(self.nc.drain(), REQUEST_TIMEOUT)
        except UNAVAILABLE:
            pass  # closing: whatever was in flight is not waited for
        self._stop_loop()

    def _stop_loop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
