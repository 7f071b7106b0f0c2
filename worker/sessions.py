"""The session rule: one device's screen views of one experience, split where a gap is longer
than the timeout.

The sessions of a set of screen views are the maximal runs in time order with no gap longer
than the timeout: the connected parts of the views when each is joined to any other at most
the timeout away. That depends only on the set, never on the order the views arrive in, so
views are placed as they come, a commit's at a time: a view joins every session it falls
within the timeout of (a late view can stretch one session, or join two into one), or
begins a session of its own.

A view is (moment, screen id, revision id): device time in seconds, and the screen and the
experience's revision it showed. A session is [first, last, views]: its first and last
view's moment, and its views in order: by moment, then screen id, then revision. The SDKs
send whole seconds, so the true order within a second is not known; a fixed order keeps a
session's flow (worker/flows.py) the same whatever order its views arrive in. Its duration
is last - first. `views` may still be the store's StoredViews (storage/views/overview_store.py)
of a session read but not changed: views_of() decodes it, in place, when it is needed, and
extend() appends to it without decoding it.
"""

import bisect


def views_of(session):
    """The session's views, as a list (decoded once, in place, if still stored)."""
    views = session[2]
    if type(views) is not list:
        views = session[2] = views.decoded()
    return views


def place(sessions, views, timeout):
    """Add `views` (in any order) to `sessions` (one device's sessions of one experience,
    sorted by first, each more than `timeout` from the next) and keep them so.

    Returns (the sessions they replaced, the sessions they are now in). A stored session is
    replaced when a view falls within the timeout of it; the replaced ones are gone from
    `sessions`, as they were (their views decoded), and the new ones are in it, in place,
    each with a new list of views. Placing views all at once or one at a time gives the same
    sessions: the maximal runs of the whole set.
    """
    views = sorted(views)
    moments = [moment for moment, _, _ in views]
    replaced, kept = [], []
    for session in sessions:
        first, last, _ = session
        nearest = bisect.bisect_left(moments, first - timeout)  # the first view in its reach?
        touched = nearest < len(moments) and moments[nearest] <= last + timeout
        (replaced if touched else kept).append(session)
    if replaced:
        views = sorted([*views, *(view for session in replaced for view in views_of(session))])
    joined = [[run[0][0], run[-1][0], run] for run in _runs(views, timeout)]
    sessions[:] = sorted([*kept, *joined], key=lambda session: session[0])
    return replaced, joined


def extend(sessions, views, timeout):
    """place(), for views that all sort at or after the last view of the last of `sessions`
    (stored ones) and begin within the timeout of it: an install's next batch, the common
    case. The last session is extended by the first run of them without its views being
    decoded (its views become StoredViews.extended), and each later run, if any, begins a
    session. Returns what place() returns, or None if the views are not such (then place()
    is the way)."""
    if not sessions or type(sessions[-1][2]) is list:
        return None
    session = sessions[-1]
    first, last, stored = session
    earliest = min(views)
    # Declined on the moments alone where they settle it, before any sort or summary.
    if not last <= earliest[0] <= last + timeout:
        return None
    _, _, last_view, _ = stored.summary()
    if earliest < last_view:  # in the last view's second, sorting before it
        return None
    runs = _runs(sorted(views), timeout)
    extended = [first, runs[0][-1][0], stored.extended(runs[0])]
    joined = [extended, *([run[0][0], run[-1][0], run] for run in runs[1:])]
    sessions[-1:] = joined
    return [session], joined


def _runs(views, timeout):
    """The maximal runs of `views` (sorted) with no gap longer than `timeout`."""
    runs, start = [], 0
    for end in range(1, len(views) + 1):
        if end == len(views) or views[end][0] - views[end - 1][0] > timeout:
            runs.append(views[start:end])
            start = end
    return runs
