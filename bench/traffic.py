"""Realistic SDK traffic, sent to a running mini-analytics: python -m bench.traffic --help.

App installs (iOS and Android, bench/sdk_shapes.py) view the screens of experiences in
sessions spread over the last days: a few screens each, seconds to a minute apart, now and
then a pause near the 30-minute session timeout, some sessions of one screen (bounces). An
experience is a flow of 3 to 8 screens, mostly gone through in order, now and then back a
step, left at any step or done at the last, some branching at the third step; half of them
publish a second revision part way through, which moves a screen and whose sessions go a
little further (traffic.flows has each revision's steps).

People as apps see them: some installs log in mid-session (their views before count for the
person, worker/people.py); some people log in on a second install too; some phones are
shared (an Android install, which keeps its anonymousID, logged out and logged in as
someone else); some installs send identify(null). Each install sends as the SDKs do: a
POST /batch of its queued events once 20 wait or the app goes to the background (a session's
end), at most 100 at a time. Some batches are sent twice (an answer lost: a retry), and some
arrive late, after the next one (a queue kept across app launches), never more than a day
behind.

generate() returns the traffic and its ledger (every screen view, with its device, person,
experience, screen, device time and revision); send() posts it, keeping a batch and sending it again on
a 5xx or a broken connection, as the SDKs do. The tests compute the overview the engine must
give from the ledger (tests/overview_reference.py).
"""

import argparse
import collections
import datetime
import http.client
import json
import os
import random
import sys
import threading
import time
import urllib.parse

from bench.sdk_shapes import AndroidDevice, IosDevice

UTC = datetime.timezone.utc
FLUSH_AT = 20
CHUNK = 100

# `revision`: the experienceRevisionID the view carried (None where a test left it out).
View = collections.namedtuple("View", "anonymous user experience screen moment revision",
                              defaults=[None])
# An identify with a userID: the install linked to that user from `moment` (device time).
Link = collections.namedtuple("Link", "anonymous user moment")


class Traffic:
    def __init__(self):
        self.batches = []  # (Judo-Device-ID, [event, ...]) in the order they are sent
        self.views = []  # the ledger: View per screen view, each once
        self.links = []  # and a Link per identify with a userID
        # Each experience's flow per revision: its steps in order, each a list of the
        # screens people go to at that step (two where it branches).
        self.flows = {}
        self.events = 0  # distinct events (a retry sends some twice)
        self.retries = 0
        self.late = 0


def _experience_names(experiences, rng):
    words = ["Welcome", "Spring Sale", "Onboarding", "Rewards", "Bienvenue", "Nouveautés",
             "Tips", "Checkout", "Premium", "Événement", "Survey", "Stories"]
    return {experience: f"{rng.choice(words)} {experience}" for experience in experiences}


