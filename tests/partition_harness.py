"""A cluster whose network can be cut: every connection between its programs goes through a
TCP proxy in the test process (Toxiproxy's model), one per direction and pair, which the
test can cut and heal.

Three "machines" on loopback: machine m runs NATS node nats-m, and a worker, worker-m;
machines 1 and 2 also run an ingest node. NATS node i reaches node j through the proxy
(nats-i, nats-j); a worker or an ingest node reaches each NATS node through a proxy of its
own, its own machine's included, so that a program alone can be cut off too. The servers are
told not to advertise their addresses (to clients or to one another), so nothing goes around
the proxies. The test's own clients (the ledgers, the checker's link) stand outside and are
never cut.

A cut is silent by default: the proxy stops forwarding, holds what it has read, and leaves
new connections unanswered, as a network dropping packets does; healed, everything held
flows on, as TCP retransmits it. A "reset" cut closes the link's connections and refuses new
ones, as a peer's firewall rejecting them does.
"""

import asyncio
import itertools
import json
import shutil
import sys
import threading
import urllib.request

from cluster_harness import stream_leader
from http_client import NO_ANSWER, answers_http, free_port, request, wait_for
from processes import BIN, REPO, service_env

MACHINES = (1, 2, 3)
INGEST_MACHINES = (1, 2)


class Link:
    """One direction of one pair: connections to the proxy's port go on to `target`."""

    def __init__(self, name, target):
        self.name, self.target = name, target
        self.state = "open"  # or "silent", "refusing"
        self.open = asyncio.Event()
        self.open.set()
        self.connections = set()  # (client transport, server transport)


