"""Core statements run on the raw ``sqlite3`` connection of ``DirectSQLite``.

SQLAlchemy's ``Connection.execute`` costs several times the SQLite work of a
ledger statement (execution context, compiled-cache lookup, result set-up).
A :class:`Prepared` wraps one Core statement: on a connection that carries a
:class:`Runner` (``conn.info``, set by ``DirectSQLite.run``) it runs as the
SQL compiled once from that statement, with SQLAlchemy's own bind and result
processors, on the DBAPI connection underneath, in the same transaction;
on any other connection (PostgreSQL, the async engine) it is
``conn.execute(statement)``. A statement or parameter shape the runner does
not take (Python-side defaults, a callable bind, many expanded values, rows
of differing keys) also goes through ``conn.execute``. Database errors are
raised as SQLAlchemy's (``IntegrityError``, ``OperationalError``, ...).
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, UpdateBase
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.visitors import iterate

RUNNER_KEY = "rentahal.lean"  # the conn.info entry naming the connection's Runner
MAX_EXPANDED = 16  # an expanding IN with more values goes through SQLAlchemy
MAX_VARIANTS = 64  # compiled forms kept per runner (parameter shapes of its statements)

Params = Mapping[str, Any]
Statement = UpdateBase | Select[Any]
Processor = Callable[[Any], Any]


class Prepared:
    """One Core statement, run raw on a :class:`Runner`'s connection, else by SQLAlchemy."""

    __slots__ = ("expanding", "statement")

    def __init__(self, statement: Statement) -> None:
        self.statement = statement
        self.expanding = tuple(  # the keys of its expanding (IN list) parameters
            sorted(
                {e.key for e in iterate(statement) if isinstance(e, BindParameter) and e.expanding}
            )
        )

    def execute(self, conn: Connection, params: Params | Sequence[Params]) -> None:
        """Run the statement with one parameter set, or many (executemany)."""
        runner: Runner | None = conn.info.get(RUNNER_KEY)
        if runner is None or not runner.execute(self, params):
            conn.execute(self.statement, params)

    def rows(self, conn: Connection, params: Params) -> Sequence[Any]:
        """Run the statement (a SELECT or ``RETURNING``); all its rows, by position and name."""
        runner: Runner | None = conn.info.get(RUNNER_KEY)
        if runner is not None:
            found = runner.rows(self, params)
            if found is not None:
                return found
        found_by_sqlalchemy: Sequence[Any] = conn.execute(self.statement, params).all()
        return found_by_sqlalchemy


