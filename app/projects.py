"""The projects file: which apps share this engine, and each one's tokens (docs/projects.md).

MINI_ANALYTICS_PROJECTS_FILE names a TOML file:

    # Tokens that read every project, and list them (GET /projects).
    admin_tokens = ["admin-token-0123456789"]

    [projects.shop]                     # the project's id (storage/projects.py's rule)
    name = "Shop app"                   # how it is shown; renaming it changes nothing else
    write_tokens = ["shop-write-token-0123"]   # what its SDKs send (Judo-Access-Token)
    read_tokens = ["shop-read-token-01234"]    # what its dashboard reads with

Every event is kept with the project of the token it came with (storage/projects.py says
where). A token has one role: it writes one project, reads one project, or is an admin
token; the same token twice, in the file or beside MINI_ANALYTICS_WRITE_TOKENS and
MINI_ANALYTICS_READ_TOKENS (which write and read the default project), is refused. With a
projects file, every write and every read needs a token.

The file is read again on SIGHUP and whenever it changes (looked at once a second), as the
token files are (app/access.py): a token moved, added or removed takes effect without a
restart. A file that cannot be used keeps what was read before, and is logged; at start it
stops the ingest (exit 2).

Projects removed from the file keep their data: nothing is deleted, and only an admin token
can read it (GET /projects lists it as no longer configured). Put back under the same id, it
is readable by its tokens again.
"""

import collections
import logging
import tomllib

from app.access import WatchedFile
from storage.projects import ID_RULE, is_project_id
from storage.settings import PREFIX, token_problem

log = logging.getLogger("ingest")

DEFAULT_NAME = "default"  # how the API names the default project (storage/projects.DEFAULT)

Project = collections.namedtuple("Project", "id name")
# What a held token may do: "write" or "read" `project`, or "admin" (project None).
Role = collections.namedtuple("Role", "kind project")


class BadProjects(ValueError):
    """The projects file cannot be used; the message says why (never naming a token)."""


def parse(text, digest, taken=frozenset()):
    """({id: Project}, {token digest: Role}) from the file's text; `taken`, the digests of
    the default project's tokens, which no token of the file may be. Raises BadProjects."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise BadProjects(f"not valid TOML: {error}") from None
    unknown = set(document) - {"admin_tokens", "projects"}
    if unknown:
        raise BadProjects(f"unknown key {sorted(unknown)[0]!r} (the file holds admin_tokens "
                          "and [projects.<id>] tables)")
    roles = {}

    def held(tokens, where, role):
        """Hold `tokens` (the file's list at `where`) in `role`."""
        if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
            raise BadProjects(f"{where} must be a list of strings")
        for number, token in enumerate(tokens, 1):
            problem = token_problem(token)
            if problem:
                raise BadProjects(f"{where}: token {number}: {problem}")
            key = digest(token)
            if key in roles or key in taken:
                raise BadProjects(f"{where}: token {number} is given twice (here, or in "
                                  f"{PREFIX}WRITE_TOKENS or READ_TOKENS); a token has one "
                                  "role, in one project")
            roles[key] = role

    held(document.get("admin_tokens", []), "admin_tokens", Role("admin", None))
    tables = document.get("projects", {})
    if not isinstance(tables, dict):
        raise BadProjects("projects must be tables: [projects.<id>]")
    projects = {}
    for project_id, table in tables.items():
        where = f"[projects.{project_id}]"
        if not is_project_id(project_id) or project_id == DEFAULT_NAME:
            raise BadProjects(f"{where}: a project's id is {ID_RULE}, and not "
                              f"{DEFAULT_NAME!r}")
        if not isinstance(table, dict):
            raise BadProjects(f"{where} must be a table")
        extra = set(table) - {"name", "write_tokens", "read_tokens"}
        if extra:
            raise BadProjects(f"{where}: unknown key {sorted(extra)[0]!r} (a project has "
                              "name, write_tokens and read_tokens)")
        name = table.get("name", project_id)
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise BadProjects(f"{where}: name must be text of 1 to 200 characters")
        held(table.get("write_tokens", []), f"{where} write_tokens", Role("write", project_id))
        held(table.get("read_tokens", []), f"{where} read_tokens", Role("read", project_id))
        projects[project_id] = Project(project_id, name)
    return projects, roles


class Projects:
    """The projects file as last read: the projects, and the role of each token."""

    def __init__(self, path, digest, taken=frozenset):
        """Read `path` (OSError or BadProjects if it cannot be used); `digest` hashes a
        token as app/access.py holds it; `taken()` gives the digests of the default
        project's tokens."""
        self.path = path
        self._digest = digest
        self._taken = taken
        self._file = WatchedFile(path)
        self.projects, self._roles = self._read()

    def _read(self):
        with open(self.path, encoding="utf-8") as file:
            return parse(file.read(), self._digest, self._taken())

    def role(self, token_digest):
        """The Role of a held token, by its digest, or None.

        Found by the digest (SHA-256) of the token presented, in a dict: the time a lookup
        takes can say something of the digest, which tells nothing of any token."""
        if self._file.due():
            self.reload_if_changed()
        return self._roles.get(token_digest)

    def reload_if_changed(self, force=False):
        with self._file.lock:
            if not self._file.changed(force):
                return
            try:
                projects, roles = self._read()
            except (OSError, UnicodeError, BadProjects) as problem:
                log.error("projects: %s cannot be used (%s); keeping the %d projects read "
                          "before", self.path, problem, len(self.projects))
                return
            before = set(self.projects)
            self.projects, self._roles = projects, roles
            log.info("projects: read %s: %d projects, %d tokens (added %s; removed %s)",
                     self.path, len(projects), len(roles),
                     ",".join(sorted(set(projects) - before)) or "none",
                     ",".join(sorted(before - set(projects))) or "none")
