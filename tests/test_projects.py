"""Projects (app/projects.py, storage/projects.py): many apps in one engine, each seeing only
its own figures.

The isolation test's oracle is an engine of one project's events alone: every read the
OpenAPI document describes, with every parameter it lists, asked of the shared engine with a
project's token, must answer exactly what that other engine answers. A figure, a name, a
screen or an id of another project in it would make the two differ. The projects' events
overlap on purpose: the same experience ids, the same installs and users, even the same
event ids (one project's copy must not be taken for a retry of the other's).

Also: the projects file's rules, an admin's reads and list, refusals (403, 401), and what
happens to a project's data when its token moves, when it is renamed and when it is removed.
"""

import json
import re
import subprocess
import sys
import time
import urllib.parse

import pytest

from app.access import digest
from app.projects import BadProjects, parse
from bench import traffic as generator
from storage.views.series_store import SeriesStore
from http_client import post, request, wait_for
from processes import REPO, service_env
from reference import caught_up
from test_dashboard import Page, chromium, screenshot
from test_read_api import assert_matches_spec

pytestmark = pytest.mark.slow

ADMIN = "admin-token-0123456789"
DEFAULT_WRITE, DEFAULT_READ = "default-write-0123456", "default-read-01234567"
TOKENS = {"alpha": ("alpha-write-012345678", "alpha-read-0123456789"),
          "bravo": ("bravo-write-012345678", "bravo-read-0123456789")}
OPENAPI = json.loads((REPO / "app" / "openapi.json").read_text())


def projects_toml(projects=TOKENS, names=None, admin=ADMIN):
    lines = [f'admin_tokens = ["{admin}"]']
    for project, (write, read) in projects.items():
        name = (names or {}).get(project, project.title())
        lines += [f"[projects.{project}]", f'name = "{name}"', f'write_tokens = ["{write}"]',
                  f'read_tokens = ["{read}"]']
    return "\n".join(lines) + "\n"


def get(port, path, token=None, **params):
    headers = {"Judo-Access-Token": token} if token else {}
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    return request(port, "GET", f"{path}{query}", headers=headers)


# --- what each project sends: overlapping ids, installs and event ids

def project_traffic():
    """{project: (SDK traffic, minimal ids)}. bravo sends everything alpha sends (the same
    event ids, installs, users and experiences), and more; the default project, other
    traffic. Their minimal ids overlap too."""
    alpha = generator.generate(seed=21, devices=25, experiences=3, days=2)
    more = generator.generate(seed=22, devices=15, experiences=4, days=2)
    bravo = generator.Traffic()
    bravo.batches = alpha.batches + more.batches
    bravo.views = alpha.views + more.views
    default = generator.generate(seed=23, devices=20, experiences=3, days=2)
    return {"alpha": (alpha, [1, 2, 2, 3]), "bravo": (bravo, [1, 1, 2, 7, 7, 7]),
            "": (default, [2, 3, 3])}


def send(port, traffic, ids, token=None):
    generator.Sender(f"http://127.0.0.1:{port}", token=token).send(traffic.batches)
    headers = {"Judo-Access-Token": token} if token else {}
    for experience in ids:
        status, answer = post(port, {"experienceID": experience}, headers=headers)
        assert status == 202, answer


def screen_views(port, token=None, **params):
    status, body = get(port, "/experiences", token, **params)
    return sum(item["screen_views"] for item in body["experiences"]) if status == 200 else -1


def wait_counted(port, state_dir, traffic, token=None, **params):
    wait_for(lambda: caught_up(state_dir) and screen_views(port, token, **params)
             == len(traffic.views), timeout=90, what="the worker to count everything")


# --- the reads the OpenAPI document describes, with each parameter it lists

