"""Run hot-path Core statements straight on the DBAPI cursor, compiled once per dialect.

An `authorize` call issues about fifteen small statements. Through `Connection.execute` each
one pays for SQLAlchemy's execution context, events and result wrapping: measured under load
a quarter of the handler's CPU, several times what SQLite itself spends. Here a statement is
compiled once per (statement, dialect, parameter names); each call then only applies the
column types' bind and result processors (the same conversions SQLAlchemy applies, from the
same table definitions) and runs the SQL on the session's own DBAPI connection, inside the
session's transaction.

Anything this path does not reproduce exactly goes through `Connection.execute` instead:
inserts that need Python-side column defaults, RETURNING, and statement kinds other than
SELECT / INSERT / UPDATE / DELETE. DBAPI errors are wrapped as SQLAlchemy's
(`IntegrityError`, ...), as `Connection.execute` would raise them.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql import Delete, Insert, Select, Update
from sqlalchemy.sql.base import Executable

from cadence.db import RAW_UNIT

Params = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


@dataclass(frozen=True)
class Prepared:
    """One statement compiled for one dialect and one set of parameter names."""

    statement: Executable  # kept alive: the cache is keyed on its id()
    sql: str
    #: parameter order for positional paramstyles (sqlite's qmark); None for named styles
    order: tuple[str, ...] | None
    binds: dict[str, Callable[[Any], Any]]
    #: values of the statement's own literals (bound parameters with a value)
    defaults: dict[str, Any]
    #: result row type and per-column processors (SELECT only)
    row: type | None
    procs: tuple[Callable[[Any], Any] | None, ...]
    #: IN (...) parameters: one placeholder per list item, SQL built once per list length
    expanding: frozenset[str]
    compiled: Any
    #: list lengths -> (SQL, positional order or None, expanded name -> (parameter, index))
    expanded: dict[tuple[int, ...], tuple[str, tuple[str, ...] | None, dict[str, tuple[str, int]]]] = field(
        default_factory=dict)


class Scalars(list):  # type: ignore[type-arg]
    """First-column values; `.all()` as on SQLAlchemy's `ScalarResult`."""

    def all(self) -> list[Any]:
        return list(self)


class Result:
    """The part of SQLAlchemy's `Result` the hot path uses, over rows already fetched."""

    __slots__ = ("rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows, self.rowcount = rows, rowcount

    def first(self) -> Any:
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def scalars(self) -> Scalars:
        return Scalars(r[0] for r in self.rows)

    def all(self) -> list[Any]:
        return self.rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)


_cache: dict[tuple[int, str, tuple[str, ...]], Prepared | None] = {}


def _row_type(names: list[str]) -> type:
    """A row class with attribute access by column key, like SQLAlchemy's `Row`."""
    return collections.namedtuple("Row", names, rename=True)  # type: ignore[misc]


def _prepare(statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> Prepared | None:
    """Compile `statement`; None when this path would not run it exactly as SQLAlchemy does."""
    if not isinstance(statement, Select | Insert | Update | Delete):
        return None
    kw: dict[str, Any] = {"column_keys": list(keys)} if isinstance(statement, Insert | Update) else {}
    compiled = statement.compile(dialect=dialect, **kw)
    if (
        getattr(compiled, "insert_prefetch", None)
        or getattr(compiled, "update_prefetch", None)
        or getattr(compiled, "effective_returning", None)
    ):
        return None  # Python-side defaults to compute or rows to return: leave it to SQLAlchemy
    binds: dict[str, Callable[[Any], Any]] = {}
    defaults: dict[str, Any] = {}
    expanding: set[str] = set()
    for bp, name in compiled.bind_names.items():
        if bp.expanding:
            expanding.add(name)
        if name not in keys and not bp.required:  # a literal in the statement (LIMIT 1, id == 1)
            defaults[name] = bp.effective_value
        proc = bp.type.dialect_impl(dialect).bind_processor(dialect)
        if proc is not None:
            binds[name] = proc
    row: type | None = None
    procs: tuple[Callable[[Any], Any] | None, ...] = ()
    if isinstance(statement, Select):
        cols = list(statement.selected_columns)
        names = [c.key or f"c{i}" for i, c in enumerate(cols)]
        row = _row_type(names)
        procs = tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in cols)
    order = tuple(compiled.positiontup) if compiled.positional and compiled.positiontup is not None else None
    return Prepared(statement, compiled.string, order, binds, defaults, row, procs, frozenset(expanding), compiled)


