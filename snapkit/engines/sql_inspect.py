"""Database inspection through SQLAlchemy, shared by the server engines (PostgreSQL, MySQL/MariaDB).

Everything here takes a SQLAlchemy Engine or Connection of any dialect and
returns plain JSON-able values (the `database` metadata, docs/cli.md `snapkit show`):

- `user_schemas(bind)`: the schemas snapkit describes. PostgreSQL: every
  schema but the system ones (pg_catalog, information_schema, pg_toast, …);
  other dialects: the connection's default schema (MySQL: the database).
- `table_names(bind)`: (schema, table) pairs of the base tables, sorted.
- `row_counts(conn)`: {name: exact count(*)}; tables of the default schema
  are named plainly, others as `schema.table`.
- `fingerprint(bind)`: "sha256:<hex>" over the normalised reflected schema:
  tables, columns and their types, defaults, nullability, identity/computed
  columns, primary keys, indexes, foreign keys, unique and check
  constraints, sequences and view (and materialized view) definitions. The
  document is built from sorted lists and hashed as canonical JSON, so it
  does not depend on catalog order, object ids or the database's name: a
  restored copy has the same fingerprint as its source.
- `migration_state(conn)`: alembic_version, django_migrations,
  schema_migrations (Rails, or golang-migrate when it has a `dirty`
  column) and flyway_schema_history, in the shape SQLite's engine records.
- `describe(conn, engine, server_version, url)`: all of the above as a
  DatabaseInfo.

Pass a Connection inside a transaction (REPEATABLE READ on PostgreSQL, a
consistent-snapshot transaction on MySQL) to get counts and schema of one
instant. SQLAlchemy is imported here, so import this module lazily (hook
start-up time). Reflection warnings (types SQLAlchemy does not know) are
silenced: the CLI must not print them; such types are fingerprinted by the
name the database gives them.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from contextlib import contextmanager

PG_SYSTEM_SCHEMAS = {"information_schema"}
MIGRATION_TABLES = ("alembic_version", "django_migrations", "schema_migrations", "flyway_schema_history")


@contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _inspector(bind):
    import sqlalchemy

    return sqlalchemy.inspect(bind)


def _dialect(bind):
    return bind.dialect


def user_schemas(bind, insp=None) -> list[str | None]:
    """The schemas to describe; None stands for the default schema."""
    insp = insp or _inspector(bind)
    if _dialect(bind).name != "postgresql":
        return [None]
    default = insp.default_schema_name
    out: list[str | None] = [None]
    with _quiet():
        names = insp.get_schema_names()
    for name in sorted(names):
        if name == default or name in PG_SYSTEM_SCHEMAS or name.startswith("pg_"):
            continue
        out.append(name)
    return out


def _qualified(schema: str | None, name: str) -> str:
    return name if schema is None else f"{schema}.{name}"


def table_names(bind, insp=None) -> list[tuple[str | None, str]]:
    insp = insp or _inspector(bind)
    out = []
    with _quiet():
        for schema in user_schemas(bind, insp):
            out += [(schema, t) for t in insp.get_table_names(schema=schema)]
    return sorted(out, key=lambda st: (st[0] or "", st[1]))


def _quote(bind, schema: str | None, name: str) -> str:
    prep = _dialect(bind).identifier_preparer
    q = prep.quote_identifier(name)
    return q if schema is None else f"{prep.quote_identifier(schema)}.{q}"


def row_counts(conn, tables=None) -> dict[str, int]:
    """Exact row counts ({name: count}) of `tables` ((schema, name) pairs; default: all)."""
    from sqlalchemy import text

    tables = table_names(conn) if tables is None else tables
    return {_qualified(s, t): int(conn.execute(text(f"SELECT count(*) FROM {_quote(conn, s, t)}")).scalar())
            for s, t in tables}


# ---------------------------------------------------------------- fingerprint

_WS = re.compile(r"\s+")


def _norm(value):
    """JSON-able, whitespace-normalised form of a reflected value."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return _WS.sub(" ", value).strip()
    if isinstance(value, dict):
        return {str(k): _norm(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return _norm(str(value))


def _type_name(type_, dialect) -> str:
    try:
        return type_.compile(dialect=dialect)
    except Exception:  # noqa: BLE001 - a type SQLAlchemy reflects but cannot render
        return repr(type_)


def _sorted(items: list) -> list:
    return sorted(items, key=lambda x: json.dumps(x, sort_keys=True, default=str))


def _column(col: dict, dialect) -> dict:
    out = {"name": col["name"], "type": _type_name(col["type"], dialect),
           "nullable": bool(col.get("nullable", True)), "default": _norm(col.get("default"))}
    for key in ("identity", "computed"):
        if col.get(key):
            out[key] = _norm(col[key])
    return out


def _drop_names(items: list[dict], keep_name: bool = True) -> list[dict]:
    return [{k: _norm(v) for k, v in item.items() if keep_name or k != "name"} for item in items]


def _multi(insp, method: str, schema, **kw) -> dict:
    """insp.get_multi_<x>() keyed by table name; {} where the dialect lacks it."""
    try:
        with _quiet():
            found = getattr(insp, method)(schema=schema, **kw)
    except NotImplementedError:
        return {}
    return {name: value for (_schema, name), value in found.items()}


def schema_document(bind, insp=None) -> dict:
    """The normalised schema `fingerprint` hashes (useful to diff two schemas)."""
    from sqlalchemy.engine.reflection import ObjectKind

    insp = insp or _inspector(bind)
    dialect = _dialect(bind)
    doc: dict = {}
    for schema in user_schemas(bind, insp):
        key = schema or ""
        with _quiet():
            tables = sorted(insp.get_table_names(schema=schema))
        columns = _multi(insp, "get_multi_columns", schema, kind=ObjectKind.TABLE)
        pks = _multi(insp, "get_multi_pk_constraint", schema, kind=ObjectKind.TABLE)
        indexes = _multi(insp, "get_multi_indexes", schema, kind=ObjectKind.ANY)
        fks = _multi(insp, "get_multi_foreign_keys", schema, kind=ObjectKind.TABLE)
        uniques = _multi(insp, "get_multi_unique_constraints", schema, kind=ObjectKind.TABLE)
        checks = _multi(insp, "get_multi_check_constraints", schema, kind=ObjectKind.TABLE)
        default = insp.default_schema_name
        out_tables = {}
        for t in tables:
            pk = pks.get(t) or {}
            fk_list = []
            for fk in fks.get(t, []):
                fk = dict(fk)
                if fk.get("referred_schema") == default:
                    fk["referred_schema"] = None
                fk_list.append(fk)
            out_tables[t] = {
                "columns": [_column(c, dialect) for c in columns.get(t, [])],
                "primary_key": {"name": pk.get("name"), "columns": list(pk.get("constrained_columns") or [])},
                "indexes": _sorted(_drop_names(indexes.get(t, []))),
                "foreign_keys": _sorted(_drop_names(fk_list)),
                "unique": _sorted(_drop_names(uniques.get(t, []))),
                "checks": _sorted(_drop_names(checks.get(t, []))),
            }
        views = {}
        for kind, lister in (("view", "get_view_names"), ("materialized_view", "get_materialized_view_names")):
            try:
                with _quiet():
                    names = getattr(insp, lister)(schema=schema)
            except (NotImplementedError, AttributeError):
                continue
            for v in sorted(names):
                try:
                    with _quiet():
                        definition = insp.get_view_definition(v, schema=schema)
                except NotImplementedError:
                    definition = None
                views[v] = {"kind": kind, "definition": _norm(definition)}
                if kind == "materialized_view":  # their indexes come with ObjectKind.ANY
                    views[v]["indexes"] = _sorted(_drop_names(indexes.get(v, [])))
        try:
            with _quiet():
                sequences = sorted(insp.get_sequence_names(schema=schema))
        except NotImplementedError:
            sequences = []
        doc[key] = {"tables": out_tables, "views": views, "sequences": sequences}
    return doc


def fingerprint(bind, insp=None) -> str:
    """sha256 over the normalised reflected schema (see the module docstring)."""
    doc = schema_document(bind, insp)
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------- migrations

def migration_state(conn, insp=None) -> dict:
    """Migration tools' bookkeeping in the default schema, where present (SQLite's shape)."""
    from sqlalchemy import text

    insp = insp or _inspector(conn)
    with _quiet():
        present = set(insp.get_table_names()) & set(MIGRATION_TABLES)

    def q(name: str) -> str:
        return _quote(conn, None, name)

    def rows(sql: str):
        return conn.execute(text(sql)).fetchall()

    state: dict = {}
    if "alembic_version" in present:
        state["alembic"] = sorted(str(r[0]) for r in rows(f"SELECT version_num FROM {q('alembic_version')}"))
    if "django_migrations" in present:
        found = rows(f"SELECT app, name FROM {q('django_migrations')} ORDER BY app, id")
        latest: dict = {}
        for app, name in found:
            latest[app] = name
        state["django"] = {"applied": len(found), "latest": latest}
    if "schema_migrations" in present:
        with _quiet():
            cols = {c["name"] for c in insp.get_columns("schema_migrations")}
        if "dirty" in cols:  # golang-migrate
            found = rows(f"SELECT version, dirty FROM {q('schema_migrations')}")
            state["golang_migrate"] = ({"version": _scalar(found[0][0]), "dirty": bool(found[0][1])}
                                       if found else None)
        else:  # Rails
            versions = [str(r[0]) for r in rows(f"SELECT version FROM {q('schema_migrations')}")]
            state["rails"] = {"applied": len(versions), "latest": max(versions, default=None)}
    if "flyway_schema_history" in present:
        found = rows(f"SELECT version FROM {q('flyway_schema_history')} WHERE success "
                     "AND version IS NOT NULL ORDER BY installed_rank DESC")
        state["flyway"] = {"version": _scalar(found[0][0]) if found else None}
    return state


def _scalar(value):
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def describe(conn, engine: str, server_version: str, url: str):
    """DatabaseInfo (tables + counts, fingerprint, migration state) read through `conn`."""
    from snapkit.engines.base import DatabaseInfo

    insp = _inspector(conn)
    tables = table_names(conn, insp)
    return DatabaseInfo(engine, server_version, url, row_counts(conn, tables), fingerprint(conn, insp),
                        migration_state(conn, insp))