def read_requests(experiences, revision, span):
    """(path, params) for every GET the document lists with a `project` parameter, once
    bare and once with each value of each of its parameters."""
    values = {
        "top": ["1", "3"], "tz": ["America/New_York"], "goal": ["screen-2"],
        "revision": [revision], "sort": None, "format": None, "step": None,
        "from": [span["from"]], "to": [span["to"]], "experienceID": [str(experiences[0])],
    }
    wanted = []
    for path, operations in OPENAPI["paths"].items():
        operation = operations.get("get")
        listed = (operation or {}).get("parameters", [])
        if not any(parameter["name"] == "project" for parameter in listed):
            continue
        listed = [parameter for parameter in listed if parameter["name"] != "project"]
        paths = [path]
        if "{experience_id}" in path:
            paths = [path.replace("{experience_id}", str(experience))
                     for experience in experiences]
        for concrete in paths:
            wanted.append((concrete, {}))
            for parameter in listed:
                name = parameter["name"]
                if parameter["in"] != "query":
                    continue
                choices = values[name] or parameter["schema"]["enum"]
                for choice in choices:
                    params = {name: choice}
                    if name in ("from", "to"):
                        params = dict(span)  # they go together
                    if name == "step" and path == "/series":
                        params = {**span, "step": choice}  # minutes: a range they cover
                    wanted.append((concrete, params))
    return wanted


VOLATILE = {"updated_at", "offset", "partitions", "last_checkpoint_at",
            "checkpoint_age_seconds", "waiting_seconds", "worker", "sdk", "data1_bytes",
            "lag_bytes", "overview_set_aside", "overview_waiting_seconds", "skipped", "mode",
            "project"}


def comparable(path, answer):
    """An answer without what differs between any two engines (times, positions in their
    logs, their processes' own figures). The counts over time date events by when the
    engine received them, which differs between two engines by the moments each was sent
    to: of them, their sum is compared, not the buckets they fell in."""
    if path == "/series":
        if isinstance(answer, bytes):  # CSV: time,count
            return sum(int(line.split(b",")[1]) for line in answer.splitlines()[1:])
        if "points" in answer:  # its from and to, when not asked for, are now's second
            answer = {**answer, "points": sum(count for _, count in answer["points"]),
                      "from": None, "to": None}
    if isinstance(answer, bytes):
        return answer  # CSV: compared byte for byte
    kept = {key: value for key, value in answer.items() if key not in VOLATILE}
    if "error" in kept:  # a time in it may be a receive time (minutes kept from ...)
        kept["error"] = re.sub(r"\d{4}-\d\d-\d\dT[\d:]+Z", "<time>", kept["error"])
    if path == "/stats":
        kept = {key: kept[key] for key in ("events", "experiences")}
    return kept