def generate(seed=1, devices=100, experiences=10, days=7, end=None, sessions_per_day=1.0,
             identified=0.5, retry_share=0.05, late_share=0.05):
    """The traffic of `devices` installs over the `days` before `end` (a UTC datetime, now
    by default), on experiences 1 to `experiences`."""
    rng = random.Random(seed)
    end = end or datetime.datetime.now(UTC).replace(microsecond=0)
    span = days * 86400
    ids = list(range(1, experiences + 1))
    weights = [1 / rank for rank in range(1, experiences + 1)]  # a few popular ones
    names = _experience_names(ids, rng)
    traffic = Traffic()
    # Each experience is a flow of screens (screen-1, screen-2, ...) that people mostly go
    # through in order, now and then going back, and leave at any step; some branch at the
    # third step (screen-3 or screen-3b). Half publish a second revision part way through,
    # which moves the second screen after the third, and whose sessions go a little further.
    revised_at = {experience: rng.uniform(0, span) if rng.random() < 0.5 else span
                  for experience in ids}
    for experience in ids:
        steps = [[f"screen-{number}"] for number in range(1, rng.randint(3, 8) + 1)]
        if len(steps) >= 4 and rng.random() < 0.3:
            steps[2] = ["screen-3", "screen-3b"]
        moved = list(steps)
        moved[1], moved[2] = moved[2], moved[1]
        traffic.flows[experience] = {f"rev-{experience}-1": steps,
                                     f"rev-{experience}-2": moved}
    users = []
    timed = []  # (send time, order, device id, events)
    for number in range(devices):
        if number % 2:
            device = IosDevice()
        else:
            device = AndroidDevice(offset_hours=rng.choice([-8, -5, -4, 0, 1, 2, 5, 9]))
        # Device ids from the seed, so that a run is the same each time.
        device.anonymous_id = f"{seed:04d}-{number:08d}-{rng.getrandbits(48):012x}"
        device_id = f"device-{seed}-{number}"
        starts = sorted(rng.uniform(0, span - 3600)
                        for _ in range(max(1, round(rng.expovariate(1) * days
                                                    * sessions_per_day))))
        # Who uses it: a user who logs in during a session (some on a second install), and
        # now and then a phone shared with a second user, or an identify(null).
        logins = []  # (session index, screen index within it, userID or None)
        if rng.random() < identified:
            if users and rng.random() < 0.15:
                user = rng.choice(users)  # the same person on a second install
            else:
                user = f"user-{seed}-{number}"
                users.append(user)
            logins.append((rng.randrange(len(starts)), rng.randrange(4), user))
            if isinstance(device, AndroidDevice) and len(starts) > 2 and rng.random() < 0.1:
                other = f"user-{seed}-{number}-shared"  # logged out, and in as someone else
                users.append(other)
                logins.append((rng.randrange(logins[0][0], len(starts)), 0, other))
        elif rng.random() < 0.05:
            logins.append((rng.randrange(len(starts)), 0, None))  # identify(null)
        queue, batches = [], []
        for index, start in enumerate(starts):
            moment = end - datetime.timedelta(seconds=span - start)
            experience = rng.choices(ids, weights)[0]
            second = start >= revised_at[experience]
            revision = f"rev-{experience}-{2 if second else 1}"
            screens = (1 if rng.random() < (0.25 if second else 0.3)
                       else 1 + int(rng.expovariate(1 / (6 if second else 5))))
            steps = traffic.flows[experience][revision]
            step = 1
            for screen_index in range(screens):
                moment = moment.replace(microsecond=0)
                if moment > end:
                    break  # the traffic ends at `end`: no view from the future
                for at, after, user in logins:
                    if (at, min(after, screens - 1)) == (index, screen_index):
                        queue.append(device.identify(moment, user,
                                                     {"plan": rng.choice(["free", "pro"])}))
                        if user:
                            traffic.links.append(Link(device.anonymous_id, user,
                                                      int(moment.timestamp())))
                if step <= len(steps):  # past its end, the flow is done
                    screen = rng.choice(steps[step - 1])
                    queue.append(device.screen(moment, experience, id=screen,
                                               name=f"Screen {screen.split('-')[1]}",
                                               experienceName=names[experience],
                                               experienceRevisionID=revision))
                    traffic.views.append(View(device.anonymous_id, device.user_id,
                                              experience, screen, int(moment.timestamp()),
                                              revision))
                    turn = rng.random()
                    step = (max(1, step - 1) if turn < 0.1 else step if turn < 0.15
                            else step + 1)
                if len(queue) >= FLUSH_AT:
                    batches.append(queue)
                    queue = []
                gap = (rng.uniform(20 * 60, 45 * 60) if rng.random() < 0.04
                       else rng.expovariate(1 / 20))
                moment += datetime.timedelta(seconds=gap)
            if queue:  # the app goes to the background: a flush
                batches.append(queue)
                queue = []
        traffic.events += sum(len(batch) for batch in batches)
        for order, events in enumerate(batches):
            for chunk_start in range(0, len(events), CHUNK):
                chunk = events[chunk_start:chunk_start + CHUNK]
                sent_at = _stamp(chunk[-1]) + rng.uniform(1, 60)
                if rng.random() < late_share:
                    sent_at += rng.uniform(3600, 86400)  # kept in the queue: up to a day late
                    traffic.late += 1
                timed.append((sent_at, number, order, device_id, chunk))
                if rng.random() < retry_share:
                    timed.append((sent_at + rng.uniform(1, 600), number, order, device_id,
                                  chunk))
                    traffic.retries += 1
    timed.sort(key=lambda entry: entry[:3])
    traffic.batches = [(device_id, chunk) for _, _, _, device_id, chunk in timed]
    return traffic


def _stamp(event):
    raw = event["timestamp"]
    if raw.endswith("Z"):
        raw = raw[:-1] + "+00:00"
    return datetime.datetime.strptime(raw, "%Y-%m-%dT%H:%M:%S%z").timestamp()


