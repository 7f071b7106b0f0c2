"""The counted columns (storage/log/counted.py): the overview counted from the columns the
ingest writes beside the events is the overview counted from the events themselves, in both
stores, for every project; a section that breaks its format never stops the counting."""

import base64
import collections
import itertools
import json
import os
import pathlib
import struct
import tempfile
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.validate import parse_batch
from bench import traffic as generator
from storage.backend import event_key
from storage.layout import Layout
from storage.log import counted, details
from storage.log.writer import EventLog
from storage.stream import sdk_message
from storage.views.overview_facts import FactReader, FactStore
from storage.views.overview_store import OverviewReader, OverviewStore
from test_flows import flows
from test_overview import END, QUERIES, RECEIVED, TIMEOUT, answers, count, store_rows
from test_overview_facts import count_facts
from worker.columns import SCREEN
from worker.overview import FactCounter, OverviewCounter
from worker.sdk_events import SdkEvents


@pytest.fixture(scope="module")
def traffic():
    return generator.generate(seed=11, devices=90, experiences=5, days=3, end=END)


def ingest(root, batches, columns=True, project_of=lambda number: ""):
    """Append each batch as POST /batch would, with or without the counted columns; batch
    number n into project_of(n)."""
    log = EventLog(root / "data1", details=root / "data1.details", seen=root / "data1.seen",
                   dedupe_window=30 * 86400, clock=lambda: RECEIVED)
    if not columns:
        log_encode, counted.encode = counted.encode, lambda project, events: b""
    try:
        for number, (_, events) in enumerate(batches):
            body = json.dumps({"batch": events}).encode()
            batch = parse_batch(body, RECEIVED)
            log.append_events(batch.ids, batch.events, RECEIVED, body,
                              project=project_of(number))
    finally:
        if not columns:
            counted.encode = log_encode
        log.close()


def groups(root):
    fd = os.open(root / "data1.details", os.O_RDONLY)
    try:
        return list(details.read_groups(fd))
    finally:
        os.close(fd)


def both(tmp_path, traffic, **options):
    """Two state folders of the same traffic: with the columns, and without."""
    with_columns, without = tmp_path / "columns", tmp_path / "events"
    for root, columns in ((with_columns, True), (without, False)):
        root.mkdir()
        ingest(root, traffic.batches, columns, **options)
    assert all(group.columns for group in groups(with_columns))
    assert not any(group.columns for group in groups(without))
    return with_columns, without


def facts(root):
    store = FactStore(Layout(root).overview_facts)
    store.open(TIMEOUT)
    return store


def test_overview_sqlite3_from_the_columns_is_the_one_from_the_events(tmp_path, traffic):
    with_columns, without = both(tmp_path, traffic)
    for root in (with_columns, without):
        count(root, session_timeout=TIMEOUT)
    assert answers(with_columns, QUERIES) == answers(without, QUERIES)
    assert flows(with_columns, traffic) == flows(without, traffic)
    names = [OverviewReader(root).run([("names", None)]) for root in (with_columns, without)]
    assert names[0] == names[1] and names[0][0]


def test_overview_duckdb_from_the_columns_is_the_one_from_the_events(tmp_path, traffic):
    with_columns, without = both(tmp_path, traffic)
    stores = []
    for root in (with_columns, without):
        count(root, session_timeout=TIMEOUT, overview_store="duckdb")
        stores.append(facts(root))
    try:
        documents = [answers(root, QUERIES, reader=FactReader(store))
                     for root, store in zip((with_columns, without), stores)]
        assert documents[0] == documents[1]
        assert (flows(with_columns, traffic, reader=FactReader(stores[0]))
                == flows(without, traffic, reader=FactReader(stores[1])))
        assert tables(stores[0]) == tables(stores[1])
    finally:
        for store in stores:
            store.close()


