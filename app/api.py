"""The HTTP surface: Bottle routes. Writes turn into appends to the log (data1, or the
partition's stream in cluster mode); reads come from the read side (app/readside.py: data2
and the series store, or the partition checkpoints in cluster mode).

Every response body is JSON (but the dashboard's HTML, and CSV where ?format=csv asks for
it), errors included: {"error": "<what was wrong>"}. A write is answered 202 only after its
records are durable in the log (see storage/log/writer.py and storage/stream/writer.py). The
whole API is described in app/openapi.json.
"""

import collections
import csv
import datetime
import io
import json
import logging
import re
import threading
import time
from pathlib import Path

import bottle
from bottle import HTTPError, request, response

from app import flow_query, overview_query, series_query, validate
from app.access import Access, Tokens
from app.admission import Busy
from app.projects import DEFAULT_NAME
from app.readside import Unavailable
from storage.backend import AppendError
from storage.checkpoint import Checkpoint
from storage.log.format import encode, parse_token
from storage.projects import ID_RULE, is_project_id
from storage.views.overview_store import NoOverview
from storage.views.series_store import ALL, HOUR, MINUTE

HERE = Path(__file__).resolve().parent
DASHBOARD = (HERE / "dashboard.html").read_bytes()
OPENAPI = (HERE / "openapi.json").read_bytes()

log = logging.getLogger("ingest")

EVENT_BODY_LIMIT = 8 * 1024
# The environ key of a server that can hold an answer back until a write is durable
# (app/__main__.py's Channel): hold(ticket). Under any other server a write waits.
HOLD_ANSWER = "mini_analytics.hold_answer"
BATCH_BODY_LIMIT = 1024 * 1024
# The environ key read_grant sets: False for a reader who may not see the engine's own
# figures (a project's reader, with a projects file).
ENGINE_WIDE = "mini_analytics.engine_wide"


def read_body(limit):
    """The request body as bytes; 413 if it is longer than `limit`.

    Read straight from wsgi.input: waitress has already buffered (and de-chunked) the body
    and set CONTENT_LENGTH, so Bottle's own copy into a BytesIO would be wasted work.
    """
    length = request.content_length
    if length > limit:
        raise HTTPError(413, f"body is {length} bytes; the limit is {limit}")
    return request.environ["wsgi.input"].read(length) if length > 0 else b""


def error_body(error):
    if error.status_code >= 500 and error.traceback:
        # Bottle writes an unexpected error's traceback to wsgi.errors (stderr, which only
        # supervisord keeps): the ingest's own log must have it, where its other lines are.
        log.error("%s %s answered 500: %s", request.method, request.path,
                  error.traceback.rstrip().replace("\n", "\n    "))
    message = error.body or error.status_line
    if error.status_code == 405 and error.headers.get("Allow"):
        message = (f"{request.method} is not allowed on {request.path}; it takes "
                   f"{error.headers['Allow'].replace(',', ', ')}")
    response.content_type = "application/json"
    return json.dumps({"error": message}) + "\n"


def json_body(document, status=200):
    response.status = status
    response.content_type = "application/json"
    # Ends with a newline, as text on a terminal should: `curl` leaves the prompt on its own
    # line.
    return json.dumps(document) + "\n"


