"""Reading a revision's source without running it: the calls a function makes, their
string and constant arguments, and the tables `batch_alter_table` blocks name. Shared by
the lint rules (`linting.py`, `safe_ddl.py`); pure, `ast` only."""

from __future__ import annotations

import ast
from collections.abc import Iterator

Table = tuple[str | None, str]  # (schema, name), as the source names them


def calls(fn: ast.AST) -> Iterator[tuple[ast.Call, str]]:
    """Every call under `fn` with the name it calls: `op.add_column(...)` is `add_column`."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                yield node, func.attr
            elif isinstance(func, ast.Name):
                yield node, func.id


def batch_tables(fn: ast.AST) -> dict[str, Table]:
    """`with op.batch_alter_table("t") as batch_op:`: the table of each such name."""
    out: dict[str, Table] = {}
    for node in ast.walk(fn):
        if isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                ctx, alias = item.context_expr, item.optional_vars
                if (isinstance(ctx, ast.Call) and isinstance(ctx.func, ast.Attribute)
                        and ctx.func.attr == "batch_alter_table" and isinstance(alias, ast.Name)):
                    table = string_arg(ctx, 0) or keyword_string(ctx, "table_name")
                    if table:
                        out[alias.id] = (keyword_string(ctx, "schema"), table)
    return out


def string_arg(call: ast.Call, index: int) -> str | None:
    """The positional argument `index` of `call`, when it is a string literal."""
    if len(call.args) > index:
        arg = call.args[index]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
    return None


def keyword_string(call: ast.Call, name: str) -> str | None:
    """The keyword argument `name` of `call`, when it is a string literal."""
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
            return kw.value.value
    return None


def first_string(call: ast.Call) -> str | None:
    """The first positional string literal of `call`."""
    for arg in call.args:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
    return None


def is_false(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True
