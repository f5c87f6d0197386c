"""Durable feedback store on SQLAlchemy 2: an SQLite file by default, PostgreSQL when configured.

The schema belongs to the Alembic revisions in `cds_hooks/migrations`, applied (``upgrade head``) when a
store is constructed. The tables below mirror them for queries; a test checks that the two agree.

Issued cards are recorded on the hook path, so `record_issued` only enqueues: a background thread
writes them. When the bounded queue is full the cards are dropped and counted (`dropped_issued`) rather
than slowing a hook response; an issued card that is missing only makes its feedback count as kind
"unknown" in the report.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    create_engine,
    delete,
    event,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.types import TypeDecorator

from cds_hooks.acknowledgements import SqlAcknowledgements
from cds_hooks.feedback import FeedbackRequest, IssuedCard, stored_rows
from cds_hooks.feedback_report import FeedbackFact, FeedbackReport, IssuedFact, SuppressedFact, build_report

__all__ = ["SqlFeedbackStore", "default_database_url", "metadata"]

log = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).resolve().with_name("migrations")
# Any fixed 64-bit number, the same in every process: serialises concurrent `upgrade head` on PostgreSQL.
_PG_MIGRATION_LOCK = 0x6D7363635F666462  # "mscc_fdb"
_QUEUE_SIZE = 10_000


class _UtcDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on SQLite (no time zone support) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError("naive datetime: the feedback store keeps UTC instants only")
        value = value.astimezone(UTC)
        # SQLite stores text; writing every value in UTC without an offset keeps equality and ordering exact.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()
# A repeated delivery of the same feedback is stored once (CDS Hooks lets clients resend).
_FEEDBACK_KEY = ("service_id", "card_uuid", "outcome", "outcome_timestamp")
_ROW_ID = BigInteger().with_variant(Integer(), "sqlite")

issued_cards = Table(
    "issued_cards",
    metadata,
    Column("service_id", String(128), primary_key=True),
    Column("card_uuid", String(256), primary_key=True),
    Column("indicator", String(16), nullable=False),
    Column("issued_at", _UtcDateTime(), nullable=False),
    Column("issuer", Text()),
    Column("tenant", Text()),
    # Revision 0003: what suppression and the report need (cards/suppression.py, cds_hooks/pseudonym.py).
    Column("kind", String(32)),
    Column("evidence_at", _UtcDateTime()),
    Column("rules_version", String(128)),
    Column("patient_key", String(64)),
    Column("user_key", String(64)),
    CheckConstraint("indicator IN ('info', 'warning', 'critical')", name="ck_issued_cards_indicator"),
    Index("ix_issued_cards_patient", "service_id", "patient_key", "issued_at"),
)

# Cards not shown because a clinician had already acted on them: counts only (revision 0003).
suppressed_cards = Table(
    "suppressed_cards",
    metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    Column("service_id", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("indicator", String(16), nullable=False),
    Column("rules_version", String(128)),
    Column("suppressed_at", _UtcDateTime(), nullable=False),
    Column("issuer", Text()),
    Column("tenant", Text()),
    CheckConstraint("indicator IN ('info', 'warning', 'critical')", name="ck_suppressed_cards_indicator"),
)

# Client JWT ids seen by any worker sharing this database (replay protection), kept until the token expires.
# The key is a SHA-256 of (iss, jti): fixed length whatever the client sends.
seen_tokens = Table(
    "seen_tokens",
    metadata,
    Column("token_key", String(64), primary_key=True),
    Column("expires_at", Float(), nullable=False),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    Column("service_id", String(128), nullable=False),
    Column("card_uuid", String(256), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("accepted_suggestions", JSON(none_as_null=True)),
    Column("reason_system", String(1024)),
    Column("reason_code", String(256)),
    Column("outcome_timestamp", _UtcDateTime(), nullable=False),
    Column("received_at", _UtcDateTime(), nullable=False),
    Column("issuer", Text()),
    Column("tenant", Text()),
    UniqueConstraint(*_FEEDBACK_KEY, name="uq_feedback_delivery"),
    CheckConstraint("outcome IN ('accepted', 'overridden')", name="ck_feedback_outcome"),
)


def default_database_url() -> str:
    """An SQLite file in the user's data directory (XDG_DATA_HOME, else ~/.local/share)."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec says a relative path is invalid and must be ignored.
    root = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return URL.create("sqlite", database=str(root / "mscc-alert" / "feedback.sqlite3")).render_as_string()