def tables(store):
    """Everything overview.duckdb holds, codes and keys replaced by what they stand for (a
    default project's experience is its own key)."""
    db = store.db
    keyed = ("LEFT JOIN experience_key AS k ON k.key = {0}.experience",
             "coalesce(k.project, ''), coalesce(k.experience, {0}.experience)")
    return {
        "facts": collections.Counter(db.execute(
            f"SELECT {keyed[1].format('f')}, f.moment, f.device, f.carried, s.text, r.text "
            f"FROM fact AS f {keyed[0].format('f')} "
            "JOIN text AS s ON s.code = f.screen JOIN text AS r ON r.code = f.revision"
        ).fetchall()),
        "sessions": collections.Counter(db.execute(
            f"SELECT {keyed[1].format('t')}, t.device, t.first, t.last, t.views "
            f"FROM session AS t {keyed[0].format('t')}").fetchall()),
        "links": sorted(db.execute("SELECT * FROM link").fetchall()),
        "persons": sorted(db.execute("SELECT * FROM person").fetchall()),
        "names": sorted(db.execute(
            f"SELECT {keyed[1].format('n')}, n.screen, max(n.moment), "
            f"arg_max(n.name, (n.moment, n.name)) FROM name AS n {keyed[0].format('n')} "
            "GROUP BY ALL").fetchall()),
        "state": db.execute("SELECT events, set_aside FROM state").fetchall(),
    }


@pytest.mark.parametrize("commit_events", [7, 10**6])
def test_projects_keep_apart_in_the_columns(tmp_path, traffic, commit_events):
    """A third of the batches in each of three projects (the same installs, users and
    experiences in each): the facts counted from the columns, commit by commit, are those
    counted from the events."""
    with_columns, without = both(tmp_path, traffic,
                                 project_of=lambda number: ["", "shop", "blog"][number % 3])
    found = []
    for root in (with_columns, without):
        counter = count_facts(root, commit_events)
        found.append(tables(counter.store))
        counter.close()
    assert {project for project, *_ in found[0]["facts"]} == {"", "shop", "blog"}
    assert found[0] == found[1]


@pytest.mark.parametrize("store", ["sqlite", "duckdb"])
def test_groups_from_before_the_columns_count_beside_them(tmp_path, traffic, store):
    """An engine upgraded halfway: the first half of the traffic's groups without their
    columns, the rest with them, counted in one pass (commits holding both): the overview
    is the one counted from the events alone."""
    upgraded, without = tmp_path / "upgraded", tmp_path / "events"
    upgraded.mkdir()
    without.mkdir()
    half = len(traffic.batches) // 2
    ingest(upgraded, traffic.batches[:half], columns=False)
    before = len(groups(upgraded))
    ingest(upgraded, traffic.batches[half:])
    ingest(without, traffic.batches, columns=False)
    flags = [group.columns is not None for group in groups(upgraded)]
    assert flags == [False] * before + [True] * (len(flags) - before) and before < len(flags)
    documents = []
    for root in (upgraded, without):
        count(root, session_timeout=TIMEOUT, overview_store=store)
        if store == "duckdb":
            facts_store = facts(root)
            documents.append((answers(root, QUERIES, reader=FactReader(facts_store)),
                              tables(facts_store)))
            facts_store.close()
        else:
            documents.append(answers(root, QUERIES))
    assert documents[0] == documents[1]


def test_the_latest_names_from_the_columns_are_the_ones_from_the_events(tmp_path):
    """Names of one experience and its screen from several installs and requests: the
    latest moment's wins, a tie of moments goes to the greater name, an empty name names
    nothing however late, in one commit and across commits, counted from the columns as
    from the events."""
    def named(number, device, second, experience_name, name, screen_id="home"):
        event = screen(number, anonymous=device)
        event["timestamp"] = f"2026-11-03T11:00:{second:02d}Z"
        event["properties"].update(id=screen_id, experienceName=experience_name, name=name)
        return event

    batches = [("a", [named(1, "a", 10, "Bienvenue", "Accueil"),
                      named(2, "a", 10, "Welcome", "Home", "other")]),
               ("b", [named(3, "b", 10, "Willkommen", "Start")]),
               ("c", [named(4, "c", 5, "Zzz, earlier", "Zzz, earlier")]),
               ("a", [named(5, "a", 10, "Benvenuto", "Casa", "other")]),
               ("d", [named(6, "d", 10, "Bienvenue", "Über", "third"),
                      named(7, "d", 20, "", "", "third")])]
    found = []
    for root in both(tmp_path, collections.namedtuple("Traffic", "batches")(batches)):
        for commit_events in (2, 10**6):
            counter = count_facts(root, commit_events)
            found.append(tables(counter.store)["names"])
            counter.close()
            Layout(root).overview_facts.unlink()
    moment = 1793703610  # 2026-11-03T11:00:10Z
    assert found == [[("", 7, "", moment, "Willkommen"), ("", 7, "home", moment, "Start"),
                      ("", 7, "other", moment, "Home"),
                      ("", 7, "third", moment, "Über")]] * 4


