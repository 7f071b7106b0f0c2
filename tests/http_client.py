"""Talking to a real server: one request at a time, a readiness probe, polling with deadlines."""

import http.client
import json
import random
import socket
import time

# What a request to a server that is down, or killed mid-answer, raises: a refused or reset
# connection is an OSError, a cut answer (IncompleteRead, BadStatusLine) is not.
NO_ANSWER = (OSError, http.client.HTTPException)


def wait_for(predicate, timeout=15.0, what="condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def first_ephemeral_port():
    """Where the kernel starts picking clients' source ports."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


# Test servers listen below the ephemeral range. A probe that connects to a port nobody
# listens on yet can otherwise be given that same port as its own source port, connect to
# itself, and hold the port the server is about to bind (TCP's simultaneous open).
PORTS = range(10_000, min(first_ephemeral_port(), 30_000))


def bindable(ports):
    """True if every one of `ports` can be bound on 127.0.0.1 now."""
    sockets = []
    try:
        for port in ports:
            sock = socket.socket()
            sockets.append(sock)
            sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        for sock in sockets:
            sock.close()


def free_port():
    """A port free now, below the ephemeral range."""
    for _ in range(1000):
        port = random.choice(PORTS)
        if bindable([port]):
            return port
    raise AssertionError("no free port below the ephemeral range")


def request(port, method, path, body=None, headers=None, timeout=10, with_headers=False):
    """One HTTP request on a new connection: (status, parsed JSON body or raw bytes), and
    the answer's headers (a dict) too `with_headers`."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        if response.getheader("Content-Type", "").startswith("application/json"):
            data = json.loads(data)
        if with_headers:
            return response.status, data, dict(response.getheaders())
        return response.status, data
    finally:
        conn.close()


def post(port, body, path="/event", headers=None):
    return request(port, "POST", path, body, headers)


def answers_http(port):
    """True once something answers HTTP on `port` (any status will do)."""
    try:
        request(port, "GET", "/no-such-page", timeout=1)
        return True
    except NO_ANSWER:
        return False