def _normalise_url(database_url: str) -> tuple[URL, str | None]:
    """The URL to connect with, and the database file when it is SQLite."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        # Plain postgresql:// would pick psycopg2, which we do not install; psycopg 3 is our driver.
        return (url.set(drivername="postgresql+psycopg") if "+" not in url.drivername else url), None
    if backend == "sqlite":
        if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
            raise ValueError(
                "the feedback store needs an SQLite file path (sqlite:///path/to/file.sqlite3);"
                " for a store that lives in memory use MemoryFeedbackStore"
            )
        return url, url.database
    raise ValueError(f"unsupported feedback database {backend!r}: use sqlite or postgresql")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: the issued-card writer and the feedback endpoint do not block readers (or each other for long).
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL is crash-safe for the application (a commit survives a killed process) and syncs to disk
    # at checkpoints instead of on every commit; only a power cut can lose the last few issued-card rows or
    # seen token ids. FULL would put an fsync on every hook request that issues a card or carries a JWT.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


@contextmanager
def _sqlite_file_lock(database: str) -> Iterator[None]:
    """Serialise `upgrade head` between processes (e.g. several uvicorn workers) on one SQLite file.

    Alembic runs SQLite DDL outside a transaction, so two first starts could both try CREATE TABLE.
    """
    with open(f"{database}.migration-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _dialect_insert(dialect: str, table: Table) -> Any:
    """INSERT with the dialect's ON CONFLICT support (both SQLite and PostgreSQL have it, spelled alike)."""
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


class SqlReplayCache:
    """`ReplayCache` in the service's database, so every worker refuses a token any of them has seen."""

    _PRUNE_EVERY = 60.0  # seconds between deletions of expired rows

    def __init__(self, engine: Engine, dialect: str) -> None:
        self._engine = engine
        self._insert = _dialect_insert(dialect, seen_tokens)
        self._next_prune = 0.0

    def add(self, key: tuple[str, str], expires_at: float, now: float) -> bool:
        digest = hashlib.sha256("\0".join(key).encode()).hexdigest()
        statement = self._insert.values(token_key=digest, expires_at=expires_at).on_conflict_do_nothing(
            index_elements=["token_key"]).returning(seen_tokens.c.token_key)
        try:
            with self._engine.begin() as connection:
                if now >= self._next_prune:
                    connection.execute(delete(seen_tokens).where(seen_tokens.c.expires_at <= now))
                    self._next_prune = now + self._PRUNE_EVERY
                inserted = connection.execute(statement).first()
        except SQLAlchemyError:
            log.warning("replay cache unavailable: token refused")  # fail closed
            return False
        return inserted is not None


