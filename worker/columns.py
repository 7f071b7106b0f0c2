"""The ingest's counted columns (storage/log/counted.py) of one commit, read as the overview's
rule reads an event (worker/sdk_events.py, SdkEvents._extract), but as arrays: an install's
key, a user's, a screen view's experience, screen, revision and names, a row an event, with
no Python object made a row.

SdkEvents gathers a commit's sections as they are read (a few slices a group); rows() maps
them at once, a project at a time: the commit's equal texts found with one dict, keys
made once a distinct install or user, the rows that break the format set aside. FactCounter
takes the arrays as they are; OverviewCounter takes them as SdkEvents' views and links
(SdkEvents.columns_as_views()).
"""

import functools
import itertools
import operator

import numpy

from storage.log.counted import NONE

ROWS = numpy.dtype([("time", "<i8"), ("experience", "<i8"), ("index", "<u2", (6,))])
INSTALL, USER, SCREEN, REVISION, EXPERIENCE_NAME, SCREEN_NAME = range(6)
# The rule's range of a moment (seconds): 0 <= moment < 2**40.
END_MS = 2**40 * 1000
_TEXTS, _ROWS, _COUNT = (operator.attrgetter(name) for name in ("texts", "rows", "count"))
_PROJECT = operator.itemgetter(0)  # of a section's texts


class ProjectRows:
    """One project's rows of a commit, those that keep to the format: `moment`,
    `experience` (-1: not a screen view), `device` and `carried` (the keys of its install
    and user, 0 for none), each an int64 array; `text` (n × 6: each index's text, as a
    position in `texts`, the commit's texts as its sections list them: a text stands for
    where it is first listed, so that equal texts have equal positions) and `named` (n × 6:
    whether the index names a text)."""

    __slots__ = ("project", "moment", "experience", "device", "carried", "text", "named",
                 "texts")

    def __init__(self, project, moment, experience, device, carried, text, named, texts):
        self.project, self.moment, self.experience = project, moment, experience
        self.device, self.carried, self.text, self.named = device, carried, text, named
        self.texts = texts

    def views(self):
        """Which rows are screen views (a boolean array)."""
        return self.experience >= 0

    def positions(self, column, rows):
        """The text of `column` in each of `rows` (a boolean array), as its position in
        `texts`; len(texts) where it names none."""
        return numpy.where(self.named[rows, column], self.text[rows, column], len(self.texts))

    def text_of(self, column, rows, missing):
        """The texts of `column` in `rows`, as a list; `missing` where it names none."""
        texts = self.texts + [missing]
        return list(map(texts.__getitem__, self.positions(column, rows).tolist()))


def rows(sections, keys, set_aside):
    """[ProjectRows] of `sections` ([counted.Section], a commit's, in the order read), one a
    project. `keys(project, kind, texts)` are the keys of installs ("anon:") or users
    ("user:"), a list of `texts`' in order; each row that breaks the format is set aside as
    (None, why) in `set_aside`."""
    # A few steps a section, each over all of them in C (map, not a loop): a commit holds
    # tens of thousands of sections.
    listed = list(map(_TEXTS, sections))
    projects = list(map(_PROJECT, listed))
    if len(set(projects)) == 1:  # the common case, one project
        return [_project_rows(projects[0], sections, listed, keys, set_aside)]
    by_project = {}
    for section, project in zip(sections, projects):
        by_project.setdefault(project, []).append(section)
    return [_project_rows(project, chosen, list(map(_TEXTS, chosen)), keys, set_aside)
            for project, chosen in by_project.items()]


def _project_rows(project, sections, listed, keys, set_aside):
    """The ProjectRows of `project`'s `sections`, whose texts are `listed`."""
    table = numpy.frombuffer(b"".join(map(_ROWS, sections)), ROWS)
    counts = numpy.fromiter(map(_COUNT, sections), numpy.int64, len(sections))
    sizes = numpy.fromiter(map(len, listed), numpy.int64, len(sections))
    section_of = numpy.repeat(numpy.arange(len(sections)), counts)
    index = table["index"].astype(numpy.int64)
    time_ms, experience = table["time"], table["experience"]
    broken = ((index.max(axis=1, initial=0) >= sizes[section_of])
              | (index[:, INSTALL] == NONE) | (time_ms < 0) | (time_ms >= END_MS)
              | (experience < -1))
    if broken.any():
        set_aside.extend([(None, "its counted columns are out of range (an index past "
                                 "their texts, no install, or a time or experienceID out "
                                 "of range)")] * int(broken.sum()))
        kept = ~broken
        index, time_ms, experience = index[kept], time_ms[kept], experience[kept]
        section_of = section_of[kept]
    # Each text of the commit stands for where it is first listed: the same text in two
    # requests is one install, one screen. One pass in C (setdefault over a count).
    texts = list(itertools.chain.from_iterable(listed))
    numbered = numpy.fromiter(map({}.setdefault, texts, itertools.count()), numpy.int64,
                              len(texts))
    first_text = numpy.concatenate(([0], numpy.cumsum(sizes)[:-1]))
    text = numbered[first_text[section_of][:, None] + index]
    named = index != NONE
    device = _keys(text, named, INSTALL, texts, functools.partial(keys, project, "anon:"))
    carried = _keys(text, named, USER, texts, functools.partial(keys, project, "user:"))
    return ProjectRows(project, time_ms // 1000, experience, device, carried, text, named, texts)


def _keys(text, named, column, texts, keys):
    """The key of each row's text in `column` (0 where it names none), each distinct text
    keyed once: `keys(listed)` of all of them at once."""
    chosen = text[:, column]
    present = named[:, column]
    wanted = numpy.flatnonzero(numpy.bincount(chosen[present], minlength=len(texts)))
    keyed = numpy.zeros(len(texts), numpy.int64)
    keyed[wanted] = keys(list(map(texts.__getitem__, wanted.tolist())))
    return numpy.where(present, keyed[chosen], 0)
