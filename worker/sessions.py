"""The session rule: one device's screen views of one experience, split where a gap is longer
than the timeout.

The sessions of a set of screen views are the maximal runs in time order with no gap longer
than the timeout: the connected parts of the views when each is joined to any other at most
the timeout away. That depends only on the set, never on the order the views arrive in, so
each view is placed as it comes: it joins every session it falls within the timeout of
(a late view can stretch one session, or join two into one), or begins a session of its own.

A view is (moment, screen id, revision id): device time in seconds, and the screen and the
experience's revision it showed. A session is [first, last, views]: its first and last
view's moment, and its views in order: by moment, then screen id, then revision. The SDKs
send whole seconds, so the true order within a second is not known; a fixed order keeps a
session's flow (worker/flows.py) the same whatever order its views arrive in. Its duration
is last - first. `views` may still be the store's encoding (storage/views/overview_store.py) of a
session read but not changed: views_of() decodes it, in place, when it is needed.
"""

import bisect

from storage.views.overview_store import decode_views


def views_of(session):
    """The session's views, as a list (decoded once, in place, if still encoded)."""
    views = session[2]
    if type(views) is not list:
        views = session[2] = decode_views(session[0], views)
    return views


def place(sessions, view, timeout):
    """Add `view` to `sessions` (one device's sessions of one experience, sorted by first,
    each more than `timeout` from the next) and keep them so.

    Returns (the sessions it replaced, the session it is now in): the replaced ones are gone
    from `sessions` and the new one is in it, in place. The replaced ones are as they were
    (their views decoded), the new one holds a new list of views.
    """
    moment = view[0]
    low = 0
    while low < len(sessions) and sessions[low][1] + timeout < moment:
        low += 1
    high = low
    while high < len(sessions) and sessions[high][0] - timeout <= moment:
        high += 1
    replaced = sessions[low:high]
    if len(replaced) == 1:  # the usual case: a view within one session's reach
        first, last, _ = replaced[0]
        views = list(views_of(replaced[0]))
        bisect.insort(views, view)
        joined = [min(moment, first), max(moment, last), views]
    elif replaced:
        views = sorted([view, *(kept for session in replaced for kept in views_of(session))])
        joined = [min(moment, replaced[0][0]), max(moment, replaced[-1][1]), views]
    else:
        joined = [moment, moment, [view]]
    sessions[low:high] = [joined]
    return replaced, joined
