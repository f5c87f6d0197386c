"""The durable feedback store, on an SQLite file and on a real PostgreSQL server (tests/postgres.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, select, text

from cds_hooks.feedback.models import FeedbackResult, FeedbackStore, IssuedCard, parse_feedback
from cds_hooks.feedback.report import render_report
from cds_hooks.feedback.store import SqlFeedbackStore, default_database_url, feedback, metadata
from tests.test_feedback import (
    REASON_SYSTEM,
    SERVICE,
    accepted,
    body,
    expected_report_rows,
    overridden,
    report_rows,
    report_scenario,
)

if TYPE_CHECKING:
    from tests.postgres import PostgresServer

# Registered as a plugin rather than imported, so pytest can rewrite its asserts and owns its fixture.
pytest_plugins = ["tests.postgres"]

MIGRATIONS = Path(__file__).resolve().parents[1] / "cds_hooks" / "feedback" / "migrations"



@pytest.fixture
def store(database_url: str) -> Iterator[SqlFeedbackStore]:
    store = SqlFeedbackStore(database_url)
    yield store
    store.close()


@pytest.fixture
def inspector_engine(database_url: str) -> Iterator[Engine]:
    """An engine of our own, to look at what the store wrote without going through the store."""
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def all_rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as connection:
        return {
            table: [tuple(row) for row in connection.execute(text(f'SELECT * FROM "{table}"'))]
            for table in inspect(connection).get_table_names()
        }


# --- schema ----------------------------------------------------------------------------------------------


def test_migrations_create_the_schema(store: SqlFeedbackStore, inspector_engine: Engine) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    head = ScriptDirectory.from_config(config).get_current_head()
    with inspector_engine.connect() as connection:
        schema = inspect(connection)
        assert set(schema.get_table_names()) == {
            "alembic_version", "issued_cards", "feedback", "seen_tokens", "suppressed_cards"}
        assert MigrationContext.configure(connection).get_current_revision() == head
        # The tables the store queries with are exactly what the migrations built.
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
        (unique,) = schema.get_unique_constraints("feedback")
        assert unique["column_names"] == ["service_id", "card_uuid", "outcome", "outcome_timestamp"]
        assert schema.get_pk_constraint("issued_cards")["constrained_columns"] == ["service_id", "card_uuid"]
        columns = {c["name"] for t in ("feedback", "issued_cards") for c in schema.get_columns(t)}
    assert not any("comment" in name or "extension" in name for name in columns)


def test_reopening_a_migrated_database_keeps_it(database_url: str, inspector_engine: Engine) -> None:
    SqlFeedbackStore(database_url).close()
    SqlFeedbackStore(database_url).close()
    assert all_rows(inspector_engine)["alembic_version"] == [("0003",)]


def test_concurrent_first_starts_migrate_once(database_url: str, inspector_engine: Engine) -> None:
    """Several workers starting on one fresh database at once (the migration lock, per backend)."""
    errors: list[BaseException] = []
    stores: list[SqlFeedbackStore] = []

    def start() -> None:
        try:
            stores.append(SqlFeedbackStore(database_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)  # a watchdog against a migration deadlock, not a speed check
    assert not any(thread.is_alive() for thread in threads), "concurrent migrations deadlocked"
    for store in stores:
        store.close()
    assert errors == []
    assert all_rows(inspector_engine)["alembic_version"] == [("0003",)]


def test_sql_store_is_a_feedback_store(store: SqlFeedbackStore) -> None:
    as_protocol: FeedbackStore = store  # the static check (mypy)
    assert isinstance(as_protocol, FeedbackStore)


# --- feedback rows ---------------------------------------------------------------------------------------


def issue(store: FeedbackStore, *uuids: str, issuer: str | None = None, service: str = SERVICE) -> None:
    store.record_issued(service, [IssuedCard(u, "warning") for u in uuids], issuer, None)


def test_redelivery_is_stored_once(store: SqlFeedbackStore, inspector_engine: Engine) -> None:
    issue(store, "c-1", "c-2", issuer="https://ehr.example")
    issue(store, "c-1", "c-2", issuer="https://ehr.example", service="other-service")
    request = parse_feedback(body(accepted("c-1"), overridden("c-2", code="r")))
    assert store.record_feedback(SERVICE, request, "https://ehr.example", None) == FeedbackResult(2)
    assert store.record_feedback(SERVICE, request, "https://ehr.example", None) == FeedbackResult(0)
    # The same instant with another offset is the same outcomeTimestamp.
    same = parse_feedback(body(accepted("c-1", timestamp="2024-05-01T12:00:00+02:00")))
    assert store.record_feedback(SERVICE, same, "https://ehr.example", None).stored == 0
    # Another outcome, another time, a duplicate inside one delivery, another service: new rows.
    mixed = parse_feedback(
        body(
            overridden("c-1"),
            accepted("c-1", timestamp="2024-05-01T10:00:01Z"),
            accepted("c-1", timestamp="2024-05-01T10:00:01Z"),
        )
    )
    assert store.record_feedback(SERVICE, mixed, "https://ehr.example", None) == FeedbackResult(2)
    assert store.record_feedback("other-service", request, "https://ehr.example", None) == FeedbackResult(2)
    assert len(all_rows(inspector_engine)["feedback"]) == 6


def test_feedback_on_cards_not_issued_to_this_client_is_refused(
    store: SqlFeedbackStore, inspector_engine: Engine
) -> None:
    issue(store, "ours", issuer="https://ehr.example")
    issue(store, "theirs", issuer="https://other-ehr.example")
    issue(store, "open-mode")  # issued with no client identity (auth off)
    request = parse_feedback(body(
        overridden("never-issued"), accepted("ours"), overridden("theirs"), overridden("open-mode"),
    ))
    assert store.record_feedback(SERVICE, request, "https://ehr.example", None) == FeedbackResult(1, (0, 2, 3))
    assert store.record_feedback("other-service", request, "https://ehr.example", None) == FeedbackResult(
        0, (0, 1, 2, 3))
    assert store.record_feedback(SERVICE, request, None, None) == FeedbackResult(1, (0, 1, 2))
    assert sorted(row[2] for row in all_rows(inspector_engine)["feedback"]) == ["open-mode", "ours"]


def test_large_batches_are_written_in_chunks_with_every_item_accounted(store: SqlFeedbackStore) -> None:
    issued = [f"card-{i}" for i in range(0, 1_000, 2)]  # every other card is ours
    issue(store, *issued)
    items = [overridden(f"card-{i}", timestamp="2024-05-01T10:00:00Z") for i in range(1_000)]
    result = store.record_feedback(SERVICE, parse_feedback(body(*items)), None, None)
    assert result.stored == 500
    assert result.refused == tuple(range(1, 1_000, 2))
    assert store.record_feedback(SERVICE, parse_feedback(body(*items)), None, None).stored == 0


def test_stored_columns(store: SqlFeedbackStore, inspector_engine: Engine) -> None:
    before = datetime.now(UTC)
    raw = body(
        accepted("c-1", timestamp="2024-05-01T12:00:00.250+02:00", suggestion="mri-spine"),
        overridden("c-2", code="declined"),
    )
    issue(store, "c-1", "c-2", issuer="https://ehr.example")
    store.record_feedback(SERVICE, parse_feedback(raw), "https://ehr.example", "tenant-a")
    after = datetime.now(UTC)
    with inspector_engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT card_uuid, outcome, accepted_suggestions, reason_system, reason_code,"
                " issuer, tenant, service_id FROM feedback ORDER BY card_uuid"
            )
        ).all()
    # JSON comes back parsed on PostgreSQL and as text on SQLite.
    first, second = (tuple(str(v) if isinstance(v, list) else v for v in row) for row in rows)
    assert first[:2] == ("c-1", "accepted") and "mri-spine" in first[2]
    assert first[3:] == (None, None, "https://ehr.example", "tenant-a", SERVICE)
    assert second[:2] == ("c-2", "overridden") and second[2] is None
    assert second[3:5] == (REASON_SYSTEM, "declined")
    # Read back through the store's own types: UTC-aware instants, whatever the client's offset.
    with inspector_engine.connect() as connection:
        stamps = connection.execute(
            select(feedback.c.outcome_timestamp, feedback.c.received_at).order_by(feedback.c.card_uuid)
        ).all()
    assert [s[0] for s in stamps] == [
        datetime(2024, 5, 1, 10, 0, 0, 250000, tzinfo=UTC),
        datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC),
    ]
    assert all(before <= s[1] <= after and s[1].tzinfo == UTC for s in stamps)


def test_user_comment_and_extensions_are_not_stored(
    database_url: str, store: SqlFeedbackStore, inspector_engine: Engine
) -> None:
    comment = "Pt Jane Q Example MRN 55501234 says pain since fall"
    entry = overridden("c-1", code="declined", comment=comment) | {"extension": {"com.x": "ext-value-77"}}
    store.record_issued(SERVICE, [IssuedCard("c-1", "critical")], "https://ehr.example", "tenant-a")
    store.record_feedback(SERVICE, parse_feedback(body(entry)), "https://ehr.example", "tenant-a")
    store.close()
    dump = repr(all_rows(inspector_engine))
    assert "declined" in dump and "c-1" in dump  # the inspection sees what is stored ...
    for secret in (comment, "Jane", "55501234", "ext-value-77"):
        assert secret not in dump  # ... and the free text is not there
    if database_url.startswith("sqlite"):
        # Not even in freed pages or the write-ahead log.
        path = Path(database_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert b"declined" in raw and b"55501234" not in raw and b"Jane" not in raw


# --- issued cards, the kind join and the report ----------------------------------------------------------


def test_kind_is_joined_from_issued_cards(store: SqlFeedbackStore) -> None:
    store.record_issued(SERVICE, [IssuedCard("c-crit", "critical"), IssuedCard("c-warn", "warning")], None, None)
    store.record_feedback(
        SERVICE,
        parse_feedback(body(accepted("c-crit"), overridden("c-warn"), overridden("never-ours"))),
        None,
        None,
    )
    # Feedback that arrives before its card is on record is refused (a card is recorded before it is sent).
    assert store.record_feedback(SERVICE, parse_feedback(body(accepted("late"))), None, None).refused == (0,)
    store.record_issued(SERVICE, [IssuedCard("late", "critical")], None, None)
    store.record_feedback(SERVICE, parse_feedback(body(accepted("late"))), None, None)
    kinds = {row.kind: (row.issued, row.feedback, row.accepted, row.overridden) for row in store.report().by_kind}
    assert kinds == {"critical": (2, 2, 2, 0), "warning": (1, 1, 0, 1)}


def test_report_numbers_match_the_memory_store(store: SqlFeedbackStore) -> None:
    report_scenario(store)
    assert report_rows(store) == expected_report_rows()
    assert "critical" in render_report(store.report())


def test_data_survives_closing_and_reopening(database_url: str) -> None:
    first = SqlFeedbackStore(database_url)
    report_scenario(first)
    first.record_issued(SERVICE, [IssuedCard(f"bulk-{i}", "info") for i in range(500)], None, None)
    first.close()
    second = SqlFeedbackStore(database_url)
    try:
        kinds, reasons = report_rows(second)
        expected_kinds, expected_reasons = expected_report_rows()
        assert kinds == [*expected_kinds[:2], ("info", 500, 0, 0, 0, 0.0, 0.0)]
        assert reasons == expected_reasons
        # Redelivery after a restart is still recognised.
        assert second.record_feedback(SERVICE, parse_feedback(body(accepted("c1"))), None, None) == FeedbackResult(0)
    finally:
        second.close()


def test_issued_cards_after_close_are_dropped_and_counted(store: SqlFeedbackStore) -> None:
    store.close()
    store.record_issued(SERVICE, [IssuedCard("a", "warning"), IssuedCard("b", "warning")], None, None)
    assert store.dropped_issued == 2


@pytest.mark.postgres
def test_a_locked_out_issued_card_write_fails_within_the_lock_timeout(postgres_server: PostgresServer) -> None:
    """With the table locked by someone else, record_issued gives up after the lock timeout and counts the
    cards, rather than holding the hook response for ever."""
    url = postgres_server.create_database()
    store = SqlFeedbackStore(url)
    blocker = create_engine(url)
    try:
        with blocker.begin() as connection:
            connection.execute(text("LOCK TABLE issued_cards IN ACCESS EXCLUSIVE MODE"))
            started = time.monotonic()
            store.record_issued(SERVICE, [IssuedCard("locked-out", "warning")], None, None)
            assert 4.0 < time.monotonic() - started < 30.0  # lock_timeout is 5 s
            assert store.dropped_issued == 1
        store.record_issued(SERVICE, [IssuedCard("after", "warning")], None, None)
        (row,) = store.report().by_kind
        assert (row.kind, row.issued) == ("warning", 1)
    finally:
        store.close()
        blocker.dispose()


def test_issued_cards_are_committed_before_record_issued_returns(
    store: SqlFeedbackStore, inspector_engine: Engine
) -> None:
    store.record_issued(SERVICE, [IssuedCard("c-now", "critical")], "https://ehr.example", "t")
    # Another connection (another process, after a kill -9) sees it at once: no queue, no flush.
    assert all_rows(inspector_engine)["issued_cards"][0][1] == "c-now"


# --- configuration ---------------------------------------------------------------------------------------


def test_sqlite_file_uses_wal_and_creates_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "feedback.sqlite3"
    SqlFeedbackStore(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_sqlite_store_commits_without_an_fsync_per_write(tmp_path: Path) -> None:
    """synchronous=NORMAL on the store's own connections (WAL: crash-safe, synced at checkpoints)."""
    store = SqlFeedbackStore(f"sqlite:///{tmp_path / 'feedback.sqlite3'}")
    try:
        with store._engine.connect() as connection:
            # 1 = NORMAL (2 = FULL, SQLite's default)
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar_one() == 1
    finally:
        store.close()


