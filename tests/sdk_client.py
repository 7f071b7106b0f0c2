"""A simulated Judo SDK: the SDKs' queue rules, with a device-side ledger of what was viewed.

Each device queues its events (at most 1,000, as the SDKs' queues) and sends the oldest 100
in a POST /batch?apiVersion=2. On a 2xx the chunk leaves the queue; on a 4xx it is dropped
for good (the iOS rule, the stricter of the two); on a 5xx, a timeout or a broken connection
it stays, to be sent again with the same event ids. Now and then the device cuts the
connection as soon as its request has gone out, never reading the answer.
"""

import collections
import datetime
import http.client
import json
import random
import socket
import threading
import time

from bench.sdk_shapes import AndroidDevice, IosDevice

QUEUE_LIMIT = 1000
CHUNK = 100


class SimulatedSdks:
    """`devices` app installs, each on its own thread, posting to `ports` (one port, or a list:
    each request to one of them at random, so a retry often reaches another node)."""

    def __init__(self, ports, devices=8, experiences=range(1, 41), cut_share=0.1, seed=None,
                 token=None):
        self.ports = [ports] if isinstance(ports, int) else list(ports)
        self.token = token  # sent as Judo-Access-Token, as the SDKs send the app's token
        self.devices = devices
        self.experiences = list(experiences)
        self.cut_share = cut_share
        self.rng = random.Random(seed)
        self.viewed = collections.Counter()  # the ledger: screen views queued, per experience
        self.event_ids = set()  # every event queued
        self.dropped_for_4xx = []  # (status, answer): must stay empty
        self.answers = collections.Counter()  # "202", "503", "timeout", "cut", ...
        self.duplicates_answered = 0
        self._lock = threading.Lock()
        self._generating = threading.Event()
        self._stopping = threading.Event()
        self._queues = []
        self._threads = []

    def __enter__(self):
        self._generating.set()
        for number in range(self.devices):
            device = IosDevice() if number % 2 else AndroidDevice()
            queue = collections.deque()
            self._queues.append(queue)
            thread = threading.Thread(target=self._run, args=(device, queue,
                                                              random.Random(self.rng.random())),
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop_viewing(self):
        """No new events from now on; the queues still drain."""
        self._generating.clear()

    def drained(self):
        return not self._generating.is_set() and not any(self._queues)

    def __exit__(self, *exc):
        self._generating.clear()
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _view(self, device, queue, rng):
        while len(queue) < QUEUE_LIMIT and rng.random() < 0.97:
            moment = datetime.datetime.now(datetime.timezone.utc)
            if rng.random() < 0.03:
                event = device.identify(moment, f"user-{rng.randrange(1000)}", {"n": 1})
            else:
                experience = rng.choice(self.experiences)
                event = device.screen(moment, experience, id=f"s{rng.randrange(9)}")
                with self._lock:
                    self.viewed[experience] += 1
            with self._lock:
                self.event_ids.add(event["id"])
            queue.append(event)
            if len(queue) >= 20:  # the SDKs flush once 20 events wait
                break

    def _run(self, device, queue, rng):
        while not self._stopping.is_set():
            if self._generating.is_set():
                self._view(device, queue, rng)
            if not queue:
                time.sleep(0.005)  # an idle app: nothing to send
                continue
            chunk = [queue[index] for index in range(min(CHUNK, len(queue)))]
            outcome = self._send(chunk, rng, device.context["device"]["id"])
            with self._lock:
                self.answers[outcome[0]] += 1
            status, answer = outcome
            if status.isdigit() and 200 <= int(status) < 300:
                with self._lock:
                    self.duplicates_answered += len(answer.get("duplicates", ()))
                for _ in chunk:
                    queue.popleft()
            elif status.isdigit() and 400 <= int(status) < 500:
                with self._lock:
                    self.dropped_for_4xx.append(outcome)
                for _ in chunk:
                    queue.popleft()
            else:
                time.sleep(rng.uniform(0.01, 0.1))  # kept; sent again later

    def _send(self, chunk, rng, device_id):
        body = json.dumps({"batch": chunk}).encode()
        port = rng.choice(self.ports)
        # The headers iOS's SDK sends (Sources/JudoSDK/Extensions/URL+API.swift).
        headers = {"Content-Type": "application/json", "Judo-Device-ID": device_id}
        if self.token:
            headers["Judo-Access-Token"] = self.token
        if rng.random() < self.cut_share:
            return self._send_and_cut(port, body, headers)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        try:
            conn.request("POST", "/batch?apiVersion=2", body, headers)
            response = conn.getresponse()
            text = response.read()
            try:
                answer = json.loads(text)
            except ValueError:
                answer = {"raw": text[:200].decode("utf-8", "replace")}
            return str(response.status), answer
        except socket.timeout:
            return "timeout", None
        except (OSError, http.client.HTTPException):
            return "connection error", None
        finally:
            conn.close()

    def _send_and_cut(self, port, body, headers):
        """The whole request goes out; the answer is never read."""
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        head = (f"POST /batch?apiVersion=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
                f"Content-Length: {len(body)}\r\n\r\n")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(head.encode() + body)
        except OSError:
            pass
        return "cut", None
