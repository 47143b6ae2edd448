"""Column types that behave the same on SQLite, PostgreSQL, MySQL/MariaDB and SQL Server."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy import BigInteger, Integer, UnicodeText
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeDecorator

# SQLite only autoincrements an INTEGER PRIMARY KEY, not a BIGINT one.
Id = BigInteger().with_variant(Integer, "sqlite")

# SQL Server's TEXT is deprecated; UnicodeText compiles to NVARCHAR(max) there.
LongText = UnicodeText


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite and MySQL drop the zone)."""

    from sqlalchemy import DateTime as _DateTime

    impl = _DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime stored; use utcnow()")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def key_string(length: int = 191) -> sa.types.TypeEngine[str]:
    """A provider id column: case-sensitive everywhere (MySQL/MariaDB collations are not by
    default, and Meta/Whapi ids are case-sensitive base64)."""
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb")