def same_minute_answers(shared, alone, path, params, token):
    """The answers of both engines within one minute (ranges relative to now move on
    minute boundaries)."""
    for _ in range(5):
        minute = int(time.time() // 60)
        got = get(shared, path, token, **params)
        want = get(alone, path, None, **params)
        if int(time.time() // 60) == minute:
            return got, want
    raise AssertionError("five minutes turned during five pairs of reads")


@pytest.fixture
def engines(procs, tmp_path):
    """The shared engine (a projects file, and the default project's own tokens) and, for
    each project, an engine of its events alone; each fed and caught up."""
    projects_file = tmp_path / "projects.toml"
    projects_file.write_text(projects_toml())
    traffic = project_traffic()
    shared_dir = tmp_path / "shared"
    shared_dir.mkdir()
    settings = {"projects_file": projects_file, "write_tokens": DEFAULT_WRITE,
                "read_tokens": DEFAULT_READ}
    shared = procs.ingest(shared_dir, **settings)
    procs.worker(shared_dir, **settings)
    alone = {}
    for project, (sent, ids) in traffic.items():
        write = TOKENS[project][0] if project else DEFAULT_WRITE
        send(shared.port, sent, ids, write)
        state_dir = tmp_path / f"alone-{project or 'default'}"
        state_dir.mkdir()
        alone[project] = (procs.ingest(state_dir), state_dir)
        procs.worker(state_dir)
        send(alone[project][0].port, sent, ids)
    for project, (sent, _) in traffic.items():
        read = TOKENS[project][1] if project else DEFAULT_READ
        wait_counted(shared.port, shared_dir, sent, read)
        wait_counted(alone[project][0].port, alone[project][1], sent)
    return shared, shared_dir, projects_file, alone, traffic, settings


def assert_isolated(shared, alone, traffic):
    asked = 0
    span = {"from": time.strftime("%Y-%m-%dT00:00:00", time.gmtime(time.time() - 3 * 86400)),
            "to": time.strftime("%Y-%m-%dT00:00:00", time.gmtime(time.time() + 86400))}
    for project, (sent, ids) in traffic.items():
        token = TOKENS[project][1] if project else DEFAULT_READ
        # Its own experiences, and one only another project has (bravo's 4, and 7).
        experiences = sorted({view.experience for view in sent.views} | set(ids) | {4, 7})
        revision = sent.views[0].revision
        for path, params in read_requests(experiences, revision, span):
            (status, got), (want_status, want) = same_minute_answers(
                shared.port, alone[project][0].port, path, params, token)
            assert status == want_status, (project, path, params, got, want)
            assert comparable(path.split("?")[0], got) == comparable(path, want), (
                project, path, params)
            if isinstance(got, dict) and status == 200:
                assert_matches_spec(template_of(path), "GET", status, got)
            asked += 1
    return asked


def template_of(path):
    """The document's path that `path` is one of."""
    return next(template for template in OPENAPI["paths"]
                if re.fullmatch(re.sub(r"\\{[a-z_]+\\}", "[^/]+", re.escape(template)), path))


def test_every_read_of_a_project_answers_what_its_events_alone_give(engines):
    shared, shared_dir, _, alone, traffic, settings = engines
    asked = assert_isolated(shared, alone, traffic)
    assert asked > 200
    # The same after every view is counted again from the log.
    subprocess.run([sys.executable, "-m", "worker", "rebuild"], cwd=REPO, check=False,
                   env=service_env(shared_dir, **settings), capture_output=True)
    assert_isolated(shared, alone, traffic)


def test_an_admin_reads_every_project_and_lists_them(engines):
    shared, shared_dir, projects_file, alone, traffic, _ = engines
    status, listed = get(shared.port, "/projects", ADMIN)
    assert status == 200, listed
    assert_matches_spec("/projects", "GET", status, listed)
    assert [(p["id"], p["name"], p["configured"]) for p in listed["projects"]] == [
        ("default", "default", True), ("alpha", "Alpha", True), ("bravo", "Bravo", True)]
    for project, (_, ids) in traffic.items():
        named = project or "default"
        _, counts = get(shared.port, "/counts", ADMIN, project=named)
        _, want = get(alone[project][0].port, "/counts")
        assert counts["counts"] == want["counts"]
        entry = next(p for p in listed["projects"] if p["id"] == named)
        assert (entry["events"], entry["experiences"]) == (want["events"], want["experiences"])
        _, experiences = get(shared.port, "/experiences", ADMIN, project=named)
        _, want = get(alone[project][0].port, "/experiences")
        assert experiences["experiences"] == want["experiences"]
    # The admin's /stats is the engine's own: every project's events in its log.
    status, stats = get(shared.port, "/stats", ADMIN)
    assert status == 200 and "lag_bytes" in stats
    # So is `python -m worker status`, with a line per project.
    status_lines = subprocess.run([sys.executable, "-m", "worker", "status"], cwd=REPO,
                                  env=service_env(shared_dir), capture_output=True, text=True,
                                  timeout=60).stdout
    for project in ("alpha", "bravo"):
        entry = next(p for p in listed["projects"] if p["id"] == project)
        assert re.search(rf"^project {project} +{entry['events']:,} events, "
                         rf"{entry['experiences']:,} experiences$", status_lines, re.M), status_lines


def test_each_token_reads_and_writes_only_its_own(engines):
    shared, *_ = engines
    alpha_write, alpha_read = TOKENS["alpha"]
    for params in ({"project": "bravo"}, {"project": "default"}):
        status, answer = get(shared.port, "/counts", alpha_read, **params)
        assert status == 403 and answer == {"error": "this token reads project 'alpha' only"}
    assert get(shared.port, "/counts", alpha_read, project="alpha")[0] == 200
    assert get(shared.port, "/projects", alpha_read)[0] == 403
    assert get(shared.port, "/counts", ADMIN, project="Not valid")[0] == 400
    # A write token does not read; a read token does not write; the admin token writes nothing.
    assert get(shared.port, "/counts", alpha_write)[0] == 401
    for token in (alpha_read, ADMIN):
        status, _ = post(shared.port, {"experienceID": 1}, headers={"Judo-Access-Token": token})
        assert status == 401
    # With a projects file, nothing is open.
    assert get(shared.port, "/counts")[0] == 401
    assert post(shared.port, {"experienceID": 1})[0] == 401
    # A project's /stats is its own figures, nothing of the shared log.
    status, stats = get(shared.port, "/stats", alpha_read)
    assert status == 200 and stats["project"] == "alpha", stats
    assert_matches_spec("/stats", "GET", status, stats)
    assert not {"lag_bytes", "data1_bytes", "offset"} & set(stats)


def test_a_token_moved_a_project_renamed_and_removed(engines):
    shared, shared_dir, projects_file, alone, traffic, _ = engines
    alpha_write, alpha_read = TOKENS["alpha"]
    bravo_write, bravo_read = TOKENS["bravo"]

    def counts(token, **params):
        status, answer = get(shared.port, "/counts", token, **params)
        assert status == 200, answer
        return answer["counts"]

    alpha_before, bravo_before = counts(alpha_read), counts(bravo_read)
    # bravo's write token moves to alpha, and bravo is renamed: what bravo's token sends
    # from now on is alpha's; what it sent before stays bravo's.
    moved = {"alpha": ([alpha_write, bravo_write], [alpha_read]), "bravo": ([], [bravo_read])}
    projects_file.write_text(toml_with(moved, {"bravo": "Bravo renamed"}))

    def listed():
        return [(p["id"], p["name"], p["configured"])
                for p in get(shared.port, "/projects", ADMIN)[1]["projects"]]

    wait_for(lambda: ("bravo", "Bravo renamed", True) in listed(),
             what="the ingest to read the projects file again")
    status, _ = post(shared.port, {"experienceID": 500},
                     headers={"Judo-Access-Token": bravo_write})
    assert status == 202
    wait_for(lambda: counts(alpha_read).get("500") == 1, what="alpha to count it")
    assert counts(bravo_read) == bravo_before
    assert {k: v for k, v in counts(alpha_read).items() if k != "500"} == alpha_before
    # bravo removed: its tokens stop working; its figures are kept, for an admin only.
    projects_file.write_text(toml_with({"alpha": moved["alpha"]}))
    wait_for(lambda: get(shared.port, "/counts", bravo_read)[0] == 401,
             what="bravo's read token to be refused")
    assert counts(ADMIN, project="bravo") == bravo_before
    assert ("bravo", "bravo", False) in listed()
    # Put back under the same id, readable again by its token.
    projects_file.write_text(toml_with(moved))
    wait_for(lambda: get(shared.port, "/counts", bravo_read)[0] == 200,
             what="bravo's read token to work again")
    assert counts(bravo_read) == bravo_before


def toml_with(projects, names=None):
    lines = [f'admin_tokens = ["{ADMIN}"]']
    for project, (writes, reads) in projects.items():
        lines += [f"[projects.{project}]", f'name = "{(names or {}).get(project, project)}"',
                  f"write_tokens = {json.dumps(writes)}", f"read_tokens = {json.dumps(reads)}"]
    return "\n".join(lines) + "\n"


# --- the projects file's rules

@pytest.mark.parametrize("text, problem", [
    ("admin_tokens = 3", "admin_tokens must be a list of strings"),
    ('[projects.Shop]\nwrite_tokens = ["shop-write-012345678"]', "a project's id is"),
    ('[projects.default]\nname = "x"', "a project's id is"),
    ('[projects.a]\nwrite_tokens = ["short"]', "token 1: a token must be 16"),
    ('[projects.a]\nwrite_tokens = ["same-token-0123456789"]\n'
     '[projects.b]\nread_tokens = ["same-token-0123456789"]', "given twice"),
    ('[projects.a]\ncolour = "red"', "unknown key 'colour'"),
    ("users = []", "unknown key 'users'"),
    ("[projects.a\n", "not valid TOML"),
])
def test_a_projects_file_that_cannot_be_used_is_named(text, problem):
    with pytest.raises(BadProjects, match=problem):
        parse(text, digest)


def test_a_projects_token_may_not_be_a_default_project_s_token():
    with pytest.raises(BadProjects, match="given twice"):
        parse('[projects.a]\nwrite_tokens = ["same-token-0123456789"]', digest,
              {digest("same-token-0123456789")})


def test_a_bad_projects_file_stops_the_ingest_with_its_reason(procs, tmp_path):
    bad = tmp_path / "projects.toml"
    bad.write_text('[projects.a]\nwrite_tokens = ["short"]\n')
    result = subprocess.run([sys.executable, "-m", "app"], cwd=REPO, capture_output=True,
                            text=True, timeout=60,
                            env=service_env(tmp_path, projects_file=bad))
    assert result.returncode == 2
    assert "MINI_ANALYTICS_PROJECTS_FILE" in result.stderr + result.stdout
    assert "token 1: a token must be 16" in result.stderr + result.stdout


def test_the_dashboard_shows_a_project_and_an_admin_s_picker(engines, tmp_path):
    shared, *_ = engines
    url = f"http://127.0.0.1:{shared.port}/"
    alpha_read = TOKENS["alpha"][1]
    _, alpha = get(shared.port, "/counts", alpha_read)
    _, bravo = get(shared.port, "/counts", ADMIN, project="bravo")

    mine = Page(chromium(tmp_path, "--dump-dom", f"{url}#token={alpha_read}"))
    assert mine.by_id["project-label"] == "project alpha"
    assert mine.by_id["total-events"] == f"{alpha['events']:,}"
    assert {row[0]: row[1] for row in mine.rows} == {
        key: f"{value:,}" for key, value in alpha["counts"].items()}
    screenshot(tmp_path, f"{url}#token={alpha_read}", "dashboard-project.png", 1200, 900)

    dom = chromium(tmp_path, "--dump-dom", f"{url}#token={ADMIN}&project=bravo")
    picker = re.search(r'<select id="project-picker"[^>]*>(.*?)</select>', dom, re.S).group(0)
    assert "hidden" not in picker.split(">")[0]
    assert re.findall(r'<option value="([^"]+)"( selected="")?>([^<]+)', picker) == [
        ("default", "", "default"), ("alpha", "", "Alpha"), ("bravo", ' selected=""', "Bravo")]
    picked = Page(dom)
    assert picked.by_id["total-events"] == f"{bravo['events']:,}"
    assert {row[0]: row[1] for row in picked.rows} == {
        key: f"{value:,}" for key, value in bravo["counts"].items()}
    screenshot(tmp_path, f"{url}#token={ADMIN}&project=bravo", "dashboard-admin.png", 1200, 900)


def test_a_project_s_503_names_no_position_in_the_shared_log(procs, tmp_path):
    """The counts over time being counted again: an admin's 503 names where the log stands
    (an operator's figure), a project's reader's does not (it tells of every project)."""
    projects_file = tmp_path / "projects.toml"
    projects_file.write_text(projects_toml())
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    ingest = procs.ingest(state_dir, projects_file=projects_file)
    worker = procs.worker(state_dir, projects_file=projects_file)
    write, read = TOKENS["alpha"]
    assert post(ingest.port, {"batch": [{"experienceID": 4}] * 3}, path="/batch",
                headers={"Judo-Access-Token": write})[0] == 202
    wait_for(lambda: get(ingest.port, "/series", read)[1].get("points") and sum(
        count for _, count in get(ingest.port, "/series", read)[1]["points"]) == 3,
             what="the series")
    worker.terminate()
    worker.wait(timeout=10)
    store = SeriesStore(state_dir, 48 * 3600)
    store.open("")
    store.reset("")  # as a recount from 0 leaves it, before its first commit
    store.close()
    status, body = get(ingest.port, "/series", ADMIN, project="alpha")
    assert status == 503 and "(offset 0 of " in body["error"], body
    status, body = get(ingest.port, "/series", read)
    assert status == 503 and body["error"].startswith("the figures cannot be read just now")
    assert not re.search(r"\d", body["error"]), body
    assert_matches_spec("/series", "GET", status, body)
