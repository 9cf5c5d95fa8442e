"""Lint rules for Redis revisions: KEYS, FLUSHDB/FLUSHALL and DEL over a pattern.

`linting.py` runs them on Redis services' revisions and on any revision that imports
`redis` or `ncm_migrate.redis_ops`; each message names the fix.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

REDIS_RULES: dict[str, str] = {
    "redis-keys": "KEYS walks every key in one call and blocks the server meanwhile; iterate with "
                  "`r.scan_iter(match=..., count=1000)` or a `ncm_migrate.redis_ops` helper",
    "redis-flush": "deletes every key of the database (other services' and the ledger's too); "
                   "delete only the service's keys, in batches from `r.scan_iter(match=...)`",
    "redis-del-pattern": "deletes every key matching a pattern, for good; back them up first "
                         "(`manage.py backup`), and delete in batches from `r.scan_iter(match=...)` "
                         "with UNLINK, not one DEL over KEYS",
}
REDIS_DESTRUCTIVE = frozenset({"redis-flush", "redis-del-pattern"})
# Rules also looked for in `downgrade()`: never right in either direction. Deleting keys is
# what a downgrade does to undo its upgrade.
_BOTH_WAYS = frozenset({"redis-keys", "redis-flush"})
_COMMANDS = {"KEYS": "redis-keys", "FLUSHDB": "redis-flush", "FLUSHALL": "redis-flush"}
_WALKS = frozenset({"keys", "scan_iter", "scan"})
_DELETES = frozenset({"delete", "unlink"})


def uses_redis(tree: ast.Module) -> bool:
    """Whether a revision imports `redis` or `ncm_migrate.redis_ops` (a SQL or MongoDB
    revision may touch a cache too)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(_is_redis(a.name) for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module is not None and (
                _is_redis(node.module)
                or (node.module == "ncm_migrate" and any(a.name == "redis_ops" for a in node.names))):
            return True
    return False


def redis_calls(tree: ast.Module) -> Iterator[tuple[str, ast.Call, str]]:
    """(rule, call, what it is) for each dangerous call in `upgrade()`, and for KEYS and
    FLUSH* in `downgrade()` too."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in ("upgrade", "downgrade"):
            up = node.name == "upgrade"
            for rule, call, detail in _function_calls(node):
                if up or rule in _BOTH_WAYS:
                    yield rule, call, detail if up else f"in downgrade(): {detail}"


def _is_redis(module: str) -> bool:
    return module == "redis" or module.startswith("redis.") or module == "ncm_migrate.redis_ops"


def _function_calls(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[tuple[str, ast.Call, str]]:
    clients = {a.arg for a in fn.args.args[:1]}  # `upgrade(r)`: the client
    looped = _deletes_in_walks(fn)
    for node in ast.walk(fn):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name, receiver = node.func.attr, node.func.value
        if name == "keys" and (node.args or node.keywords or _named(receiver, clients)):
            # dict.keys() takes no argument; KEYS takes a pattern
            pattern = _first_string(node)
            yield "redis-keys", node, f"keys({pattern!r})" if pattern is not None else "keys()"
        elif name in ("flushdb", "flushall"):
            yield "redis-flush", node, f"{name}()"
        elif name in _DELETES and (any(isinstance(a, ast.Starred) for a in node.args) or node in looped):
            yield "redis-del-pattern", node, f"{name}() over the keys of a pattern"
        elif name == "execute_command" and node.args:
            command = _constant(node.args[0]).upper()
            if command in _COMMANDS:
                yield _COMMANDS[command], node, f"execute_command({command!r})"
            elif command in ("DEL", "UNLINK") and (
                    any(isinstance(a, ast.Starred) for a in node.args) or node in looped):
                yield "redis-del-pattern", node, f"execute_command({command!r}) over the keys of a pattern"


def _deletes_in_walks(fn: ast.AST) -> set[ast.Call]:
    """Deleting calls in the body of a `for` over `scan_iter(...)` / `keys(...)`."""
    out: set[ast.Call] = set()
    for loop in ast.walk(fn):
        if isinstance(loop, ast.For | ast.AsyncFor) and _is_walk(loop.iter):
            for node in ast.walk(loop):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                        node.func.attr in _DELETES
                        or (node.func.attr == "execute_command" and node.args
                            and _constant(node.args[0]).upper() in ("DEL", "UNLINK"))):
                    out.add(node)
    return out


def _is_walk(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _WALKS


def _named(node: ast.expr, names: set[str]) -> bool:
    return isinstance(node, ast.Name) and node.id in names


def _constant(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
        value = node.value
        return value.decode("latin-1") if isinstance(value, bytes) else value
    return ""


def _first_string(call: ast.Call) -> str | None:
    for arg in [*call.args, *(k.value for k in call.keywords if k.arg == "pattern")]:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
    return None