# A screen view's names (None: the property left out), few enough that names tie and
# repeat; moments from two seconds, so that ties of moments are common.
_NAMES = st.sampled_from([None, "", "A", "B", "Ä", "z", "Ω"])
_NAMED_VIEW = st.tuples(st.sampled_from(["7", "8"]), st.sampled_from(["home", "other", None]),
                        st.sampled_from([5, 10]), _NAMES, _NAMES)


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.lists(_NAMED_VIEW, min_size=1, max_size=6), min_size=1,
                        max_size=6),
       commit_events=st.sampled_from([1, 3, 10**6]))
def test_any_names_from_the_columns_are_the_ones_from_the_events(batches, commit_events):
    """Whatever the names of a few experiences' screen views, their moments and how they
    are sent and committed: the latest names counted from the columns are the ones counted
    from the events."""
    number = itertools.count()

    def view(experience, screen_id, second, experience_name, name):
        event = screen(next(number), anonymous=f"device-{second}")
        event["timestamp"] = f"2026-11-03T11:00:{second:02d}Z"
        properties = event["properties"]
        properties["experienceID"] = experience
        for field, value in (("id", screen_id), ("experienceName", experience_name),
                             ("name", name)):
            if value is None:
                del properties[field]
            else:
                properties[field] = value
        return event

    sent = [("device", [view(*fields) for fields in batch]) for batch in batches]
    with tempfile.TemporaryDirectory() as folder:
        found = []
        for root in both(pathlib.Path(folder), collections.namedtuple("Traffic", "batches")(sent)):
            counter = count_facts(root, commit_events)
            found.append(tables(counter.store)["names"])
            counter.close()
    assert found[0] == found[1]


def sdk_events(root, events):
    """Ingest one batch of `events` into `root` with its columns; its group."""
    body = json.dumps({"batch": events}).encode()
    batch = parse_batch(body, RECEIVED)
    root.mkdir(exist_ok=True)
    log = EventLog(root / "data1", details=root / "data1.details", seen=root / "data1.seen",
                   dedupe_window=86400, clock=lambda: RECEIVED)
    log.append_events(batch.ids, batch.events, RECEIVED, body)
    log.close()
    [group] = groups(root)
    return group


def screen(number, anonymous="device-1", user=None):
    event = {"id": f"event-{number}", "type": "screen", "anonymousID": anonymous,
             "timestamp": "2026-11-03T11:00:00Z",
             "properties": {"experienceID": "7", "id": f"s{number}", "name": "Home",
                            "experienceName": "Welcome", "experienceRevisionID": "r1"}}
    if user:
        event["userID"] = user
    return event


def with_columns(group, columns):
    """`group` with `columns` in place of its section."""
    return details.Group(group.data1_start, group.data1_end, group.data1_crc,
                         group.received_ms, columns + group.payload, group.end)


def damaged(section, row, field, value):
    """`section` with `field` of row `row` (an index of counted.ROW's fields) set to
    `value`."""
    head = counted.HEAD.size + row * counted.ROW.size
    fields = list(counted.ROW.unpack_from(section, head))
    fields[field] = value
    return section[:head] + counted.ROW.pack(*fields) + section[head + counted.ROW.size:]


