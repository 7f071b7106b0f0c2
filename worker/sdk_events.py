"""What the overview counts of SDK events, read by its rule: SdkEvents gathers a stretch's
screen views and links from data1.details's groups (their counted columns,
storage/log/counted.py, or their JSON) or from a cluster partition's messages, for the
counters of worker/overview.py to count.

The rule, written once (SdkEvents._extract), for either way of reading the events: a screen
view is an event of type "screen" with its properties' experienceID; each event is of its
install (anonymousID) and, when it carries a userID, links that install to that user
(worker/people.py); installs and users are keyed by project (storage/views/sketches.py's
person keys). An event the rule cannot read is set aside, named, and the others counted.
"""

import collections
import itertools
import json
import operator

import msgspec

from storage.log import counted
from storage.log.details import item_decoder, payload_events, payload_events_as, read_stretch
from storage.log.format import MAX_ID
from storage.projects import is_project_id
from storage.sdk_event import CountedEvent
from storage.views.sketches import project_person_key
from worker import columns
from worker.columns import EXPERIENCE_NAME, REVISION, SCREEN, SCREEN_NAME


class SdkEvents:
    """What the overview counts of a stretch of SDK events: its screen views, as
    (experience, hour, screen id, revision id, device, carried, moment, experience name,
    screen name), with `experience` (project, id) ("" for the default project), `hour` the
    start of the moment's hour, `carried` the key of the userID the view carries (0 if none),
    and a missing screen or revision id ""; the first six are who viewed what when, counted
    together (OverviewCounter.count); its links, as (device, user, moment) (worker/people.py:
    any event that carries both ids); how many events were read, and those set aside. The
    rest of an identify or a register is kept in the details, not counted.

    A group the ingest wrote its counted columns in (storage/log/counted.py), or a cluster
    message that carries them, is not decoded: its section waits in `sections`, read at the
    commit as arrays (columns(), for FactCounter) or as views and links (columns_as_views(),
    for OverviewCounter)."""

    def __init__(self):
        self.views, self.links, self.set_aside, self.events = [], [], [], 0
        self.sections = []
        self._columns = None  # columns(), once read
        self._known = {}  # the sections' texts read, by their JSON (counted.read's `known`)
        self._texts = _SectionTexts()  # the same for details.read_stretch, judged by the rule
        self._devices = {}  # project -> {anonymousID: its key}
        self._users = {}  # project -> {userID: its key}
        self._screens = {}  # what a view sent -> what it counts as (_screen)

    def read(self, items, project=""):
        """Read the events of `project` (as details keep them: {"event", "time", ...}).

        The ingest stores only events it checked, but a store outlives the code that checked
        it: an event that still cannot be counted (a field of the wrong type, a time out of
        range) is set aside as (its id, why) and left out, so that no stored event can stop
        the counting of the others."""
        self.events += len(items)
        for item in items:
            try:
                self._read(item, project)
            except Exception as error:  # noqa: BLE001 (any flaw of one event, named below)
                event = item.get("event") if type(item) is dict else None
                named = event.get("id") if type(event) is dict else None
                self.set_aside.append((named if type(named) is str else None,
                                       f"{type(error).__name__}: {error}"))

    def read_group(self, group):
        """read(group.events()), a few times faster: its counted columns kept for the commit
        when the ingest wrote them, else the events decoded as storage/sdk_event.py's
        CountedEvent, only the fields counted. A group that does not fit (columns that do
        not read, a field of another type, a value out of range: what read() sets aside) is
        read by read(), event by event."""
        section = counted.read(group.stored, known=self._known, before=group.head)
        if _countable(section):
            self.sections.append(section)
            self.events += section.count
            return
        try:
            project, decoded = group.events_as(CountedEvent)
        except (msgspec.MsgspecError, ValueError):
            try:
                project, items = group.events()
            except Exception as error:  # noqa: BLE001 (a payload that is not the format)
                self.events += 1  # how many it holds is not known
                self.set_aside.append((None, f"a details group that does not decode: "
                                             f"{type(error).__name__}: {error}"))
                return
            self.read(items, project)
            return
        self._read_decoded([(project, decoded)], lambda: group.events()[1], project)

    def read_stretch(self, fd, start, data1_end, events):
        """Read a stretch of data1.details (descriptor `fd`) from offset `start`, as
        storage/log/details.read_stretch reads one (up to `events` rows, of groups whose data1
        bytes end by `data1_end`): its sections kept for the commit, and its group, if it
        ended on one, read by read_group. Returns the details.Stretch."""
        stretch = read_stretch(fd, start, data1_end, events, self._texts, self.sections)
        self.events += stretch.events
        if stretch.group is not None:
            self.read_group(stretch.group)
        return stretch

    def read_encoded(self, items):
        """read() of items each still in JSON (a cluster message's details header, which
        names its project), as fast as read_group and with the same way back to read()."""
        def as_dicts():
            return [json.loads(item) for item in items]

        try:
            decoded = list(map(_ITEM.decode, items))
        except (msgspec.MsgspecError, ValueError):
            self.read(as_dicts())
            return
        # Each item names its project: read in runs of one project (most messages are one).
        runs = [(project, [(item.event, item.time) for item in run])
                for project, run in itertools.groupby(decoded, _PROJECT)]
        self._read_decoded(runs, as_dicts)

    def read_stream(self, parts):
        """Read a partition's SDK messages, [(SdkPart, repeats), ...]
        (storage/stream/sdk_message.py), the events at the indexes in repeats left out."""
        older = [part.legacy_item for part, repeats in parts
                 if part.payload is None and not repeats]
        if older:
            self.read_encoded(older)
        for part, repeats in parts:
            if part.payload is not None:
                self._read_payload(part, set(repeats))

    def _read_payload(self, part, repeats):
        """read_group() of an SDK message's details (SdkPart), but for the events at the
        indexes in `repeats`: its counted columns kept for the commit when it carries them,
        and its payload not even inflated."""
        section = part.section(self._known)
        if _countable(section):
            if repeats:
                section = section.without(repeats)
            self.sections.append(section)
            self.events += section.count
            return

        def kept(items):
            return [item for index, item in enumerate(items) if index not in repeats]

        def set_aside_whole(error):
            self.events += count
            self.set_aside.append((None, f"a message of {count} events that does not "
                                         f"decode: {type(error).__name__}: {error}"))

        count = len(part.tokens)
        try:
            payload = part.details()  # inflated once, for either way of reading it
        except ValueError as error:
            set_aside_whole(error)
            return
        try:
            project, decoded = payload_events_as(payload, CountedEvent)
            if len(decoded) != count:
                raise ValueError(f"{len(decoded)} events for {count} keys")
        except (msgspec.MsgspecError, ValueError):
            try:
                project, items = payload_events(payload)
                if len(items) != count:
                    raise ValueError(f"{len(items)} events for {count} keys")
            except Exception as error:  # noqa: BLE001 (a message that is not the format)
                set_aside_whole(error)
                return
            self.read(kept(items), project)
            return
        self._read_decoded([(project, kept(decoded))],
                           lambda: kept(payload_events(payload)[1]), project)

    def _read_decoded(self, runs, as_dicts, project=""):
        """Count the events of `runs`, [(project, [(event, time), ...]), ...], all of them
        or, if any does not fit, none: read(as_dicts(), project) then reads them event by
        event."""
        views, links = [], []
        try:
            for project_of, decoded in runs:
                self._extract(views, links, project_of, decoded)
        except (ValueError, TypeError):
            self.read(as_dicts(), project)
            return
        self.events += sum(len(decoded) for _, decoded in runs)
        self.views += views
        self.links += links

    def _extract(self, views, links, project, decoded):
        """The rule, for either way of reading: the views and links of `project`'s
        [(event, time), ...], each event a storage/sdk_event.CountedEvent (or an _Event),
        appended to `views` and `links`. Raises ValueError or TypeError at an event that
        does not fit, before appending anything of it.

        Every SDK event passes here, in one loop a group: a call and a key tuple an event
        cost the reading a tenth of its time. Installs, users, experiences and their names
        recur from event to event: each is checked, hashed and made storable once, and
        looked up after."""
        if project and not is_project_id(project):
            raise ValueError(f"not a project: {project!r}")
        devices = self._devices.get(project)
        if devices is None:
            devices = self._devices[project] = {}
        users = self._users.get(project)
        if users is None:
            users = self._users[project] = {}
        screens, add_view, add_link = self._screens, views.append, links.append
        for event, time_ms in decoded:
            moment = time_ms // 1000
            if not 0 <= moment < 2**40:
                raise ValueError("time out of range")
            # A value of the wrong type may be unhashable (read()'s dicts, or an experienceID
            # of any type): a lookup that raises takes the miss's way, which names what is
            # wrong.
            anonymous_id = event.anonymousID
            try:
                device = devices.get(anonymous_id)
            except TypeError:
                device = None
            if device is None:
                device = self._key(project, "anon:", anonymous_id, devices)
            user = event.userID
            carried = 0
            if user:  # null and "" are no userID: no link
                try:
                    carried = users.get(user)
                except TypeError:
                    carried = None
                if carried is None:
                    carried = self._key(project, "user:", user, users)
            if event.type == "screen":
                screen = event.properties
                if screen is None:
                    raise ValueError("a screen view without properties")
                sent = (project, screen.experienceID, screen.id, screen.experienceRevisionID,
                        screen.experienceName, screen.name)
                try:
                    shown = screens.get(sent)
                except TypeError:
                    shown = None
                if shown is None:
                    shown = self._screen(sent)
                experience, screen_id, revision, experience_name, screen_name = shown
                add_view((experience, moment - moment % 3600, screen_id, revision, device,
                          carried, moment, experience_name, screen_name))
            if carried:
                add_link((device, carried, moment))

    def columns(self):
        """[worker/columns.ProjectRows] of the sections read, once; the rows that break
        their format are then in set_aside."""
        if self._columns is None:
            self._columns = columns.rows(self.sections, self.set_aside)
        return self._columns

    def columns_as_views(self):
        """Add the sections' screen views and links to `views` and `links`, as _extract
        makes them (once; the sections are then spent)."""
        for rows in self.columns():
            view = rows.views()
            moment = rows.moment[view]
            experience = rows.experience[view].tolist()
            project = rows.project
            self.views += zip(
                [(project, number) for number in experience],
                (moment - moment % 3600).tolist(),
                map(stored_text, rows.text_of(SCREEN, view, "")),
                map(stored_text, rows.text_of(REVISION, view, "")),
                rows.device[view].tolist(), rows.carried[view].tolist(), moment.tolist(),
                map(stored_text, rows.text_of(EXPERIENCE_NAME, view, None)),
                map(stored_text, rows.text_of(SCREEN_NAME, view, None)))
            linked = rows.carried != 0
            self.links += zip(rows.device[linked].tolist(), rows.carried[linked].tolist(),
                              rows.moment[linked].tolist())
        self.sections, self._columns = [], []

    def screen_views(self):
        """How many screen views were read (the sections' with the rest)."""
        return len(self.views) + sum(int(rows.views().sum()) for rows in self.columns())

    def _read(self, item, project):
        """One event as the JSON module decodes it, through the rule (_extract)."""
        event = item["event"]
        kind = event.get("type")
        properties = None
        if kind == "screen":
            properties = event["properties"]
            properties = _Screen(properties["experienceID"], properties.get("id"),
                                 properties.get("experienceName"), properties.get("name"),
                                 properties.get("experienceRevisionID"))
        read = _Event(event["anonymousID"], event.get("userID"), kind, properties)
        # A cluster message's item names its own project.
        self._extract(self.views, self.links, item.get("project", project),
                      [(read, item["time"])])

    def _key(self, project, kind, text, keys):
        """The key of an install ("anon:") or a user ("user:") of `project` (checked by
        _extract), kept in `keys` (the project's)."""
        key = keys[text] = project_person_key(project, kind, text)
        return key

    def _screen(self, sent):
        """(experience, screen id, revision id, experience name, screen name) as counted, of
        a view's `sent` (project, experienceID, id, experienceRevisionID, experienceName,
        name); kept in self._screens."""
        project, experience_id, screen_id, revision, experience_name, screen_name = sent
        experience = int(experience_id)
        if not 0 <= experience <= MAX_ID:
            raise ValueError("experienceID out of range")
        shown = self._screens[sent] = (
            (project, experience), stored_text(screen_id or ""), stored_text(revision or ""),
            stored_text(experience_name), stored_text(screen_name))
        return shown