def prepared(statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> Prepared | None:
    key = (id(statement), dialect.name, keys)
    try:
        return _cache[key]
    except KeyError:
        p = _cache[key] = _prepare(statement, dialect, keys)
        return p


def _bind(p: Prepared, params: Mapping[str, Any]) -> tuple[str, Any]:
    values = {**p.defaults, **params} if p.defaults else dict(params)
    for k, f in p.binds.items():
        if k in values:
            values[k] = [f(v) for v in values[k]] if k in p.expanding else f(values[k])
    if not p.expanding:
        return p.sql, [values[k] for k in p.order] if p.order is not None else values
    shape = tuple(len(values[k]) for k in sorted(p.expanding))
    exp = p.expanded.get(shape)
    if exp is None:
        state = p.compiled.construct_expanded_state(values)
        where = {e: (k, i) for k, names in state.parameter_expansion.items() for i, e in enumerate(names)}
        order = tuple(state.positiontup) if p.order is not None else None
        exp = p.expanded[shape] = (state.statement, order, where)
    sql, order, where = exp
    flat = {k: v for k, v in values.items() if k not in p.expanding}
    flat.update((e, values[k][i]) for e, (k, i) in where.items())
    return sql, [flat[k] for k in order] if order is not None else flat


def _rows(p: Prepared, fetched: list[Any]) -> list[Any]:
    assert p.row is not None
    if any(p.procs):
        procs = p.procs
        return [p.row(*[f(v) if f is not None else v for f, v in zip(procs, r)]) for r in fetched]
    return [p.row(*r) for r in fetched]


def _bound(session: Session) -> tuple[Any, Dialect]:
    """The session's DBAPI connection and dialect, looked up once per transaction."""
    unit = session.info.get(RAW_UNIT)
    if unit is not None:  # a held connection's unit of work (cadence.db): its transaction is open there
        return unit  # type: ignore[no-any-return]
    tx = session.get_transaction()
    cached = session.info.get("cadence_dbapi")
    if cached is not None and tx is not None and cached[0] is tx:
        return cached[1], cached[2]
    connection = session.connection()  # begins the transaction if none is open
    found = (connection.connection.driver_connection, connection.dialect)
    session.info["cadence_dbapi"] = (session.get_transaction(), *found)
    return found


def execute(session: Session, statement: Executable, params: Params = None) -> Any:
    """Run `statement` in the session's transaction: the fast path when it applies, else SQLAlchemy's."""
    if session.new or session.deleted or session.dirty:
        session.flush()  # as autoflush would: a read sees what this unit of work added
    batch: Sequence[Mapping[str, Any]] = params if isinstance(params, Sequence) else ()
    many = bool(batch)
    first: Mapping[str, Any] = batch[0] if many else (params or {})  # type: ignore[assignment]
    conn, dialect = _bound(session)
    p = prepared(statement, dialect, tuple(sorted(first)))
    if p is None or (many and p.expanding):
        return session.connection().execute(statement, params)
    cur = conn.cursor()
    try:
        if many:
            bound = [_bind(p, m) for m in batch]
            cur.executemany(bound[0][0], [b[1] for b in bound])
            return Result([], cur.rowcount)
        sql, args = _bind(p, first)
        cur.execute(sql, args)
        return Result(_rows(p, cur.fetchall()) if p.row is not None else [], cur.rowcount)
    except dialect.loaded_dbapi.Error as e:
        raise sa_exc.DBAPIError.instance(p.sql, params, e, dialect.loaded_dbapi.Error, dialect=dialect) from e
    finally:
        cur.close()
