"""Talking to a real server: one request at a time, a readiness probe, polling with deadlines."""

import http.client
import json
import socket
import time


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


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(port, method, path, body=None, headers=None, timeout=10):
    """One HTTP request on a new connection: (status, parsed JSON body or raw bytes)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        if response.getheader("Content-Type", "").startswith("application/json"):
            data = json.loads(data)
        return response.status, data
    finally:
        conn.close()


def post(port, body, path="/event"):
    return request(port, "POST", path, body)


def answers_http(port):
    """True once something answers HTTP on `port` (any status will do)."""
    try:
        request(port, "GET", "/no-such-page", timeout=1)
        return True
    except OSError:
        return False
