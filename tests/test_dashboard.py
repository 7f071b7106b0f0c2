"""The dashboard in a real headless browser (Debian's chromium), against a live server with
real data: what the page shows after its script has run, and a screenshot kept as an artifact
in tests/artifacts/dashboard.png."""

import collections
import html.parser
import http.client
import http.server
import json
import os
import re
import shutil
import subprocess
import threading

import pytest

from http_client import post, wait_for
from processes import REPO
from reference import caught_up, read_series

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "tests" / "artifacts"

# CI installs chromium (.ci/run); elsewhere the test says how to get it rather than fail.
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="needs Debian's chromium (apt-get install chromium); CI installs it",
)


def chromium(tmp_path, *args, budget_ms=5000):
    """Run headless Chromium with the flags this offline machine needs."""
    assert CHROMIUM, "chromium is not installed (.ci/run installs it)"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
         f"--virtual-time-budget={budget_ms}", *args],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout


class Page(html.parser.HTMLParser):
    """Text by element id, each table body's rows (by its id; `rows`: the counts table's) and
    the chart's bars, from the rendered DOM."""

    def __init__(self, dom):
        super().__init__()
        self.by_id, self.tables, self.bars = {}, collections.defaultdict(list), []
        self._open_ids, self._in_tbody, self._row = [], None, None
        self.feed(dom)
        self.rows = self.tables["counts"]

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._open_ids.append(attrs.get("id"))
        if tag == "tbody":
            self._in_tbody = attrs.get("id")
        if self._in_tbody and tag == "tr":
            self._row = []
        if "bar-row" in (attrs.get("class") or ""):
            self.bars.append(attrs["data-id"])

    def handle_endtag(self, tag):
        if self._open_ids:
            self._open_ids.pop()
        if tag == "tr" and self._row is not None:
            self.tables[self._in_tbody].append(self._row)
            self._row = None
        if tag == "tbody":
            self._in_tbody = None

    def handle_data(self, data):
        if self._open_ids and self._open_ids[-1]:
            self.by_id[self._open_ids[-1]] = self.by_id.get(self._open_ids[-1], "") + data
        if self._row is not None and data.strip():
            self._row.append(data.strip())


def test_dashboard_shows_the_live_counts(procs, state_dir, tmp_path):
    ingest = procs.ingest(state_dir)
    procs.worker(state_dir, interval=0.05)
    ids = [1] * 5 + [100] * 3 + [42] * 8 + [7] + [2**63 - 1] * 2
    assert post(ingest.port, {"batch": [{"experienceID": i} for i in ids]}, path="/batch")[0] == 202
    wait_for(lambda: caught_up(state_dir), what="the worker")
    url = f"http://127.0.0.1:{ingest.port}/"

    page = Page(chromium(tmp_path, "--dump-dom", url))
    assert page.by_id["total-events"] == "19"
    assert page.by_id["experiences"] == "5"
    # Idle and counted: "up to date", not a checkpoint age that keeps growing.
    assert page.by_id["lag"] == "up to date"
    assert page.by_id["lag-note"].startswith("last change ")
    assert page.by_id["status"].startswith("updated")
    assert page.bars == ["42", "1", "100", "9223372036854775807", "7"]  # largest first
    # Default sort: most events first, exact ids (even past 2^53), shares of the total.
    assert page.rows[0] == ["42", "8", "42.11%"]
    assert page.by_id["worker-state"] == "running"
    assert "worker-alert" not in page.by_id  # the warning is hidden, and empty
    assert [row[0] for row in page.rows] == ["42", "1", "100", "9223372036854775807", "7"]

    by_id = Page(chromium(tmp_path, "--dump-dom", url + "#sort=id-asc"))
    assert [row[0] for row in by_id.rows] == ["1", "7", "42", "100", "9223372036854775807"]
    ascending = Page(chromium(tmp_path, "--dump-dom", url + "#sort=count-asc"))
    assert [row[1] for row in ascending.rows] == ["1", "2", "3", "5", "8"]

    screenshot(tmp_path, url, "dashboard.png", 1200, 900)


def test_dashboard_reports_an_api_error(procs, state_dir, tmp_path):
    ingest = procs.ingest(state_dir)
    (state_dir / "data2").write_bytes(b"\x00")  # /stats answers 503 with a JSON error
    page = Page(chromium(tmp_path, "--dump-dom", f"http://127.0.0.1:{ingest.port}/"))
    assert page.by_id["status"].startswith("cannot load the counts: data2 is unreadable")
    assert page.by_id["total-events"] == "–"


PHONE_WIDTH, PHONE_HEIGHT = 390, 844
PHONE_FRAME = (f'<!doctype html><body style="margin:0"><iframe src="/" style="border:0; '
               f'width:{PHONE_WIDTH}px; height:{PHONE_HEIGHT}px"></iframe></body>')