@pytest.mark.parametrize("field, value", [
    (4, 99),          # a screen past the texts
    (7, 99),          # a screen name past the texts
    (0, -1000),       # a time before 1970
    (0, 2**40 * 1000),  # a time past the rule's range
    (1, -5),          # an experienceID out of range
])
@pytest.mark.parametrize("counter_type", [OverviewCounter, FactCounter])
def test_a_row_out_of_range_is_set_aside_and_the_rest_counted(tmp_path, field, value,
                                                                counter_type):
    group = sdk_events(tmp_path, [screen(1, user="ann"), screen(2), screen(3)])
    group = with_columns(group, counted.seal(damaged(group.columns, 1, field, value),
                                             group.head))
    read = SdkEvents()
    read.read_group(group)
    store = (FactStore(tmp_path / "overview.duckdb") if counter_type is FactCounter
             else OverviewStore(tmp_path))
    counter = counter_type(store, TIMEOUT, "data1.details")
    counter.open()
    counter.count(read, b"details", group.end, group.data1_end)
    assert read.events == 3
    assert [why for _, why in read.set_aside] == [
        "its counted columns are out of range (an index past their texts, or a time or "
        "experienceID out of range)"]
    assert read.screen_views() == 2
    counter.close()


def first_format(columns):
    """`columns` as the first format wrote them: an index for the install and the user, in
    place of their keys, and their texts among the others."""
    section = counted.read(counted.seal(columns), alone=True)  # sealed as a message's
    rows = [counted.ROW.unpack_from(section.rows, at * counted.ROW.size)
            for at in range(section.count)]
    texts = section.texts + ["device-1", "ann"]  # THREE's install and user
    old_row = struct.Struct("<qq6H")
    body = b"".join(old_row.pack(time_ms, experience, len(texts) - 2,
                                 len(texts) - 1 if carried else 0, *indexes)
                    for time_ms, experience, _, carried, *indexes in rows)
    rest = body + json.dumps(texts, separators=(",", ":")).encode()
    return counted.HEAD.pack(counted.FIRST_MARK, section.count, len(rest)) + rest


def unsealed(columns):
    """`columns` as the format before wrote them: without their CRC."""
    mark, rows, rest = counted.HEAD.unpack_from(columns)
    return (counted.HEAD.pack(counted.UNSEALED_MARK, rows, rest - counted.SEAL.size)
            + columns[counted.HEAD.size:-counted.SEAL.size])


def test_a_section_of_the_format_before_is_read(tmp_path):
    """Without a CRC of its own (its group's covers it): read as a section, and counted as
    the sealed one is."""
    group = sdk_events(tmp_path, THREE)
    older = with_columns(group, unsealed(group.columns))
    assert older.payload == group.payload and older.columns is not None
    found = []
    for one in (group, older):
        read = SdkEvents()
        read.read_group(one)
        assert len(read.sections) == 1 and not read.views
        read.columns_as_views()
        found.append((read.events, sorted(read.views), sorted(read.links)))
    assert found[0] == found[1]


def test_a_section_of_the_first_format_is_found_and_not_read(tmp_path):
    """Its length found (the JSON after it is the group's payload), its rows not read: its
    events are read instead."""
    group = sdk_events(tmp_path, THREE)
    older = with_columns(group, first_format(group.columns))
    assert older.payload == group.payload and older.columns is not None
    assert counted.read(older.stored) is None


def test_requests_listing_the_same_texts_are_read_as_one_list(tmp_path):
    """Two installs' requests through the same screens: their sections share one list of
    texts (counted.read's `known`), so a commit decodes and numbers it once; their keys
    stay apart."""
    first = sdk_events(tmp_path / "a", [screen(1, anonymous="device-a")])
    second = sdk_events(tmp_path / "b", [screen(1, anonymous="device-b")])
    read = SdkEvents()
    for group in (first, second):
        read.read_group(group)
    assert read.sections[0].texts is read.sections[1].texts
    [rows] = read.columns()
    devices = rows.device.tolist()
    assert len(set(devices)) == 2 and rows.text_of(SCREEN, rows.views(), "") == ["s1", "s1"]


