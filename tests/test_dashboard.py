"""The dashboard in a real headless browser (Debian's chromium), against a live server with
real data: what the page shows after its script has run, and a screenshot kept as an artifact
in tests/artifacts/dashboard.png."""

import collections
import html.parser
import http.client
import http.server
import os
import shutil
import subprocess
import threading

import pytest

from http_client import post, wait_for
from processes import REPO
from reference import caught_up

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
    """Text by element id, the table's rows and the chart's bars, from the rendered DOM."""

    def __init__(self, dom):
        super().__init__()
        self.by_id, self.rows, self.bars = {}, [], []
        self._open_ids, self._in_tbody, self._row = [], False, None
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._open_ids.append(attrs.get("id"))
        if attrs.get("id") == "counts":
            self._in_tbody = True
        if self._in_tbody and tag == "tr":
            self._row = []
        if "bar-row" in (attrs.get("class") or ""):
            self.bars.append(attrs["data-id"])

    def handle_endtag(self, tag):
        if self._open_ids:
            self._open_ids.pop()
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        if tag == "tbody":
            self._in_tbody = False

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
    assert page.by_id["lag"] == "0"
    assert page.by_id["age"].endswith((" s", " min"))
    assert page.by_id["status"].startswith("updated")
    assert page.bars == ["42", "1", "100", "9223372036854775807", "7"]  # largest first
    # Default sort: most events first, exact ids (even past 2^53), shares of the total.
    assert page.rows[0] == ["42", "8", "42.1%"]
    assert [row[0] for row in page.rows] == ["42", "1", "100", "9223372036854775807", "7"]

    by_id = Page(chromium(tmp_path, "--dump-dom", url + "#sort=id-asc"))
    assert [row[0] for row in by_id.rows] == ["1", "7", "42", "100", "9223372036854775807"]
    ascending = Page(chromium(tmp_path, "--dump-dom", url + "#sort=count-asc"))
    assert [row[1] for row in ascending.rows] == ["1", "2", "3", "5", "8"]

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1200,900", url)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dashboard_reports_an_api_error(procs, state_dir, tmp_path):
    ingest = procs.ingest(state_dir)
    (state_dir / "data2").write_bytes(b"\x00")  # /stats answers 503 with a JSON error
    page = Page(chromium(tmp_path, "--dump-dom", f"http://127.0.0.1:{ingest.port}/"))
    assert page.by_id["status"].startswith("cannot load the counts: data2 is unreadable")
    assert page.by_id["total-events"] == "–"


class CountingProxy(http.server.ThreadingHTTPServer):
    """Forwards GETs to the ingest and counts them by path: shows what the page fetched."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.hits = collections.Counter()
        super().__init__(("127.0.0.1", 0), ProxyHandler)


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.hits[self.path.split("?")[0]] += 1
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=10)
        upstream.request("GET", self.path)
        answer = upstream.getresponse()
        body = answer.read()
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
    proxy = CountingProxy(ingest.port)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        # 10 s of the page's (virtual) time: the first load and refreshes at 3, 6 and 9 s.
        page = Page(chromium(tmp_path, "--dump-dom", f"http://127.0.0.1:{proxy.server_port}/",
                             budget_ms=10_000))
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert page.by_id["status"].startswith("updated")
    assert proxy.hits["/"] == 1
    assert proxy.hits["/stats"] >= 3 and proxy.hits["/counts"] >= 3