class Sender:
    """Posts batches over keep-alive connections; a batch answered 5xx, or whose connection
    broke, is sent again (as the SDKs keep it); a 4xx is a fault of the traffic, raised."""

    def __init__(self, url, token=None, connections=4):
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.token = token
        self.connections = connections
        self.duplicates = 0
        self.requests = 0
        self.refused = 0
        self._lock = threading.Lock()

    def send(self, batches, duration=None):
        """Post every batch; with `duration` (seconds), spread over about that long, batch i
        not before duration * i / len(batches) (a steady rate rather than a burst)."""
        pending = collections.deque(enumerate(batches))
        failures = []
        started, total = time.monotonic(), max(1, len(batches))

        def run():
            conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            while True:
                with self._lock:
                    if not pending or failures:
                        break
                    number, (device_id, events) = pending.popleft()
                if duration:
                    time.sleep(max(0.0, started + duration * number / total - time.monotonic()))
                try:
                    self._post(conn, device_id, events)
                except Exception as error:  # noqa: BLE001 - reported by send()
                    failures.append(error)
            conn.close()

        threads = [threading.Thread(target=run) for _ in range(self.connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]

    def _post(self, conn, device_id, events):
        body = json.dumps({"batch": events}).encode()
        headers = {"Content-Type": "application/json", "Judo-Device-ID": device_id}
        if self.token:
            headers["Judo-Access-Token"] = self.token
        delay = 0.05
        while True:
            try:
                conn.request("POST", "/batch?apiVersion=2", body, headers)
                response = conn.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()  # reconnects on the next request
                status = None
            else:
                status = response.status
            with self._lock:
                self.requests += 1
            if status is not None and 200 <= status < 300:
                with self._lock:
                    self.duplicates += len(json.loads(answer).get("duplicates", ()))
                return
            if status is not None and 400 <= status < 500:
                raise RuntimeError(f"POST /batch answered {status}: {answer[:300]!r}")
            with self._lock:
                self.refused += 1
            time.sleep(delay)  # kept, sent again later
            delay = min(delay * 2, 2.0)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m bench.traffic",
        description="Send realistic SDK traffic (screen views in sessions, identifies, "
                    "retries, late batches) to a running mini-analytics.")
    port = os.environ.get("MINI_ANALYTICS_PORT", "8000")
    parser.add_argument("--url", default=f"http://127.0.0.1:{port}",
                        help="the ingest API (default: %(default)s)")
    parser.add_argument("--devices", type=int, default=200, help="app installs (default 200)")
    parser.add_argument("--experiences", type=int, default=10,
                        help="experiences 1 to N (default 10)")
    parser.add_argument("--days", type=float, default=7,
                        help="the traffic spans the last DAYS days (default 7)")
    parser.add_argument("--seed", type=int, default=1,
                        help="the same seed, the same installs and history, ending now: run "
                             "again, it sends those installs' views again, moved on in time "
                             "(new views of the same installs); another seed gives other "
                             "installs (default 1)")
    parser.add_argument("--duration", type=float, default=None,
                        help="send over about this many seconds, at a steady rate (default: "
                             "as fast as the connections go)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--token", default=None,
                        help="a write token, when the ingest asks for one (default: the first "
                             "of MINI_ANALYTICS_WRITE_TOKENS, if set)")
    parser.add_argument("--ledger", default=None,
                        help="write every screen view to this file, as JSON lines")
    args = parser.parse_args(argv)
    token = args.token or (os.environ.get("MINI_ANALYTICS_WRITE_TOKENS") or "").split(",")[0]
    traffic = generate(args.seed, args.devices, args.experiences, args.days)
    if args.ledger:
        with open(args.ledger, "w") as ledger:
            for view in traffic.views:
                ledger.write(json.dumps(view._asdict()) + "\n")
    sender = Sender(args.url, token or None, args.connections)
    started = time.monotonic()
    try:
        sender.send(traffic.batches, args.duration)
    except (RuntimeError, ValueError) as error:
        print(f"traffic: {error}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(f"sent {len(traffic.batches):,} batches ({traffic.events:,} events, "
          f"{len(traffic.views):,} screen views, {args.devices:,} devices, "
          f"{len(traffic.links):,} logins) in {elapsed:.1f}s: {traffic.retries:,} sent "
          f"twice, {traffic.late:,} late; {sender.duplicates:,} duplicates answered, "
          f"{sender.refused:,} answers to retry")
    return 0


if __name__ == "__main__":
    sys.exit(main())