# An event and a screen view's properties read from a dict (SdkEvents._read), as _extract
# reads a CountedEvent and its Properties.
_Event = collections.namedtuple("_Event", "anonymousID userID type properties")
_Screen = collections.namedtuple(
    "_Screen", "experienceID id experienceName name experienceRevisionID")
_ITEM = item_decoder(CountedEvent)
_PROJECT = operator.attrgetter("project")
# The parts of a view (SdkEvents.views) picked in C.
VIEW_EXPERIENCE = operator.itemgetter(0)
VIEW_DEVICE = operator.itemgetter(4)
VIEW_MOMENT = operator.itemgetter(6)
VIEWER = operator.itemgetter(0, 1, 2, 3, 4, 5)
VIEW_EXPERIENCE_NAMED = operator.itemgetter(0, 7)
VIEW_SCREEN_NAMED = operator.itemgetter(0, 2, 8)


def stored_text(value):
    """A name or screen id as SQLite can store it: a string whose lone surrogates (half an
    emoji, which JSON's \\u escapes can carry and UTF-8 cannot) become U+FFFD."""
    if value is None:
        return None
    if type(value) is not str:
        raise TypeError(f"a name or screen id is {type(value).__name__}, not a string")
    if value.isascii():
        return value
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _countable(section):
    """Whether a counted.Section read from a group or a message can be counted as it is: it
    was read, and names the default project or a project's id (else its events are read)."""
    return section is not None and _countable_texts(section.texts)


def _countable_texts(texts):
    """Whether a section's texts (texts[0] its project) let it be counted as it is."""
    return not texts[0] or is_project_id(texts[0])


class _SectionTexts(dict):
    """{a section's texts as JSON (bytes): their list, or None if its group is to be read
    from its JSON}: storage/log/details.read_stretch's `texts`, each list decoded and judged
    once, when first asked for."""

    def __missing__(self, raw):
        texts = counted.read_texts(raw)
        if texts is not None and not _countable_texts(texts):
            texts = None
        self[raw] = texts
        return texts