def resized(columns, cut):
    """`columns` with its last `cut` bytes left out, and its length saying so."""
    mark, rows, rest = counted.HEAD.unpack_from(columns)
    return counted.HEAD.pack(mark, rows, rest - cut) + columns[counted.HEAD.size:-cut]


THREE = [screen(1, user="ann"), screen(2), screen(3)]


@pytest.mark.parametrize("section", [
    lambda columns: resized(columns, 3),                     # texts cut short
    lambda columns: resized(columns, len(columns) - 14),     # rows cut short
    lambda columns: counted.HEAD.pack(counted.MARK, 3, 0),   # no rows, no texts
    first_format,                                            # the format before this one
    lambda columns: columns.replace(b'["",', b'[70,'),       # a project that is not text
    lambda columns: counted.encode("No Such!", parse_batch(  # nor a project's id
        json.dumps({"batch": THREE}).encode(), RECEIVED).events),
    lambda columns: columns[:-1] + bytes([columns[-1] ^ 1]),  # a CRC that does not match
])
def test_a_section_that_does_not_read_is_counted_from_the_events(tmp_path, section):
    group = sdk_events(tmp_path, THREE)
    intact = SdkEvents()
    intact.read_group(group)
    assert intact.sections and not intact.views
    group = with_columns(group, section(group.columns))
    read = SdkEvents()
    read.read_group(group)
    assert not read.sections and read.events == 3 and not read.set_aside
    intact.columns_as_views()
    assert sorted(read.views) == sorted(intact.views)
    assert sorted(read.links) == sorted(intact.links)


def details_file(path, groups, tail=b""):
    """A details file of `groups` (details.Group), each framed as the ingest frames one, and
    `tail` after them; its descriptor, and where each group ends."""
    parts, ends = [details.HEADER.pack(details.MAGIC, details.VERSION, bytes(16), 0)], []
    for group in groups:
        body = details.GROUP.pack(group.data1_start, group.data1_end, group.data1_crc,
                                  group.received_ms) + group.stored
        parts.append(details.FRAME.pack(len(body), zlib.crc32(body)) + body)
        ends.append(sum(map(len, parts)))
    path.write_bytes(b"".join(parts) + tail)
    return os.open(path, os.O_RDONLY), ends


def stretches(fd, data1_end, events):
    """read_stretch's stretches from the first group on, each asking for `events` rows,
    until one has ended; and the SdkEvents they were read into."""
    read, found, offset = SdkEvents(), [], details.HEADER.size
    while not found or not found[-1].ended:
        found.append(read.read_stretch(fd, offset, data1_end, events))
        offset = found[-1].end
    return found, read


def as_views(read):
    read.columns_as_views()
    return read.events, sorted(read.views), sorted(read.links), read.set_aside