@dataclass(slots=True)
class _Slot:
    """Marks where a value of the call's parameters goes (``index``: in an expanded list)."""

    key: str
    index: int | None = None


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One statement for one parameter shape: SQL, how to build its arguments, its rows."""

    sql: str
    # Per position: (parameter key, index in an expanded list or None, processor),
    # or (None, None, fixed value already processed).
    args: tuple[tuple[str | None, int | None, Any], ...]
    processors: tuple[Processor | None, ...]  # per result column, None when there are none
    row: Any  # the namedtuple class of its rows (None when it returns none)

    def arguments(self, params: Params) -> tuple[Any, ...]:
        out = []
        for key, index, extra in self.args:
            if key is None:
                out.append(extra)
                continue
            value = params[key] if index is None else params[key][index]
            out.append(value if extra is None else extra(value))
        return tuple(out)


def _bind_processor(bind: BindParameter[Any], dialect: Dialect) -> Processor | None:
    processor: Processor | None = bind.type.dialect_impl(dialect).bind_processor(dialect)
    return processor


def compile_for(
    statement: Statement, dialect: Dialect, keys: Sequence[str], sizes: Mapping[str, int]
) -> _Compiled | None:
    """``statement`` compiled for parameters with ``keys`` (``sizes``: expanded list lengths).

    ``None`` when the runner cannot run it exactly as SQLAlchemy would.
    """
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    if (
        not isinstance(compiled, SQLCompiler)
        or compiled.insert_prefetch
        or compiled.update_prefetch
    ):
        return None  # Python-side defaults: SQLAlchemy's execution context computes them
    by_key: dict[str, BindParameter[Any]] = {}
    sample: dict[str, Any] = {}
    for bind in compiled.binds.values():
        if bind.callable is not None or bind.literal_execute:
            return None  # a value made per call, or rendered into the SQL text
        if not bind.required:
            continue
        by_key[bind.key] = bind
        if bind.expanding:
            if bind.key not in sizes:
                return None
            sample[bind.key] = [_Slot(bind.key, i) for i in range(sizes[bind.key])]
        else:
            sample[bind.key] = _Slot(bind.key)
    state = compiled.construct_expanded_state(sample)
    args: list[tuple[str | None, int | None, Any]] = []
    for name in state.positiontup or ():
        value = state.parameters[name]
        if isinstance(value, _Slot):
            args.append((value.key, value.index, _bind_processor(by_key[value.key], dialect)))
        elif name in compiled.binds:
            processor = _bind_processor(compiled.binds[name], dialect)
            args.append((None, None, value if processor is None else processor(value)))
        else:
            return None
    columns = list(getattr(statement, "exported_columns", ()))
    processors = tuple(
        c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
    )
    row = namedtuple("Row", [str(c.key) for c in columns], rename=True) if columns else None
    return _Compiled(state.statement, tuple(args), processors, row)


_SHARED: dict[tuple[Any, ...], _Compiled | None] = {}


class Runner:
    """Runs :class:`Prepared` statements on one sqlite3 connection (``raw``), compiled once each."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.raw: sqlite3.Connection | None = None  # set by DirectSQLite for each transaction
        self.executed = 0  # statements run raw
        self._variants: dict[
            tuple[Prepared, tuple[str, ...], tuple[int, ...]], _Compiled | None
        ] = {}

    def _compiled(self, prepared: Prepared, params: Params) -> _Compiled | None:
        sizes = {k: len(params[k]) for k in prepared.expanding if k in params}
        if any(n > MAX_EXPANDED for n in sizes.values()):
            return None
        shape = (prepared, tuple(params), tuple(sizes.values()))
        try:
            return self._variants[shape]
        except KeyError:
            pass
        # Compiled once per process (a compiler leaves cyclic garbage behind), then per runner.
        shared = (*shape, type(self.dialect), self.dialect.paramstyle)
        if shared in _SHARED:
            compiled = _SHARED[shared]
        else:
            compiled = compile_for(prepared.statement, self.dialect, list(params), sizes)
            if len(_SHARED) < MAX_VARIANTS:
                _SHARED[shared] = compiled
        if len(self._variants) < MAX_VARIANTS:
            self._variants[shape] = compiled
        return compiled

    def execute(self, prepared: Prepared, params: Params | Sequence[Params]) -> bool:
        """Run ``prepared``; ``False`` when it is for SQLAlchemy (nothing was run)."""
        sets = [params] if isinstance(params, Mapping) else list(params)
        if not sets:
            return False
        first = sets[0]
        if len(sets) > 1 and any(p.keys() != first.keys() for p in sets):
            return False
        compiled = self._compiled(prepared, first)
        if compiled is None or self.raw is None:
            return False
        try:
            arguments = [compiled.arguments(p) for p in sets]
        except (KeyError, IndexError, TypeError, ValueError):  # SQLAlchemy raises its error
            return False
        if len(arguments) > 1:
            self._call(compiled.sql, arguments, many=True).close()
        else:
            self._call(compiled.sql, arguments[0]).close()
        self.executed += 1
        return True

    def rows(self, prepared: Prepared, params: Params) -> list[Any] | None:
        """The rows of ``prepared``; ``None`` when it is for SQLAlchemy (nothing was run)."""
        compiled = self._compiled(prepared, params)
        if compiled is None or compiled.row is None or self.raw is None:
            return None
        try:
            arguments = compiled.arguments(params)
        except (KeyError, IndexError, TypeError, ValueError):  # SQLAlchemy raises its error
            return None
        cursor = self._call(compiled.sql, arguments)
        try:
            fetched = cursor.fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc, compiled.sql, params, self.dialect) from exc
        finally:
            cursor.close()
        self.executed += 1
        make, processors = compiled.row._make, compiled.processors
        if not any(processors):
            return [make(r) for r in fetched]
        return [
            make(v if p is None else p(v) for p, v in zip(processors, r, strict=True))
            for r in fetched
        ]

    def _call(self, sql: str, arguments: Any, *, many: bool = False) -> sqlite3.Cursor:
        assert self.raw is not None
        try:
            if many:
                return self.raw.executemany(sql, arguments)
            return self.raw.execute(sql, arguments)
        except sqlite3.Error as exc:
            raise _translate(exc, sql, arguments, self.dialect) from exc


def _translate(exc: sqlite3.Error, sql: str, params: Any, dialect: Dialect) -> Exception:
    """The SQLAlchemy exception ``conn.execute`` raises for this sqlite3 error."""
    return DBAPIError.instance(sql, params, exc, sqlite3.Error, dialect=dialect)