def csv_body(name, header, rows):
    """A CSV answer (RFC 4180: CRLF line ends) with a header row, which a browser saves as
    `name`.csv rather than showing it."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows([csv_value(value) for value in row] for row in rows)
    response.content_type = "text/csv; charset=utf-8"
    response.set_header("Content-Disposition", f'attachment; filename="{name}.csv"')
    return out.getvalue()


def csv_value(value):
    """`value` as a CSV cell: true and false as the JSON answers spell them, not Python's
    True and False (None is csv's empty cell)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def wants_csv():
    answer_format = request.query.get("format") or "json"
    if answer_format not in ("json", "csv"):
        raise HTTPError(400, f"format must be json or csv, got {answer_format!r}")
    return answer_format == "csv"


def query_params():
    """The query string as a dict, without the parameters given empty (?top=): the API takes
    those as absent, as its document says. A '+' in an unencoded offset
    (from=...T10:00+01:00) arrives as a space, as form encoding says; it is put back."""
    params = {key: value for key in request.query if (value := request.query.get(key))}
    for key in ("from", "to"):
        if params.get(key):
            params[key] = re.sub(r" (\d\d:?\d\d)$", r"+\1", params[key].strip())
    return params


def parse_experience_id(raw):
    parsed = parse_token(raw.encode("utf-8", "replace"))
    if parsed is None:
        raise HTTPError(400, f"experienceID must be an integer from 0 to 2^63-1, got {raw!r}")
    return parsed


# The /stats figures a project's reader sees besides its own: whether its figures are up to
# date, nothing of the log every project shares.
PROJECT_STATS = ("last_checkpoint_at", "checkpoint_age_seconds", "waiting_seconds", "worker")


class ProjectReads:
    """The overview's reader (app/readside.py's OverviewReads) of one project: what
    app/overview_query.py and app/flow_query.py read, none of another project's."""

    def __init__(self, reader, project):
        self.reader = reader
        self.project = project

    def run(self, calls):
        return self.reader.run(calls, self.project)


class SdkTally:
    """What this ingest process has taken from the SDKs since it started, for /stats."""

    def __init__(self):
        self._lock = threading.Lock()
        self.since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.stored = dict.fromkeys(validate.SDK_TYPES, 0)
        self.duplicates = self.rejected = self.clock_flagged = 0

    def add(self, events, fresh, rejected):
        with self._lock:
            for event, new in zip(events, fresh):
                if new:
                    self.stored[event.kind] += 1
                    self.clock_flagged += "clock" in event.item
                else:
                    self.duplicates += 1
            self.rejected += rejected

    def summary(self):
        with self._lock:
            return {"since": self.since, "stored": dict(self.stored),
                    "duplicates": self.duplicates, "rejected": self.rejected,
                    "clock_flagged": self.clock_flagged}


def make_app(eventlog, reads, minute_retention=48 * 3600, access=None, admission=None):
    """The API on `eventlog` (an EventLog or a StreamLog) and `reads` (app/readside.py's
    FileReadSide or app/cluster_readside.py's ClusterReadSide). `access` (app/access.py)
    holds the tokens, none by default; `admission` (app/admission.py) refuses writes under
    overload, none by default."""
    series = reads.series
    access = access or Access(Tokens("write"), Tokens("read"))
    app = bottle.Bottle()
    # No JSON or template plugins: every handler returns its own bytes, which keeps the
    # per-request path short.
    app.uninstall(True)
    app.default_error_handler = error_body

    def authorized(kind):
        """The request's Grant (app/access.py: the project it writes or reads); a 401 if it
        has no token, or one that is not a `kind` token. Checked before the body is read."""
        problem, grant = access.check(kind, request.environ)
        if problem:
            raise HTTPError(401, problem, **{"WWW-Authenticate": 'Bearer realm="mini-analytics"'})
        return grant

    def read_grant():
        """(the project a read is of, whether its reader may see the engine's own figures).
        A project's token reads its project; an admin token (or anyone, with reads open)
        the one ?project= names, the default project without it. Engine-wide figures (the
        log's bytes and positions, every project's SDK totals) are for those who may read
        every project."""
        grant = authorized("read")
        asked = request.query.get("project") or None  # empty: as absent
        if grant.admin:
            if asked is None or asked == DEFAULT_NAME:
                return "", True
            if not is_project_id(asked):
                raise HTTPError(400, f"project must be {DEFAULT_NAME!r} or a project's id "
                                     f"({ID_RULE}), got {asked!r}")
            return asked, True
        own = grant.project or DEFAULT_NAME
        if asked is not None and asked != own:
            raise HTTPError(403, f"this token reads project {own!r} only")
        engine_wide = access.projects is None
        request.environ[ENGINE_WIDE] = engine_wide
        return grant.project, engine_wide

    def unavailable(problem):
        """The 503 of a read that cannot be answered now. Its reason names the log's
        positions (offsets, stream sequences), which tell of every project's events: a
        project's reader gets the reason without them."""
        if request.environ.get(ENGINE_WIDE, True):
            return HTTPError(503, str(problem))
        return HTTPError(503, "the figures cannot be read just now (the worker is counting "
                              "them again, or the cluster is not answering); try again shortly")

    def admit(grant):
        """A place for one write (hand it to release), or a 503 with Retry-After: never a
        4xx, since the SDKs drop a chunk answered 4xx and send one answered 503 again."""
        if admission is None:
            return None
        try:
            return admission.take(request.environ, grant)
        except Busy as busy:
            raise HTTPError(503, str(busy), **{"Retry-After": str(busy.retry_after)}) from None

    def release(place):
        if place is not None:
            admission.release(place)

    def accept(ids, project):
        try:
            eventlog.append(encode(ids, project), request.environ.get(HOLD_ANSWER))
        except AppendError as error:
            raise HTTPError(503, str(error)) from None
        response.status = 202
        response.content_type = "application/json"
        return b'{"accepted": %d}\n' % len(ids)

    def parse(parser, body, *args):
        """parser(body, *args), or the 4xx its Invalid names."""
        try:
            return parser(body, *args)
        except validate.Invalid as invalid:
            raise HTTPError(invalid.status, str(invalid)) from None

    @app.post("/event")
    @app.post("/ingest-api")  # the path the assignment's example uses
    def post_event():
        grant = authorized("write")
        place = admit(grant)
        try:
            return accept((parse(validate.parse_event, read_body(EVENT_BODY_LIMIT)),),
                          grant.project)
        finally:
            release(place)

    sdk = SdkTally()  # every project's
    sdk_of = collections.defaultdict(SdkTally)  # each project's: project -> SdkTally

    def accept_sdk_batch(batch, received, body, project):
        """Store what is new of an SDK batch; answer what was taken, what repeated an event
        taken before, and what was left out and why."""
        whole = not batch.ids and not batch.rejected  # the body's batch is exactly the events
        try:
            fresh = eventlog.append_events(batch.ids, batch.events, received,
                                           body if whole else None,
                                           request.environ.get(HOLD_ANSWER), project)
        except AppendError as error:
            raise HTTPError(503, str(error)) from None
        for tally in (sdk, sdk_of[project]):
            tally.add(batch.events, fresh, len(batch.rejected))
        duplicates = [{"index": event.index, "id": event.event_id}
                      for event, new in zip(batch.events, fresh) if not new]
        return json_body({
            "accepted": len(batch.ids) + len(batch.events),
            "stored": len(batch.ids) + len(batch.events) - len(duplicates),
            "duplicates": duplicates,
            "rejected": [{"index": index, "id": event_id, "error": reason}
                         for index, event_id, reason in batch.rejected],
        }, 202)

    @app.post("/batch")
    def post_batch():
        # apiVersion (?apiVersion=N, which the SDKs send) is accepted and needs no reading:
        # every version's events have the shape validate.py takes.
        grant = authorized("write")
        place = admit(grant)
        try:
            received = time.time()
            body = read_body(BATCH_BODY_LIMIT)
            batch = parse(validate.parse_batch, body, received)
            if not batch.events and not batch.rejected:
                return accept(batch.ids, grant.project)
            return accept_sdk_batch(batch, received, body, grant.project)
        finally:
            release(place)

    def available(read, *args):
        """read(*args), or a 503 naming why the read side cannot answer now."""
        try:
            return read(*args)
        except Unavailable as problem:
            raise unavailable(problem) from None

    def committed(with_position=False):
        """The latest counts (before the worker's first commit, empty ones); with
        `with_position`, and where they stand in the log."""
        return available(reads.committed_at if with_position else reads.committed)

    def counted_in_range(params, project):
        """The counts of `project`'s events that happened in [from, to), as a Checkpoint to
        serve, and where they stand in the log."""
        try:
            tz, _ = series_query.parse_zone(params.get("tz"))
            if not (params.get("from") and params.get("to")):
                raise series_query.BadQuery("from and to go together: give both")
            start = series_query.parse_time(params["from"], "from", tz).timestamp()
            end = series_query.parse_time(params["to"], "to", tz).timestamp()
            if start >= end:
                raise series_query.BadQuery("from must be before to")
        except series_query.BadQuery as problem:
            raise HTTPError(400, str(problem)) from None
        state = series_state(project)
        # Whole hours come from the hour buckets (kept for good); anything finer needs the
        # minute buckets, kept for the last minute_retention of data.
        if start % HOUR == 0 and end % HOUR == 0:
            step = HOUR
        elif start % MINUTE == 0 and end % MINUTE == 0:
            check_minutes_kept(start, state)
            step = MINUTE
        else:
            raise HTTPError(400, "from and to must fall on whole minutes")
        counts = available(series.counts, step, int(start), int(end), project)
        return Checkpoint(counts=counts), series.position(state)

    def series_state(project):
        """The series store's state, its newest minute `project`'s (whose minute buckets
        are kept back from it)."""
        state = available(reads.series_state, project)
        if state is None:
            raise HTTPError(503, "no counts over time yet: the worker has not created "
                                 "series.sqlite3 (is MINI_ANALYTICS_SERIES off?)")
        return state

    def check_minutes_kept(start, state):
        oldest = state.newest_minute - minute_retention
        if start < oldest:
            kept = datetime.datetime.fromtimestamp(oldest, datetime.timezone.utc)
            raise HTTPError(400, f"minute buckets are kept from {kept:%Y-%m-%dT%H:%M:%SZ} on "
                                 f"({minute_retention / 3600:g} h before the newest event); "
                                 "ask for whole hours, or step=hour")

    @app.get("/counts")
    def get_counts():
        project, engine_wide = read_grant()
        params = query_params()
        csv_wanted = wants_csv()
        ranged = bool(params.get("from") or params.get("to"))  # empty is absent, as in /series
        if ranged:
            checkpoint, position = counted_in_range(params, project)
        else:
            checkpoint, position = committed(with_position=True)
            if project:
                checkpoint = Checkpoint(counts=checkpoint.counts_of(project),
                                        updated_at=checkpoint.updated_at)
        if not engine_wide:
            position = {}  # where the log stands tells of every project's events
        top = params.get("top")
        if top is None:
            items = sorted(checkpoint.counts.items())
        elif top.isascii() and top.isdigit() and 0 < int(top) <= 10**9:
            items = checkpoint.top(int(top))
        else:
            raise HTTPError(400, f"top must be a positive integer, got {top!r}")
        if csv_wanted:
            return csv_body("counts", ["experienceID", "count"], items)
        document = {
            "counts": {str(key): value for key, value in items},
            **position,
            "events": checkpoint.events,
            "experiences": len(checkpoint.counts),
            "updated_at": checkpoint.updated_at or None,
        }
        if ranged:
            document.update({"from": params["from"], "to": params["to"]})
        return json_body(document)

    @app.get("/counts/<experience_id>")
    def get_count(experience_id):
        project, _ = read_grant()
        parsed = parse_experience_id(experience_id)
        return json_body({"experienceID": parsed,
                          "count": committed().counts_of(project).get(parsed, 0)})

    @app.get("/series")
    def get_series():
        project, _ = read_grant()
        params = query_params()
        csv_wanted = wants_csv()
        experience = params.get("experienceID")
        experience = None if experience is None else parse_experience_id(experience)
        now = datetime.datetime.now(datetime.timezone.utc)
        try:
            query = series_query.parse(params, now, experience)
        except series_query.BadQuery as problem:
            raise HTTPError(400, str(problem)) from None
        state = series_state(project)
        if query.step == "minute":
            check_minutes_kept(query.start.timestamp(), state)
        which = ALL if experience is None else experience
        points = series_query.points(
            query,
            lambda step, start, end: available(series.buckets, step, which, start, end, project))
        if csv_wanted:
            return csv_body("series", ["time", "count"], points)
        return json_body({
            "step": query.step,
            "from": query.start.isoformat(timespec="seconds"),
            "to": query.end.isoformat(timespec="seconds"),
            "tz": query.tz_name,
            "experienceID": experience,
            "points": points,
        })

    def overview(project, answer, *args):
        """answer(the overview's reader of `project`, *args), or a 503 naming why it cannot
        be read now."""
        try:
            return answer(ProjectReads(reads.overview, project), *args)
        except (NoOverview, Unavailable) as problem:
            raise unavailable(problem) from None

    def overview_query_of(params):
        try:
            return overview_query.parse(params, datetime.datetime.now(datetime.timezone.utc))
        except overview_query.BadQuery as problem:
            raise HTTPError(400, str(problem)) from None

    @app.get("/experiences")
    def get_experiences():
        project, _ = read_grant()
        params = query_params()
        csv_wanted = wants_csv()
        query = overview_query_of(params)
        document = overview(project, overview_query.experiences, query)
        if csv_wanted:
            return csv_body("experiences", overview_query.CSV_COLUMNS, overview_query.csv_rows(
                document["experiences"], overview_query.CSV_COLUMNS))
        return json_body(document)

    def flow_query_of(params):
        for key in ("goal", "revision"):  # ids of any text: UTF-8 in the query string
            if params.get(key):
                try:
                    params[key] = params[key].encode("latin-1").decode("utf-8")
                except UnicodeError:
                    raise HTTPError(400, f"{key} must be UTF-8 text") from None
        try:
            return flow_query.parse(params, datetime.datetime.now(datetime.timezone.utc))
        except overview_query.BadQuery as problem:
            raise HTTPError(400, str(problem)) from None

    def one_experience(experience_id, parse, answer, csv_name, csv_part):
        """answer(the overview's reader, parse(the query's parameters), the id) as JSON, or
        as CSV: the document's list and columns csv_part(query) names."""
        project, _ = read_grant()
        parsed = parse_experience_id(experience_id)
        params = query_params()
        csv_wanted = wants_csv()
        query = parse(params)
        document = overview(project, answer, query, parsed)
        if csv_wanted:
            key, columns = csv_part(query)
            return csv_body(f"experience-{parsed}{csv_name}", columns,
                            overview_query.csv_rows(document[key], columns))
        return json_body(document)

    @app.get("/experiences/<experience_id>")
    def get_experience(experience_id):
        return one_experience(experience_id, overview_query_of, overview_query.experience, "",
                              lambda query: ("points", overview_query.POINT_COLUMNS))

    @app.get("/experiences/<experience_id>/flow")
    def get_flow(experience_id):
        return one_experience(experience_id, flow_query_of, flow_query.flow, "-flow",
                              lambda query: ("screens", flow_query.SCREEN_COLUMNS))

    @app.get("/experiences/<experience_id>/revisions")
    def get_revisions(experience_id):
        return one_experience(experience_id, flow_query_of, flow_query.revisions, "-revisions",
                              lambda query: ("revisions", flow_query.revision_columns(query)))

    @app.get("/healthz/ingest")
    def get_ingest_health():
        """Can this node accept writes? What a load balancer should probe."""
        problem = eventlog.problem()
        if problem:
            return json_body({"status": "unavailable", "error": problem}, 503)
        notes = eventlog.notes()
        return json_body({"status": "ok", **({"notes": notes} if notes else {})})

    @app.get("/healthz")
    def get_health():
        """Is the whole system taking and counting events? What a monitor should probe."""
        problem = eventlog.problem()
        if problem:
            return json_body({"status": "unavailable", "error": problem}, 503)
        try:
            problem, details = reads.health()
        except Unavailable as unavailable:
            return json_body({"status": "unavailable", "error": str(unavailable)}, 503)
        if problem:
            return json_body({"status": "unavailable", "error": problem, **details}, 503)
        return json_body({"status": "ok", **details})

    def overview_figures():
        """(SDK events the overview read and could not count: worker/overview.py's set
        aside; how long the oldest it has not counted has waited, in seconds), each None
        while it cannot be known. The workers are asked for their stores' states once."""
        try:
            states = reads.overview_states()
        except (NoOverview, Unavailable):
            return None, None
        set_aside = sum(state.set_aside for state in states.values())
        try:
            return set_aside, round(reads.overview_waiting(states), 1)
        except Unavailable:
            return set_aside, None

    @app.get("/stats")
    def get_stats():
        project, engine_wide = read_grant()
        stats = available(reads.stats)
        if engine_wide:
            set_aside, waiting = overview_figures()
            document = {**stats, "sdk": sdk.summary(), "overview_set_aside": set_aside,
                        "overview_waiting_seconds": waiting}
            if project:  # an admin's read of one project: its figures, the engine's state
                counts = committed().counts_of(project)
                document.update(project=project, events=sum(counts.values()),
                                experiences=len(counts))
            return json_body(document)
        # One project's reader: its own figures, and whether they are up to date.
        counts = committed().counts_of(project)
        return json_body({
            "mode": stats["mode"], "project": project or DEFAULT_NAME,
            "events": sum(counts.values()), "experiences": len(counts),
            **{key: stats[key] for key in PROJECT_STATS if key in stats},
            "sdk": sdk_of[project].summary()})

    @app.get("/projects")
    def get_projects():
        """Every project: those of the projects file, and those with events that are in it
        no longer (their figures are kept; only an admin token reads them)."""
        if not authorized("read").admin:
            raise HTTPError(403, "only an admin token lists the projects")
        checkpoint = committed()
        configured = access.projects.projects if access.projects else {}
        listed = [{"id": DEFAULT_NAME, "name": DEFAULT_NAME, "configured": True,
                   "events": checkpoint.events, "experiences": len(checkpoint.counts)}]
        for project_id in sorted(set(configured) | set(checkpoint.projects)):
            counts = checkpoint.counts_of(project_id)
            known = configured.get(project_id)
            listed.append({"id": project_id, "name": known.name if known else project_id,
                           "configured": known is not None,
                           "events": sum(counts.values()), "experiences": len(counts)})
        return json_body({"projects": listed})

    @app.get("/")
    def get_dashboard():
        response.content_type = "text/html; charset=utf-8"
        return DASHBOARD

    @app.get("/openapi.json")
    def get_openapi():
        response.content_type = "application/json"
        return OPENAPI

    return app