@pytest.mark.parametrize("section", [
    lambda columns: columns,                                 # intact
    lambda columns: resized(columns, 3),                     # texts cut short
    lambda columns: counted.HEAD.pack(counted.MARK, 3, 0),   # no rows, no texts
    first_format,                                            # the format before this one
    lambda columns: columns.replace(b'["",', b'[70,'),       # a project that is not text
    lambda columns: counted.encode("No Such!", parse_batch(  # nor a project's id
        json.dumps({"batch": THREE}).encode(), RECEIVED).events),
    lambda columns: columns.replace(b'["",', b'["ab",'),     # its JSON not found
    lambda columns: columns + b"x",                          # nor here
    lambda columns: b"",                                     # none: the JSON alone
    lambda columns: columns[:-1] + bytes([columns[-1] ^ 1]),  # its CRC does not match
    unsealed,                                                # the format before
])
@pytest.mark.parametrize("last", ["later", "torn"])
def test_the_catch_up_reads_a_stretch_as_each_group_is_read(tmp_path, section, last):
    """details.read_stretch, the catch-up's reading, reads each group as read_group does, a
    stretch ending where its rows reach the number asked for, or at a group without a sealed
    section to count (left to read_group); and it stops at a group whose data1 bytes are
    past those read, or one that is not intact."""
    group = sdk_events(tmp_path / "state", THREE)
    odd = with_columns(group, section(group.columns))
    kept = [group, odd, group]
    later = details.Group(group.data1_end, group.data1_end + 10, 0, RECEIVED, group.stored, 0)
    torn = details.FRAME.pack(len(group.stored) + details.GROUP.size, 0) + group.stored
    fd, ends = details_file(tmp_path / "data1.details",
                            kept + [later] if last == "later" else kept,
                            b"" if last == "later" else torn)
    try:
        each, whole = SdkEvents(), 0  # whole: the groups read_stretch leaves to read_group
        for one in kept:
            sections = len(each.sections)
            each.read_group(one)
            whole += len(each.sections) == sections or one.columns[0] != counted.MARK
        expected = as_views(each)
        for events in (1, 3, 4, 100):
            found, read = stretches(fd, group.data1_end, events)
            assert as_views(read) == expected
            assert [stretch.ended for stretch in found] == [False] * (len(found) - 1) + [True]
            assert found[-1].end == ends[2]
            read_to = [(stretch.end, stretch.data1_end) for stretch in found
                       if stretch.data1_end is not None]
            assert read_to[-1] == (ends[2], group.data1_end)
            # A stretch ends at the rows asked for, or at a group to read by its JSON.
            for stretch in found[:-1]:
                assert stretch.events >= events or stretch.group is not None
            assert sum(stretch.group is not None for stretch in found) == whole
    finally:
        os.close(fd)


def test_the_catch_up_checks_what_it_reads(tmp_path):
    """A sealed section's CRC covers its group's head and itself: read_stretch counts it
    even when the group's JSON, which it does not read, is damaged (read_groups stops at
    such a group), and stops at a group whose head is damaged, or whose JSON is damaged and
    to be read."""
    group = sdk_events(tmp_path / "state", THREE)
    path = tmp_path / "data1.details"
    fd, ends = details_file(path, [group, group, group])
    os.close(fd)
    damaged_bytes = bytearray(path.read_bytes())
    damaged_bytes[ends[0] - 2] ^= 1  # in the first group's JSON
    damaged_bytes[ends[1] + details.FRAME.size + 8] ^= 1  # the third group's data1_end
    path.write_bytes(damaged_bytes)
    fd = os.open(path, os.O_RDONLY)
    try:
        found, read = stretches(fd, 2**40, 100)
        assert read.events == 6 and len(read.sections) == 2
        assert found[-1].ended and found[-1].end == ends[1]
        assert list(details.read_groups(fd)) == []
    finally:
        os.close(fd)
    # A group whose sealed section is not to be counted (not a project's) is read whole,
    # so it is checked whole: its JSON damaged, the reading stops before it.
    elsewhere = counted.seal(counted.encode("No Such!", parse_batch(
        json.dumps({"batch": THREE}).encode(), RECEIVED).events), group.head)
    fd, ends = details_file(path, [group, with_columns(group, elsewhere)])
    os.close(fd)
    damaged_bytes = bytearray(path.read_bytes())
    damaged_bytes[ends[1] - 2] ^= 1  # in the second group's JSON
    path.write_bytes(damaged_bytes)
    fd = os.open(path, os.O_RDONLY)
    try:
        found, read = stretches(fd, 2**40, 100)
        assert read.events == 3 and not read.set_aside and not read.views
        assert all(stretch.group is None for stretch in found)
        assert found[-1].ended and found[-1].end == ends[0]
    finally:
        os.close(fd)


def test_a_section_whose_length_does_not_add_up_sets_its_group_aside(tmp_path):
    """Its JSON cannot be found: the group is set aside whole, and the counting goes on."""
    group = sdk_events(tmp_path, THREE)
    group = with_columns(group, group.columns.replace(b'["",', b'["ab",'))
    assert group.columns is None
    read = SdkEvents()
    read.read_group(group)
    assert read.events == 1 and not read.views
    [(named, why)] = read.set_aside
    assert named is None and why.startswith("a details group that does not decode")


