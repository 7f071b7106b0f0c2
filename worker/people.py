"""The people rule: which person a screen view counts for.

A person is a `userID`, or an install (`anonymousID`) that is linked to none.

- A **link** ties an install to a userID: an `identify` event, or any event that carries
  both ids (a screen view sent while logged in). A null or empty userID is no link, so
  Judo's `anonymous` mode and `identify(null)` link nothing.
- A view that **carries a userID** counts for that user, always.
- An **anonymous view** (no userID) counts for its install's person: the userID of the
  install's **first link by device time** (ties: the smaller key), before it and after it;
  an install with no link is a person of its own. So an install's views before its login
  count for the person who logs in, retroactively, however late the link arrives.
- Two userIDs are **never merged**. A shared phone, or a logout and a login as someone
  else on an install that keeps its anonymousID (Android may; iOS's reset() makes a new
  one), is used by its users: each view carrying a userID counts for that user, and its
  anonymous views for the first who logged in on it (as Mixpanel's and PostHog's merges
  keep an install with its first identified user).
- A userID linked from more than MAX_INSTALLS_PER_USER (storage/views/overview_store.py)
  installs is no link at all (a test account, a "log in as" support login, a placeholder
  id such as "0"): linking them would make one huge person of strangers. Its views still
  count for it; its installs' anonymous views count for each install. In cluster mode the
  bound holds per partition, since an install's links are all in its own partition.

The rule depends only on the set of events, never on their order: a person is the least
link of a set, and a bound on the size of a set. The overview (worker/overview.py) keeps the
links and each install's person in its store, and when a link changes an install's person,
counts again the people of every hour that install has views in.
"""


def person_of(links, crowded):
    """An install's person: the user key of its first valid link, or None if it has none.

    `links`: {user key: the device time of the install's first link to it};
    `crowded`: the user keys linked from more than MAX_INSTALLS_PER_USER installs."""
    valid = [(moment, user) for user, moment in links.items() if user not in crowded]
    return min(valid)[1] if valid else None