class Proxy:
    """The proxies, on an event loop of their own (a thread). Thread-safe."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.links = {}  # (source, destination) -> Link
        self._servers = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="proxy",
                                        daemon=True)
        self._thread.start()

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def add(self, source, destination, target):
        """A proxy from `source` to `destination` (listening at `target`): its port."""
        async def start():
            link = Link(f"{source}->{destination}", target)
            server = await asyncio.start_server(
                lambda reader, writer: self._serve(link, reader, writer), "127.0.0.1", 0)
            self._servers.append(server)
            self.links[(source, destination)] = link
            return server.sockets[0].getsockname()[1]

        return self._call(start())

    async def _serve(self, link, reader, writer):
        try:
            await self._forward(link, reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()  # the proxy is closing: not an error to report

    async def _forward(self, link, reader, writer):
        if link.state == "refusing":
            writer.transport.abort()
            return
        await link.open.wait()  # a silent link: accepted, and nothing answers
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", link.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer.transport, upstream_writer.transport)
        link.connections.add(pair)
        try:
            await asyncio.gather(self._pipe(link, reader, upstream_writer),
                                 self._pipe(link, upstream_reader, writer))
        finally:
            link.connections.discard(pair)
            for transport in pair:
                transport.abort()

    @staticmethod
    async def _pipe(link, reader, writer):
        try:
            while True:
                await link.open.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await link.open.wait()  # cut meanwhile: held until healed
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()  # and so the other direction ends too

    def cut(self, pairs, how="silent"):
        """Cut each (source, destination) of `pairs` (both directions of each are cut by
        the callers below)."""
        async def cut_all():
            for pair in pairs:
                link = self.links[pair]
                link.state = "silent" if how == "silent" else "refusing"
                link.open.clear()
                if how == "reset":
                    for transports in list(link.connections):
                        for transport in transports:
                            transport.abort()

        self._call(cut_all())

    def heal(self):
        async def heal_all():
            for link in self.links.values():
                link.state = "open"
                link.open.set()

        self._call(heal_all())

    def cut_links(self):
        return sorted(link.name for link in self.links.values() if link.state != "open")

    def close(self):
        async def close_all():
            for server in self._servers:
                server.close()
            for link in self.links.values():
                for transports in list(link.connections):
                    for transport in transports:
                        transport.abort()
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        self._call(close_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class PartitionedCluster:
    """The three machines' programs, started with `procs` (tests/processes.py), under
    `settings` (MINI_ANALYTICS_* by lower-case name)."""

    def __init__(self, procs, root, **settings):
        self.procs, self.root = procs, root
        self.proxy = Proxy()
        self.settings = {"partition_count": 4, "takeover": 3, "interval": 0.2,
                         "publish_timeout": 3, **settings}
        self.partitions = [f"p{n}" for n in range(1, self.settings["partition_count"] + 1)]
        ports = iter(free_ports(len(MACHINES) * 3 + len(INGEST_MACHINES)))
        self.client_port = {m: next(ports) for m in MACHINES}
        self.route_port = {m: next(ports) for m in MACHINES}
        self.monitor_port = {m: next(ports) for m in MACHINES}
        self.http_port = {m: next(ports) for m in INGEST_MACHINES}
        self.route_proxy = {(i, j): self.proxy.add(f"nats-{i}", f"nats-{j}", self.route_port[j])
                            for i, j in itertools.permutations(MACHINES, 2)}
        self.client_proxy = {}
        for program in self.program_names():
            if not program.startswith("nats"):
                for m in MACHINES:
                    self.client_proxy[(program, m)] = self.proxy.add(
                        program, f"nats-{m}", self.client_port[m])
        self.processes = {}

    @staticmethod
    def program_names():
        return ([f"nats-{m}" for m in MACHINES] + [f"ingest-{m}" for m in INGEST_MACHINES]
                + [f"worker-{m}" for m in MACHINES])

    @property
    def servers(self):
        """Direct URLs, for the test's own link: it stands outside the partitions."""
        return [f"nats://127.0.0.1:{self.client_port[m]}" for m in MACHINES]

    def ingest_port(self, n):
        return self.http_port[n]

    def start(self):
        for m in MACHINES:
            self.start_program(f"nats-{m}")
        for m in INGEST_MACHINES:
            self.start_program(f"ingest-{m}")
        for m in MACHINES:
            self.start_program(f"worker-{m}")
        for m in INGEST_MACHINES:
            wait_for(lambda: answers_http(self.http_port[m]), 60, what=f"ingest-{m} to answer")
        wait_for(self.healthy, 90, what="the cluster healthy")

    def start_program(self, program):
        role, m = program.split("-")
        m = int(m)
        if role == "nats":
            routes = ",".join(f"nats://127.0.0.1:{self.route_proxy[(m, j)]}"
                              for j in MACHINES if j != m)
            args = [str(BIN / "nats-server"), "-c", str(REPO / "cluster" / "nats.conf"),
                    "--server_name", program, "-a", "127.0.0.1", "-p", str(self.client_port[m]),
                    "-m", str(self.monitor_port[m]), "--cluster_name", "partitioned",
                    "--cluster", f"nats://127.0.0.1:{self.route_port[m]}", "--routes", routes,
                    # Peers and clients reach this node only through the proxies.
                    "--cluster_advertise", "127.0.0.1:1", "--connect_retries", "0",
                    "--no_advertise=true", "-sd", str(self.root / program)]
            env = service_env(self.root / program)
        else:
            servers = ",".join(f"nats://127.0.0.1:{self.client_proxy[(program, j)]}"
                               for j in MACHINES)
            state = self.root / program
            state.mkdir(exist_ok=True)
            extra = {"port": self.http_port[m]} if role == "ingest" else {}
            env = service_env(state, cluster=servers, ingest_cpu="all", **self.settings,
                              **extra)
            args = [sys.executable, "-m", "app" if role == "ingest" else "worker"]
        self.processes[program] = self.procs.spawn(args, env, program)
        return self.processes[program]

    def kill(self, program):
        process = self.processes[program]
        process.kill()
        process.wait(10)

    def exited(self):
        """{program: exit code} of the programs that exited unasked."""
        return {name: process.returncode for name, process in self.processes.items()
                if process.poll() is not None}

    def log(self, program):
        return (self.procs.log_dir / f"{program}.log").read_text(errors="replace")

    # The nemeses' cuts, between machines (every link between their programs, both ways) or
    # between one program and every NATS node.

    def links_between(self, a, b):
        pairs = [(f"nats-{a}", f"nats-{b}"), (f"nats-{b}", f"nats-{a}")]
        for program in self.program_names():
            if program.startswith("nats"):
                continue
            home = int(program.split("-")[1])
            if home == a:
                pairs.append((program, f"nats-{b}"))
            elif home == b:
                pairs.append((program, f"nats-{a}"))
        return pairs

    def cut_machines(self, a, b, how="silent"):
        self.proxy.cut(self.links_between(a, b), how)

    def isolate(self, machine, how="silent"):
        for other in MACHINES:
            if other != machine:
                self.cut_machines(machine, other, how)

    def cut_off(self, program, how="silent"):
        """Cut one program (an ingest node or a worker) from every NATS node."""
        self.proxy.cut([(program, f"nats-{m}") for m in MACHINES], how)

    def heal(self):
        self.proxy.heal()

    # What the checker reads, from outside.

    def monitor(self, m, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port[m]}{path}",
                                    timeout=1) as answer:
            return json.load(answer)

    def stream_leader(self, among=MACHINES):
        """The stream leader's name (nats-N) as the first of the nodes `among` that knows
        one reports it, or None."""
        return stream_leader(self.monitor, among)

    def stats(self):
        """/stats from the first ingest node that answers it, or None."""
        for m in INGEST_MACHINES:
            try:
                status, stats = request(self.http_port[m], "GET", "/stats", timeout=10)
            except NO_ANSWER:
                continue
            if status == 200:
                return stats
        return None

    def healthy(self):
        """A stream leader, every replica current, every partition counted by a worker."""
        stats = self.stats()
        return bool(stats and stats["stream"]["leader"]
                    and all(peer["current"] for peer in stats["stream"]["replicas"])
                    and all(entry["worker"]["state"] == "running"
                            for entry in stats["partitions"]))

    def owners(self):
        stats = self.stats()
        return {entry["partition"]: entry["worker"]["owner"]
                for entry in stats["partitions"]} if stats else {}

    def counts(self, n=1, timeout=60):
        status, body = wait_for(
            lambda: (answer := request(self.http_port[n], "GET", "/counts"))[0] == 200
            and answer, timeout, what=f"/counts on ingest-{n}")
        return body

    def close(self):
        self.proxy.heal()
        self.proxy.close()
        shutil.rmtree(self.root, ignore_errors=True)


def free_ports(count):
    ports = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)