class CountingProxy(http.server.ThreadingHTTPServer):
    """Forwards GETs to the ingest and counts them by path: shows what the page fetched.

    With `inject`, that script is added to the end of the page: the test's own probe, run
    inside the real page, never part of the product. /phone shows the page in a 390 px wide
    frame: headless Chromium makes no window narrower than 500 px.
    """

    def __init__(self, upstream_port, inject=""):
        self.upstream_port = upstream_port
        self.inject = inject.encode()
        self.hits = collections.Counter()
        super().__init__(("127.0.0.1", 0), ProxyHandler)

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/phone":
            body = PHONE_FRAME.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.server.hits[self.path.split("?")[0]] += 1
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=10)
        upstream.request("GET", self.path)
        answer = upstream.getresponse()
        body = answer.read()
        if self.path == "/" and self.server.inject:
            body = body.replace(b"</body>", b"<script>" + self.server.inject + b"</script></body>")
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.getheader("Content-Type"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        upstream.close()

    def log_message(self, *args):
        pass


def test_dashboard_refreshes_itself(procs, state_dir, tmp_path):
    ingest = procs.ingest(state_dir)
    with CountingProxy(ingest.port) as proxy:
        # 10 s of the page's (virtual) time: the first load and refreshes at 3, 6 and 9 s.
        page = Page(chromium(tmp_path, "--dump-dom", f"http://127.0.0.1:{proxy.server_port}/",
                             budget_ms=10_000))
    assert page.by_id["status"].startswith("updated")
    assert proxy.hits["/"] == 1
    assert proxy.hits["/stats"] >= 3 and proxy.hits["/counts"] >= 3


# Measures the rendered page once it has loaded: sideways overflow, and any bar label that is
# cut off (wider than its box, or past the window's edge).
MEASURE = """
setTimeout(() => {
  const labels = [...document.querySelectorAll(".bar-row .id")];
  const result = {
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    clipped: labels.filter(e => e.scrollWidth > e.clientWidth
                             || e.getBoundingClientRect().right > window.innerWidth)
                   .map(e => e.textContent),
    // Bars compare only if every track starts at the same place with the same width.
    tracks: new Set([...document.querySelectorAll(".bar-track")].map(e => {
      const box = e.getBoundingClientRect();
      return `${Math.round(box.left)}+${Math.round(box.width)}`;
    })).size,
  };
  // Written into the top page, which --dump-dom shows (the page itself or the phone frame's
  // parent: same origin).
  const out = window.parent.document.createElement("pre");
  out.id = "measure";
  out.textContent = JSON.stringify(result);
  window.parent.document.body.append(out);
}, 2000);
"""


def screenshot(tmp_path, url, name, width, height):
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.unlink(missing_ok=True)
    chromium(tmp_path, f"--screenshot={path}", f"--window-size={width},{height}", url)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_share_is_of_all_events_not_of_the_rows_shown(procs, state_dir, tmp_path):
    ingest = procs.ingest(state_dir)
    procs.worker(state_dir, interval=0.05)
    # 2,000 experiences, more than the table's 1,000 rows: id 7 has 22 of 10,021 events.
    ids = [7] * 22 + [i for i in range(1000, 3000) for _ in range(5)][: 10_021 - 22]
    for start in range(0, len(ids), 5000):
        batch = {"batch": [{"experienceID": i} for i in ids[start:start + 5000]]}
        assert post(ingest.port, batch, path="/batch")[0] == 202
    wait_for(lambda: caught_up(state_dir), what="the worker")
    page = Page(chromium(tmp_path, "--dump-dom", f"http://127.0.0.1:{ingest.port}/"))
    assert page.rows[0] == ["7", "22", f"{100 * 22 / 10_021:.2f}%"]  # 0.22%, not 2.1%
    assert page.rows[1][2] == f"{100 * 5 / 10_021:.2f}%"


def test_phone_width_has_no_sideways_scroll_and_whole_ids(procs, state_dir, tmp_path):
    ingest = procs.ingest(state_dir)
    procs.worker(state_dir, interval=0.05)
    ids = [2**63 - 1] * 9 + [1234567890123456789] * 7 + [42] * 5 + [10**12] * 3 + [5]
    assert post(ingest.port, {"batch": [{"experienceID": i} for i in ids]}, path="/batch")[0] == 202
    wait_for(lambda: caught_up(state_dir), what="the worker")
    with CountingProxy(ingest.port, inject=MEASURE) as proxy:
        base = f"http://127.0.0.1:{proxy.server_port}"
        for path, width in (("/phone", PHONE_WIDTH), ("/", 1200)):
            page = Page(chromium(tmp_path, "--dump-dom", "--window-size=1200,900", base + path))
            measured = json.loads(page.by_id["measure"])
            assert measured["innerWidth"] == width
            assert measured["scrollWidth"] <= measured["innerWidth"], measured
            assert measured["clipped"] == [], measured
            assert measured["tracks"] == 1, measured
        screenshot(tmp_path, base + "/phone", "dashboard-phone.png", 500, PHONE_HEIGHT)


def test_a_stopped_worker_is_shown_as_a_warning(procs, state_dir, tmp_path):
    ingest = procs.ingest(state_dir)
    worker = procs.worker(state_dir, interval=0.05)
    assert post(ingest.port, {"experienceID": 3})[0] == 202
    wait_for(lambda: caught_up(state_dir), what="the worker")
    worker.terminate()
    worker.wait(timeout=10)
    url = f"http://127.0.0.1:{ingest.port}/"
    page = Page(chromium(tmp_path, "--dump-dom", url))
    assert page.by_id["worker-state"] == "stopped"
    assert page.by_id["worker-alert"].startswith("Worker stopped: no worker is running: new "
                                                 "events are kept, and wait to be counted")
    assert "worker.lock" not in page.by_id["worker-alert"]
    screenshot(tmp_path, url, "dashboard-worker-stopped.png", 1200, 900)


def test_an_overview_well_behind_says_how_much_it_does_not_hold_yet(procs, state_dir,
                                                                     tmp_path):
    """Up to date, the overview says nothing of its lag; once the oldest SDK event it has
    not counted has waited 10 s or more (here: no worker counts it), it says how long."""
    from http_client import request

    ingest = procs.ingest(state_dir)
    worker = procs.worker(state_dir, interval=0.05)

    def send(event_id):
        event = {"id": event_id, "anonymousID": "device-1", "type": "screen",
                 "timestamp": "2026-12-02T17:00:00Z",
                 "properties": {"experienceID": "5", "experienceName": "Welcome"}}
        assert post(ingest.port, {"batch": [event]}, "/batch?apiVersion=2")[0] == 202

    def waiting():
        return request(ingest.port, "GET", "/stats")[1]["overview_waiting_seconds"]

    send("first")
    wait_for(lambda: waiting() == 0, what="the overview to count the first event")
    url = f"http://127.0.0.1:{ingest.port}/"
    dom = chromium(tmp_path, "--dump-dom", url)
    assert re.search(r'<span class="timeline-note lagging" id="overview-lag" hidden=""></span>',
                     dom), "the lag is shown while the overview is up to date"
    worker.terminate()
    worker.wait(timeout=10)
    send("second")
    wait_for(lambda: waiting() >= 10, 30, what="the second event to wait 10 s")
    page = Page(chromium(tmp_path, "--dump-dom", url))
    shown = page.by_id["overview-lag"]
    match = re.fullmatch(r"still counting the last (?:(\d+) min )?(\d+) s of SDK events", shown)
    assert match, shown
    assert 10 <= 60 * int(match.group(1) or 0) + int(match.group(2)) <= waiting() + 1
    assert page.by_id["experience-note"].startswith(  # one of each, in the singular
        "1 user (0 identified), 1 session averaging 0 s, 1 screen view in ")
    screenshot(tmp_path, url, "dashboard-overview-behind.png", 1200, 700)


def test_the_chart_over_time_for_all_events_and_for_one_experience(procs, state_dir, tmp_path):
    ingest = procs.ingest(state_dir)
    procs.worker(state_dir, interval=0.05)
    ids = [42] * 6 + [7] * 3 + [2**63 - 1]
    assert post(ingest.port, {"batch": [{"experienceID": i} for i in ids]}, path="/batch")[0] == 202
    wait_for(lambda: caught_up(state_dir) and (s := read_series(state_dir)) and s[0] > 0,
             what="the worker and the series")
    url = f"http://127.0.0.1:{ingest.port}/"

    def timeline(fragment):
        dom = chromium(tmp_path, "--dump-dom", url + fragment)
        counts = [int(n) for n in re.findall(r'class="slot" data-count="(\d+)"', dom)]
        page = Page(dom)
        page.x_axis = re.findall(r"<span>([^<]*)</span>",
                                 re.search(r'id="x-axis">(.*?)</div>', dom).group(1))
        return page, counts

    page, counts = timeline("")
    assert len(counts) == 60 and sum(counts) == 10  # the last hour, by minute
    assert page.by_id["timeline-title"] == "Events over time"
    # A y-axis of round numbers (10 at most a minute: 10 and 5), five times under the bars.
    assert (page.by_id["y-max"], page.by_id["y-mid"]) == ("10", "5")
    assert len(page.x_axis) == 5, page.x_axis
    assert all(re.fullmatch(r"\d\d:\d\d", label) for label in page.x_axis), page.x_axis
    page, counts = timeline("#range=day&exp=42")
    assert len(counts) == 24 and sum(counts) == 6  # 24 hours, experience 42 only
    assert page.by_id["timeline-title"] == "Experience #42 over time"
    page, counts = timeline("#range=month&exp=9223372036854775807")
    assert len(counts) in (30, 31) and sum(counts) == 1
    screenshot(tmp_path, url + "#range=hour", "dashboard-over-time.png", 1200, 900)


def test_the_dashboard_opens_on_the_experience_overview(procs, state_dir, tmp_path):
    from bench import traffic as generator
    from http_client import request

    ingest = procs.ingest(state_dir)
    procs.worker(state_dir, interval=0.05)
    traffic = generator.generate(seed=12, devices=150, experiences=6, days=20)
    generator.Sender(f"http://127.0.0.1:{ingest.port}").send(traffic.batches)

    def listed():
        status, body = request(ingest.port, "GET", "/experiences?top=200")
        return status == 200 and body
    wait_for(lambda: (body := listed()) and sum(item["screen_views"] for item in
                                               body["experiences"]) == len(traffic.views),
             what="the overview to count every screen view")
    api = listed()["experiences"]
    url = f"http://127.0.0.1:{ingest.port}/"
    page = Page(chromium(tmp_path, "--dump-dom", url))
    rows = page.tables["overview-rows"]
    assert len(rows) == len(api) == 6
    first = api[0]  # the most users first, as the API sorts them
    assert rows[0][0] == first["name"] and rows[0][1] == f"#{first['experienceID']}"
    assert rows[0][2] == f"{first['users']:,}"
    assert rows[0][3] == f"{first['sessions']:,}"
    assert rows[0][-1] == f"{first['screen_views']:,}"
    assert rows[0][-2] == f"{100 * first['bounce_rate']:.1f}%"
    assert page.by_id["experience-title"] == f"{first['name']}: users per day"
    status, one = request(ingest.port, "GET", f"/experiences/{first['experienceID']}")
    assert page.by_id["experience-note"].startswith(
        f"{one['users']} users ({one['identified_users']} identified), ")
    screens = page.tables["screen-rows"]
    assert [row[1] for row in screens] == [f"#{s['id']}" for s in one["top_screens"]]
    dom = chromium(tmp_path, "--dump-dom", url)
    days = re.search(r'id="ov-timeline">(.*?)</div>\s*<div class="x-axis"', dom, re.S).group(1)
    assert len(re.findall(r'class="slot"', days)) in (30, 31)
    # The flow: a bar per screen in the order people reach them, the top paths, and the
    # revisions with their completion of the flow's last screen.
    status, flow = request(ingest.port, "GET", f"/experiences/{first['experienceID']}/flow?top=8")
    funnel = re.search(r'id="funnel">(.*?)</div>\s*<h3>', dom, re.S).group(1)
    assert re.findall(r'<span class="label" title="([^"]+)"', funnel) == [
        screen["id"] for screen in flow["screens"]]
    assert [row[2] for row in page.tables["path-rows"]] == [
        f"{path['moves']:,}" for path in flow["paths"]]
    goal = flow["screens"][-1]["id"]
    status, revisions = request(ingest.port, "GET",
                                f"/experiences/{first['experienceID']}/revisions?goal={goal}")
    shown = page.tables["revision-rows"]
    assert [row[0] for row in shown] == [r["revision"] for r in revisions["revisions"]]
    assert [row[6] for row in shown] == [f"{100 * r['completion_rate']:.1f}%"
                                         for r in revisions["revisions"]]

    # The last 24 hours, by hour: the table and the chart follow the range.
    dom = chromium(tmp_path, "--dump-dom", url + "#ovr=day")
    hours = re.search(r'id="ov-timeline">(.*?)</div>\s*<div class="x-axis"', dom, re.S).group(1)
    assert len(re.findall(r'class="slot"', hours)) in (24, 25)
    assert Page(dom).by_id["experience-title"].endswith(": users per hour")
    last = api[-1]["experienceID"]  # choosing another experience shows its own
    page = Page(chromium(tmp_path, "--dump-dom", url + f"#ov={last}"))
    assert page.by_id["experience-title"].startswith(api[-1]["name"])
    screenshot(tmp_path, url, "dashboard-overview.png", 1200, 1900)
    screenshot(tmp_path, url, "dashboard-flow-phone.png", PHONE_WIDTH, 2600)  # the whole page
    with CountingProxy(ingest.port, inject=MEASURE) as proxy:
        base = f"http://127.0.0.1:{proxy.server_port}"
        page = Page(chromium(tmp_path, "--dump-dom", "--window-size=1200,900", base + "/phone"))
        measured = json.loads(page.by_id["measure"])
        assert measured["scrollWidth"] <= measured["innerWidth"], measured
        screenshot(tmp_path, base + "/phone", "dashboard-overview-phone.png", 500, PHONE_HEIGHT)
