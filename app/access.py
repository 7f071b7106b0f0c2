"""Who may write and who may read: access tokens (docs/security.md).

Write tokens guard the write paths (POST /event, /ingest-api, /batch); read tokens guard
every read path and the dashboard's data. /healthz and /healthz/ingest stay open, for
monitors and load balancers. A kind with no token configured is open, as on 127.0.0.1 by
default; app/__main__.py refuses to listen beyond loopback with no write token.

Tokens come from MINI_ANALYTICS_WRITE_TOKENS (comma-separated), or from the file named by
MINI_ANALYTICS_WRITE_TOKENS_FILE (one a line; blank lines and lines starting with # are
skipped), and likewise for READ. A file is read again on SIGHUP, and whenever it changes
(looked at once a second): a revoked token stops working within about a second, without a
restart. A file that cannot be read, or holds a malformed token, keeps the tokens read
before and is logged: a rotation caught half-written neither locks everyone out nor opens
the door.

With a projects file (MINI_ANALYTICS_PROJECTS_FILE, app/projects.py), its tokens write
and read their own projects, and its admin tokens read every project; the tokens above
write and read the default project (storage/projects.py); and every write and every read
needs a token. A request's Grant says which project it writes or reads.

A client sends its token in `Judo-Access-Token` (the header Judo's SDKs send) or in
`Authorization: Bearer <token>`. Only each token's SHA-256 is held; a presented token is
hashed and compared with every held digest by hmac.compare_digest, so the answer's timing
says nothing of how much of a token matched. A token is never logged: logs name it by the
first 4 hex characters of its hash.
"""

import collections
import hashlib
import hmac
import logging
import os
import threading
import time

from storage.settings import token_problem

log = logging.getLogger("ingest")

HEADER = "Judo-Access-Token"
RELOAD_EVERY = 1.0  # seconds between looks at a token file


class BadToken(ValueError):
    pass


def check_token(token, line):
    problem = token_problem(token)
    if problem:
        raise BadToken(f"line {line}: {problem}")
    return token


def digest(token):
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


def label(token_digest):
    """How logs name a token: never the token, 4 hex characters of its hash."""
    return token_digest.hex()[:4]


def read_token_file(path):
    """The tokens in a token file; OSError or BadToken if it cannot be used."""
    with open(path, encoding="ascii", errors="replace") as file:
        lines = [line.strip() for line in file]
    return [check_token(text, number) for number, text in enumerate(lines, 1)
            if text and not text.startswith("#")]


class WatchedFile:
    """A file read again when it changes, as a token file or the projects file is: looked at
    at most once a second (due), and whenever asked to (SIGHUP). Its reader holds `lock`
    while it asks changed() and reads it again."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self._looked_at = time.monotonic()
        self._seen = self._signature()  # (inode, size, mtime) as last read

    def due(self):
        return time.monotonic() - self._looked_at >= RELOAD_EVERY

    def changed(self, force=False):
        """True if the file changed since it was last read (or `force`): it is to be read
        again now. The caller holds `lock`."""
        self._looked_at = time.monotonic()
        signature = self._signature()
        if not force and signature == self._seen:
            return False
        self._seen = signature
        return True

    def _signature(self):
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns


class Tokens:
    """One kind of token (write or read): the digests held, and the file they come from."""

    def __init__(self, kind, tokens=None, path=None):
        self.kind = kind
        self.path = path
        self._file = WatchedFile(path) if path is not None else None
        self._digests = [digest(token) for token in tokens or ()]
        if path is not None:
            self._digests = [digest(token) for token in read_token_file(path)]
        self.required = path is not None or bool(self._digests)

    def __len__(self):
        return len(self._digests)

    def digests(self):
        return set(self._digests)

    def labels(self):
        """How the log names the tokens held (label())."""
        return [label(held) for held in self._digests]

    def match_digest(self, wanted):
        """`wanted` (a token's digest, or None for no token) if it is a held token's."""
        if self._file is not None and self._file.due():
            self.reload_if_changed()
        if wanted is None:
            return None
        found = False
        for held in self._digests:  # every one, whatever matches: constant time in the token
            found |= hmac.compare_digest(wanted, held)
        return wanted if found else None

    def reload_if_changed(self, force=False):
        with self._file.lock:
            if not self._file.changed(force):
                return
            try:
                tokens = read_token_file(self.path)
            except (OSError, BadToken) as problem:
                log.error("%s tokens: %s cannot be used (%s); keeping the %d read before",
                          self.kind, self.path, problem, len(self._digests))
                return
            before = {label(held) for held in self._digests}
            self._digests = [digest(token) for token in tokens]
            after = {label(held) for held in self._digests}
            log.info("%s tokens: read %s: %d tokens (added %s; removed %s)", self.kind,
                     self.path, len(tokens), ",".join(sorted(after - before)) or "none",
                     ",".join(sorted(before - after)) or "none")


def presented_token(environ):
    """The token a request carries, or None: Judo-Access-Token, else Authorization: Bearer."""
    token = environ.get("HTTP_JUDO_ACCESS_TOKEN")
    if token:
        return token.strip()
    authorization = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


# What a request that passed may do: write or read `project` (storage/projects.py: "" the
# default one); `admin`, read any project; `token`, the digest of its token (None where no
# token is needed), whose writes share the ingest fairly with other tokens' (app/admission.py).
Grant = collections.namedtuple("Grant", "token project admin")


class Access:
    """The write and read tokens, and the projects file's; `check` says whether a request
    may pass, and what it may do."""

    def __init__(self, write, read, projects=None):
        """`write`, `read`: Tokens of the default project; `projects`: app/projects.Projects,
        or None without a projects file."""
        self.write = write
        self.read = read
        self.projects = projects

    def reload(self):
        """SIGHUP: read every token file, and the projects file, again now."""
        for tokens in (self.write, self.read):
            if tokens.path is not None:
                tokens.reload_if_changed(force=True)
        if self.projects is not None:
            self.projects.reload_if_changed(force=True)

    def required(self, kind):
        """True if a request of this kind ("write" or "read") needs a token."""
        tokens = self.write if kind == "write" else self.read
        return tokens.required or self.projects is not None

    def check(self, kind, environ):
        """(None, Grant) if the request may pass, else (why, None)."""
        if not self.required(kind):
            # Open: the default project, which is every event; any reader sees it all.
            return None, Grant(None, "", kind == "read")
        presented = presented_token(environ)
        wanted = digest(presented) if presented else None  # hashed once, for either look
        tokens = self.write if kind == "write" else self.read
        if tokens.match_digest(wanted) is not None:
            return None, Grant(wanted, "", False)
        if wanted is not None and self.projects is not None:
            role = self.projects.role(wanted)
            if role is not None and role.kind == kind:
                return None, Grant(wanted, role.project, False)
            if role is not None and role.kind == "admin" and kind == "read":
                return None, Grant(wanted, "", True)
        problem = "carries no" if presented is None else "carries an unknown"
        return (f"this request {problem} {kind} token: send one in the {HEADER} header, or "
                f"as Authorization: Bearer <token>"), None