# Cluster mode: the columns ride in a header of each SDK message (storage/stream/sdk_message.py).

PROJECTS = ["", "shop", "blog"]


def messages(traffic):
    """The traffic's batches as the ingest publishes them in cluster mode, a batch a message,
    decoded as a worker reads them: [SdkPart], batch n in project PROJECTS[n % 3]."""
    parts = []
    for number, (_, events) in enumerate(traffic.batches):
        project = PROJECTS[number % 3]
        body = json.dumps({"batch": events}).encode()
        batch = parse_batch(body, RECEIVED)
        keys = [event_key(event.event_id, project) for event in batch.events]
        payload, headers = sdk_message.encode_message(batch.events, keys, RECEIVED * 1000,
                                                      project, 86400, sent=body)
        parts.append(sdk_message.decode(payload, headers)[1])
    return parts


def unreadable_columns(part, number):
    """`part` with columns that cannot be used, three ways by `number`, its payload whole."""
    raw = zlib.decompress(base64.b64decode(part.columns))
    mark, rows, rest = counted.HEAD.unpack_from(raw)
    fewer = counted.seal(counted.HEAD.pack(mark, rows - 1, rest - counted.ROW.size)  # a row
                         + raw[counted.HEAD.size + counted.ROW.size:])        # less than keys
    assert counted.read(fewer, alone=True).count == rows - 1
    columns = [part.columns[:-8] + "!",                               # not base64
               base64.b64encode(zlib.compress(raw)[:-6]).decode(),   # cut short
               base64.b64encode(zlib.compress(fewer)).decode()][number % 3]
    return sdk_message.SdkPart(part.keys, part.tokens, part.window, part.payload,
                               deflated=part.deflated, columns=columns)


def cut_payload(part):
    return sdk_message.SdkPart(part.keys, part.tokens, part.window, part.payload[:-4],
                               deflated=part.deflated, columns=part.columns)


def counted_stream(folder, counter_type, parts, repeats):
    """What `counter_type` holds after counting `parts` with `repeats` (the indexes left
    out of each, the partition's dedupe's) in commits of five messages."""
    folder.mkdir()
    store = (FactStore(folder / "overview.duckdb") if counter_type is FactCounter
             else OverviewStore(folder))
    counter = counter_type(store, TIMEOUT, "partition p1")
    counter.open()
    sections = 0
    for first in range(0, len(parts), 5):
        read = SdkEvents()
        read.read_stream(list(zip(parts[first:first + 5], repeats[first:first + 5])))
        sections += len(read.sections)
        assert not read.set_aside
        counter.count(read, b"stream", first + 5, first + 5)
    held = (tables(store) if counter_type is FactCounter
            else store_rows(Layout(folder).overview))
    counter.close()
    return held, sections


@pytest.mark.parametrize("counter_type", [OverviewCounter, FactCounter])
def test_cluster_messages_count_from_their_columns_as_from_their_payloads(tmp_path, traffic,
                                                                          counter_type):
    """The traffic's messages in three projects, every fifth's first event a repeat (left
    out): counted from the columns they carry, their payloads cut so that they cannot be
    read, and every fourth's columns unreadable (read from its payload, whole), the store
    holds what the payloads alone give (messages written before the columns)."""
    parts = messages(traffic)
    assert all(part.columns for part in parts)
    repeats = [{0} if number % 5 == 0 else set() for number in range(len(parts))]
    columns = [unreadable_columns(part, number // 4) if number % 4 == 0 else cut_payload(part)
               for number, part in enumerate(parts)]
    payloads = [sdk_message.SdkPart(part.keys, part.tokens, part.window, part.payload,
                                    deflated=part.deflated) for part in parts]
    from_columns, sections = counted_stream(tmp_path / "columns", counter_type, columns,
                                            repeats)
    from_payloads, none = counted_stream(tmp_path / "payloads", counter_type, payloads,
                                         repeats)
    assert (sections, none) == (len(parts) - len(range(0, len(parts), 4)), 0)
    assert from_columns == from_payloads
