"""Database URLs: which backend a URL means, whether it is well formed, and masking.

Passwords never leave this module unmasked: `mask_url` hides them in a URL and `redact`
hides known passwords anywhere in a text (a driver's error message, say).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote

MONGO_SCHEMES = ("mongodb", "mongodb+srv")
REDIS_SCHEMES = ("redis", "rediss", "unix")
ASYNC_DRIVERS = {"asyncpg", "psycopg_async", "aiomysql", "asyncmy", "aiosqlite"}
_known_secrets: set[str] = set()
_USERINFO = re.compile(r"://[^/?#\s]*@")


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def backend_of(url: str) -> str:
    """`mongo` for a `mongodb://` or `mongodb+srv://` URL, `redis` for a `redis://`,
    `rediss://` or `unix://` one, else `sql`."""
    scheme = scheme_of(url)
    if scheme in MONGO_SCHEMES:
        return "mongo"
    return "redis" if scheme in REDIS_SCHEMES else "sql"


def check_url(url: str) -> str | None:
    """None when `url` is well formed, else what is wrong with it (never the password)."""
    parts = _userinfo(url) if "://" in url and not scheme_of(url).startswith("sqlite") else None
    if parts is not None and any(c in parts[1] for c in "@#/?"):
        return (
            "its user or password holds '@', '#', '/' or '?', which must be URL-encoded "
            "(for example '@' as %40)"
        )
    if "://" not in url:
        return "it has no scheme (expected e.g. postgresql+psycopg://, sqlite:///, mongodb://, redis://)"
    if backend_of(url) == "redis":
        return redis_url_problem(url)
    if backend_of(url) == "mongo":
        rest = url.split("://", 1)[1]
        host = rest.split("@")[-1].split("/", 1)[0]
        return None if host else "it names no host"
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "SQLAlchemy cannot parse it"
    if parsed.get_backend_name() not in ("postgresql", "mysql", "mariadb", "sqlite"):
        return f"the database '{parsed.get_backend_name()}' is not supported"
    return None


class DatabaseIdentity(NamedTuple):
    """What a SQL URL reaches, whatever its spelling: `mariadb` is `mysql`, the driver and
    the password do not count, loopback names are one host, a missing port is the default."""

    dialect: str
    host: str
    port: int | None
    database: str


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
_LOOPBACK = {"", "localhost", "127.0.0.1", "::1", "[::1]", "localhost.localdomain"}


def dialect_of(url: str) -> str:
    """The database a URL speaks, without its driver: `postgresql`, `mysql` (for `mariadb`
    too), `sqlite`, `mongodb` (for `mongodb+srv` too), `redis` (for `rediss` and `unix`)."""
    if backend_of(url) == "redis":
        return "redis"
    dialect = scheme_of(url).split("+", 1)[0]
    return "mysql" if dialect == "mariadb" else dialect


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL (`redis://[user:pw@]host[:port][/db]`, `rediss://...`,
    `unix://[user:pw@]/path/to/socket[?db=N]`), or None; the database is a number."""
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    authority, slash, path = rest.rpartition("@")[2].partition("/")
    if scheme.lower() == "unix":
        if not slash or not path:
            return "it names no socket path (expected unix:///path/to/redis.sock?db=0)"
        db = params.get("db", "0")
    else:
        host, _, port = authority.rpartition("]")[2].partition(":")
        if not host and not authority.startswith("["):
            return "it names no host"
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            return f"its port '{port}' is not a number from 1 to 65535"
        db = params.get("db", path.strip("/") or "0")
    if not db.isdigit():
        return f"its database '{db}' is not a number (Redis numbers its databases 0, 1, ...)"
    return None


def redis_db(url: str) -> int:
    """The database number a Redis URL names (its path, or `?db=N`), 0 when none."""
    rest, _, query = url.partition("://")[2].partition("?")
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    if scheme_of(url) == "unix":
        return int(params.get("db", "0"))
    path = rest.rpartition("@")[2].partition("/")[2].strip("/")
    return int(params.get("db", path or "0"))