@pytest.mark.postgres
def test_plain_postgresql_url_uses_psycopg3(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database().replace("postgresql+psycopg://", "postgresql://")
    store = SqlFeedbackStore(url)
    try:
        issue(store, "c-1")
        assert store.record_feedback(SERVICE, parse_feedback(body(accepted("c-1"))), None, None).stored == 1
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "SQLite file path"),
        ("sqlite:///:memory:", "SQLite file path"),
        ("mysql://u@localhost/db", "unsupported feedback database 'mysql'"),
    ],
)
def test_unusable_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SqlFeedbackStore(url)


def test_default_database_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_database_url() == f"sqlite:///{tmp_path}/xdg/mscc-alert/feedback.sqlite3"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/is/invalid")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_database_url() == f"sqlite:///{tmp_path}/home/.local/share/mscc-alert/feedback.sqlite3"
    monkeypatch.delenv("XDG_DATA_HOME")
    url = default_database_url()
    assert url == f"sqlite:///{tmp_path}/home/.local/share/mscc-alert/feedback.sqlite3"
    SqlFeedbackStore(url).close()
    assert (tmp_path / "home/.local/share/mscc-alert/feedback.sqlite3").is_file()


def test_replay_cache_is_shared_through_the_database(database_url: str) -> None:
    """Two stores on one database stand for two workers: a JWT id seen by one is a replay for the other."""
    first, second = SqlFeedbackStore(database_url), SqlFeedbackStore(database_url)
    try:
        one, two = first.replay_cache(), second.replay_cache()
        key = ("https://ehr.example", f"jti-{uuid.uuid4()}")
        assert one.add(key, expires_at=2_000.0, now=1_000.0) is True
        assert two.add(key, expires_at=2_000.0, now=1_000.0) is False
        assert one.add(key, expires_at=2_000.0, now=1_000.0) is False
        assert two.add(("https://other.example", key[1]), expires_at=2_000.0, now=1_000.0) is True
        with first._engine.connect() as connection:  # only a digest is stored, never the jti itself
            stored = [row[0] for row in connection.execute(text("SELECT token_key FROM seen_tokens"))]
        assert stored and all(len(k) == 64 and key[1] not in k for k in stored)
    finally:
        first.close()
        second.close()


