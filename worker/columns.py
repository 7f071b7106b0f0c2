"""The ingest's counted columns (storage/log/counted.py) of one commit, read as the overview's
rule reads an event (worker/sdk_events.py, SdkEvents._extract), but as arrays: an install's
key, a user's, a screen view's experience, screen, revision and names, a row an event, with
no Python object made a row.

SdkEvents gathers a commit's sections as they are read (a few slices a group, and the
texts' list once for all the requests that list the same); rows() maps them at once, a
project at a time: each distinct list's texts numbered once, the commit's equal texts
found with one dict, the rows that break the format set aside. FactCounter takes the arrays
as they are; OverviewCounter takes them as SdkEvents' views and links
(SdkEvents.columns_as_views()).
"""

import itertools
import operator

import numpy

from storage.log.counted import NONE, SECTION_COUNT, SECTION_ROWS, SECTION_TEXTS

ROWS = numpy.dtype([("time", "<i8"), ("experience", "<i8"), ("device", "<i8"),
                   ("carried", "<i8"), ("index", "<u2", (4,))])
SCREEN, REVISION, EXPERIENCE_NAME, SCREEN_NAME = range(4)
# The rule's range of a moment (seconds): 0 <= moment < 2**40.
END_MS = 2**40 * 1000
_PROJECT = operator.itemgetter(0)  # of a section's texts


class ProjectRows:
    """One project's rows of a commit, those that keep to the format: `moment`,
    `experience` (-1: not a screen view), `device` and `carried` (the keys of its install
    and user, 0 for none), each an int64 array; `text` (n × 4: each index's text, as a
    position in `texts`, the commit's distinct lists of texts one after another: a text
    stands for where it is first listed, so that equal texts have equal positions) and
    `named` (n × 4: whether the index names a text)."""

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


def rows(sections, set_aside):
    """[ProjectRows] of `sections` ([counted.Section], a commit's, in the order read), one a
    project; each row that breaks the format is set aside as (None, why) in `set_aside`."""
    # A few steps a section, each over all of them in C (map, not a loop): a commit holds
    # tens of thousands of sections.
    listed = list(map(SECTION_TEXTS, sections))
    projects = list(map(_PROJECT, listed))
    if len(set(projects)) == 1:  # the common case, one project
        return [_project_rows(projects[0], sections, listed, set_aside)]
    by_project = {}
    for section, project in zip(sections, projects):
        by_project.setdefault(project, []).append(section)
    return [_project_rows(project, chosen, list(map(SECTION_TEXTS, chosen)), set_aside)
            for project, chosen in by_project.items()]


def _project_rows(project, sections, listed, set_aside):
    """The ProjectRows of `project`'s `sections`, whose texts are `listed`."""
    table = numpy.frombuffer(b"".join(map(SECTION_ROWS, sections)), ROWS)
    counts = numpy.fromiter(map(SECTION_COUNT, sections), numpy.int64, len(sections))
    section_of = numpy.repeat(numpy.arange(len(sections)), counts)
    # Requests that list the same texts share one list (counted.read's `known`): each
    # distinct list is numbered once, and each section stands for its list.
    first = numpy.fromiter(map({}.setdefault, map(id, listed), itertools.count()),
                           numpy.int64, len(sections))  # the first section with its list
    distinct, list_of = numpy.unique(first, return_inverse=True)
    lists = list(map(listed.__getitem__, distinct.tolist()))
    sizes = numpy.fromiter(map(len, lists), numpy.int64, len(lists))
    list_of = list_of[section_of]
    index = table["index"].astype(numpy.int64)
    time_ms, experience = table["time"], table["experience"]
    device, carried = table["device"], table["carried"]
    broken = ((index.max(axis=1, initial=0) >= sizes[list_of]) | (time_ms < 0)
              | (time_ms >= END_MS) | (experience < -1))
    if broken.any():
        set_aside.extend([(None, "its counted columns are out of range (an index past "
                                 "their texts, or a time or experienceID out of range)")]
                         * int(broken.sum()))
        kept = ~broken
        index, time_ms, experience = index[kept], time_ms[kept], experience[kept]
        device, carried, list_of = device[kept], carried[kept], list_of[kept]
    # Each text of the commit stands for where it is first listed: the same text in two
    # lists is one screen, one name. One pass in C (setdefault over a count).
    texts = list(itertools.chain.from_iterable(lists))
    numbered = numpy.fromiter(map({}.setdefault, texts, itertools.count()), numpy.int64,
                              len(texts))
    first_text = numpy.concatenate(([0], numpy.cumsum(sizes)[:-1]))
    text = numbered[first_text[list_of][:, None] + index]
    named = index != NONE
    return ProjectRows(project, time_ms // 1000, experience, device, carried, text, named, texts)