class SqlFeedbackStore:
    """`FeedbackStore` on SQLite or PostgreSQL; migrates the schema to head on construction."""

    def __init__(self, database_url: str, *, queue_size: int = _QUEUE_SIZE) -> None:
        url, sqlite_file = _normalise_url(database_url)
        self._dialect = url.get_backend_name()
        if sqlite_file is not None:
            Path(sqlite_file).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: SQL errors would otherwise quote card uuids, issuers and tenants into logs.
        # A pooled PostgreSQL connection can go stale (server restart, idle timeout): test it before use. A SQLite
        # file connection cannot, and a ping would be a wasted statement per transaction.
        self._engine: Engine = create_engine(url, hide_parameters=True, pool_pre_ping=sqlite_file is None)
        if sqlite_file is not None:
            event.listen(self._engine, "connect", _sqlite_pragmas)
        try:
            self._migrate(sqlite_file)
        except BaseException:
            self._engine.dispose()
            raise

        self._lock = threading.Lock()
        self._dropped = 0
        self._closed = False
        self._queue: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize=queue_size)
        self._writer = threading.Thread(target=self._write_issued, name="feedback-issued-writer", daemon=True)
        self._writer.start()

    def _migrate(self, sqlite_file: str | None) -> None:
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        config.set_main_option("path_separator", "os")
        if sqlite_file is not None:
            with _sqlite_file_lock(sqlite_file), self._engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        else:
            with self._engine.begin() as connection:
                # Transactional DDL plus a transaction-scoped lock: concurrent starts migrate one at a time.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
                config.attributes["connection"] = connection
                command.upgrade(config, "head")

    def replay_cache(self) -> SqlReplayCache:
        return SqlReplayCache(self._engine, self._dialect)

    def acknowledgements(self) -> SqlAcknowledgements:
        return SqlAcknowledgements(self._engine)

    def _insert(self, table: Table) -> Any:
        return _dialect_insert(self._dialect, table)

    # --- issued cards (hook path) ---------------------------------------------------------------------

    @property
    def dropped_issued(self) -> int:
        """Issued cards not recorded because the queue was full, the store closed, or a write failed."""
        with self._lock:
            return self._dropped

    def _drop(self, count: int, why: str) -> None:
        with self._lock:
            first = self._dropped == 0
            self._dropped += count
        if first:
            log.warning(
                "feedback store: dropped %d issued card(s): %s; further drops are only counted", count, why
            )

    def record_issued(
        self, service_id: str, cards: Sequence[IssuedCard], issuer: str | None, tenant: str | None
    ) -> None:
        if not cards:
            return
        now = datetime.now(UTC)
        rows = [
            {
                "service_id": service_id,
                "card_uuid": card.uuid,
                "indicator": card.indicator,
                "issued_at": now,
                "issuer": issuer,
                "tenant": tenant,
                **card.context(),
            }
            for card in cards
        ]
        # Checking `closed` and enqueueing under one lock means nothing is enqueued behind close()'s sentinel.
        with self._lock:
            if self._closed:
                why = "store closed"
            else:
                try:
                    self._queue.put_nowait(rows)
                    return
                except queue.Full:
                    why = "queue full"
        self._drop(len(rows), why)

    def _write_issued(self) -> None:
        statement = self._insert(issued_cards).on_conflict_do_nothing(
            index_elements=["service_id", "card_uuid"]
        )
        while True:
            batches = [self._queue.get()]
            # Take whatever else is already waiting, so a burst is written in one transaction.
            while batches[-1] is not None and len(batches) < 100:
                try:
                    batches.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = [row for batch in batches if batch is not None for row in batch]
            try:
                if rows:
                    with self._engine.begin() as connection:
                        connection.execute(statement, rows)
            except Exception:
                # Keep the writer alive: one failed write must not stop recording for good.
                log.exception("feedback store: writing %d issued card(s) failed", len(rows))
                self._drop(len(rows), "write failed")
            finally:
                for _ in batches:
                    self._queue.task_done()
            if batches[-1] is None:
                return

    def flush(self) -> None:
        """Wait until every issued card enqueued so far has been written (or dropped)."""
        self._queue.join()

    # --- feedback ----------------------------------------------------------------------------------------

    def record_feedback(
        self, service_id: str, request: FeedbackRequest, issuer: str | None, tenant: str | None
    ) -> int:
        # RETURNING gives a row only for an insert that happened, on both databases (rowcount does not
        # on PostgreSQL, where SQLAlchemy already adds RETURNING to fetch the new primary key).
        statement = (
            self._insert(feedback)
            .on_conflict_do_nothing(index_elements=list(_FEEDBACK_KEY))
            .returning(feedback.c.id)
        )
        new = 0
        with self._engine.begin() as connection:
            for row in stored_rows(service_id, request, issuer, tenant, datetime.now(UTC)):
                result = connection.execute(
                    statement,
                    {
                        "service_id": row.service_id,
                        "card_uuid": row.card_uuid,
                        "outcome": row.outcome,
                        "accepted_suggestions": list(row.accepted_suggestions) or None,
                        "reason_system": row.reason_system,
                        "reason_code": row.reason_code,
                        "outcome_timestamp": row.outcome_timestamp,
                        "received_at": row.received_at,
                        "issuer": row.issuer,
                        "tenant": row.tenant,
                    },
                )
                new += len(result.all())
        return new

    def report(self) -> FeedbackReport:
        self.flush()
        kind = func.coalesce(issued_cards.c.indicator, literal("unknown"))
        joined = feedback.outerjoin(
            issued_cards,
            and_(
                issued_cards.c.service_id == feedback.c.service_id,
                issued_cards.c.card_uuid == feedback.c.card_uuid,
            ),
        )
        with self._engine.connect() as connection:
            issued = connection.execute(
                select(issued_cards.c.indicator, func.count()).group_by(issued_cards.c.indicator)
            ).all()
            rows = connection.execute(
                select(
                    feedback.c.service_id,
                    feedback.c.card_uuid,
                    kind,
                    feedback.c.outcome,
                    feedback.c.outcome_timestamp,
                    feedback.c.reason_system,
                    feedback.c.reason_code,
                ).select_from(joined)
            ).all()
            cards = connection.execute(
                select(issued_cards.c.service_id, issued_cards.c.card_uuid, issued_cards.c.indicator,
                       issued_cards.c.issued_at, issued_cards.c.rules_version, issued_cards.c.patient_key,
                       issued_cards.c.user_key)
            ).all()
            hidden = connection.execute(
                select(suppressed_cards.c.indicator, suppressed_cards.c.rules_version, suppressed_cards.c.suppressed_at)
            ).all()
        return build_report(
            {indicator: count for indicator, count in issued}, [FeedbackFact(*row) for row in rows],
            [IssuedFact(*row) for row in cards], [SuppressedFact(*row) for row in hidden],
        )

    def close(self) -> None:
        """Write the issued cards still queued, stop the writer and release connections. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._writer.join()
        self._engine.dispose()