# --- contention: a large feedback batch against JWT replay checks and the hook path ------------------------


def test_a_large_feedback_batch_does_not_starve_replay_checks_or_issued_cards(store: SqlFeedbackStore) -> None:
    """While 5,000 feedback rows are written (about what a 1 MiB body holds), the replay check (which fails
    closed) and the hook path's issued-card write keep getting the database. Written as one transaction, the
    batch held SQLite's write lock for its whole length and replay checks timed out."""
    cards = [f"card-{i}" for i in range(500)]
    issue(store, *cards)
    items = [overridden(cards[i % 500], timestamp=f"2024-05-01T10:{i // 500:02d}:{i % 60:02d}.{i:06d}Z")
             for i in range(5_000)]
    request = parse_feedback(body(*items))
    replay = store.replay_cache()
    done = threading.Event()
    stored: list[int] = []

    def write_batch() -> None:
        try:
            stored.append(store.record_feedback(SERVICE, request, None, None).stored)
        finally:
            done.set()

    writer = threading.Thread(target=write_batch)
    writer.start()
    waits: list[float] = []
    refused = 0
    for i in range(100_000):  # bounded: the batch ends long before
        if done.is_set():
            break
        started = time.monotonic()
        if not replay.add(("https://ehr.example", f"jti-{i}"), expires_at=4e9, now=time.time()):
            refused += 1
        store.record_issued(SERVICE, [IssuedCard(f"hook-{i}", "warning")], None, None)
        waits.append(time.monotonic() - started)
        time.sleep(0.005)
    writer.join(timeout=120)
    assert stored == [5_000]
    assert refused == 0 and store.dropped_issued == 0
    assert len(waits) >= 5  # they ran during the batch, not after it
    # Generous for a loaded machine: a chunk holds the lock for milliseconds; the whole batch, for seconds.
    assert max(waits) < 1.0, sorted(waits)[-5:]