def database_identity(url: str) -> DatabaseIdentity:
    """The database a SQL URL reaches (for SQLite, the file's resolved path)."""
    rest = url.partition("://")[2]
    dialect = dialect_of(url)
    if dialect == "sqlite":
        file = sqlite_file(url)
        return DatabaseIdentity(dialect, "", None, str(file.resolve()) if file else url)
    authority, _, path = rest.split("?", 1)[0].partition("/")
    hostport = authority.rpartition("@")[2]
    host, port = hostport, None
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        port = int(tail[1:]) if tail[1:].isdigit() else None
    elif hostport.count(":") == 1:
        host, _, text = hostport.partition(":")
        port = int(text) if text.isdigit() else None
    host = host.lower()
    host = "127.0.0.1" if host in _LOOPBACK else host
    return DatabaseIdentity(dialect, host, port or _DEFAULT_PORTS.get(dialect), unquote(path))


def is_async(url: str) -> bool:
    scheme = scheme_of(url)
    return "+" in scheme and scheme.split("+", 1)[1] in ASYNC_DRIVERS


_SYNC_DRIVER = {
    "asyncpg": "psycopg", "psycopg_async": "psycopg", "aiomysql": "pymysql",
    "asyncmy": "pymysql", "aiosqlite": "pysqlite",
}


def sync_equivalent(url: str) -> str:
    """The same URL with the async driver's sync sibling (asyncpg -> psycopg, ...)."""
    scheme, sep, rest = url.partition("://")
    dialect, _, driver = scheme.partition("+")
    return f"{dialect}+{_SYNC_DRIVER[driver]}{sep}{rest}" if driver in _SYNC_DRIVER else url


def resolve_sqlite_path(url: str, root: Path) -> str:
    """Make a relative SQLite file path absolute under the project root."""
    if not scheme_of(url).startswith("sqlite"):
        return url
    prefix, _, path = url.partition(":///")
    if not path or path.startswith("/") or path.startswith(":memory:") or path.startswith("file:"):
        return url
    query = ""
    if "?" in path:
        path, query = path.split("?", 1)
        query = "?" + query
    return f"{prefix}:///{(root / path).resolve()}{query}"


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for an in-memory database."""
    if not scheme_of(url).startswith("sqlite"):
        return None
    path = url.partition(":///")[2].split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path)


def _userinfo(url: str) -> tuple[str, str, str] | None:
    """`(scheme://, user[:password], rest)` split at the LAST `@` of the authority, so that
    a password with an unquoted `@`, `#` or `/` is still found whole; None without one."""
    scheme, sep, rest = url.partition("://")
    head = rest.split("?", 1)[0]
    if not sep or "@" not in head:
        return None
    userinfo, _, _host = head.rpartition("@")
    return scheme + sep, userinfo, rest[len(userinfo) + 1 :]


def password_of(url: str | None) -> str | None:
    if not url or scheme_of(url).startswith("sqlite"):
        return None
    parts = _userinfo(url)
    if parts is None or ":" not in parts[1]:
        return None
    return unquote(parts[1].split(":", 1)[1]) or None


def remember_secret(url: str | None) -> None:
    """Note a URL's password so that `redact_known` hides it in any output."""
    secret = password_of(url)
    if secret:
        _known_secrets.add(secret)


def remember_secret_text(secret: str) -> None:
    """Note a secret that is not a URL's password (a webhook URL's path and query) so that
    `redact_known` hides it in any output."""
    if secret:
        _known_secrets.add(secret)


def redact_known(text: str) -> str:
    """`text` with every password seen in this process's settings hidden."""
    return redact(text, _known_secrets)


def mask_url(url: str | None) -> str:
    """The URL with its password replaced by `***` (also when the URL does not parse)."""
    if not url or scheme_of(url).startswith("sqlite"):
        return url or ""
    parts = _userinfo(url)
    if parts is None or ":" not in parts[1]:
        return url
    scheme, userinfo, rest = parts
    return f"{scheme}{userinfo.split(':', 1)[0]}:***@{rest}"


def mask_userinfo(text: str) -> str:
    """`text` with the user and password of every `scheme://user:password@` in it replaced
    by `***`, whether or not the URL parses (for values that should not be URLs at all)."""
    return _USERINFO.sub("://***@", text)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every known secret (and its URL-quoted form) replaced by `***`."""
    from urllib.parse import quote

    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        if len(secret) < 3:
            continue
        text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return text
