"""A JWT id is remembered for as long as its token is accepted (exp + leeway), in every replay store.

The token is valid while now < exp + leeway; `exp` may be fractional (RFC 7519 NumericDate). Each store is
tried at the boundary: in-process (`memory://` and one worker), and the database one (SQLite file and a real
PostgreSQL server) seen from two stores, standing for two workers, where the second worker prunes expired
rows at the moment of the replay.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from sqlalchemy import text

from cds_hooks.feedback.store import SqlFeedbackStore
from cds_hooks.security import AuthenticationError, JwksCache, JwtVerifier
from cds_hooks.security.jwt_auth import ReplayCache

if TYPE_CHECKING:
    from tests.postgres import PostgresServer

pytest_plugins = ["tests.postgres"]

NOW = 1_800_000_000.0
LEEWAY = 30
ISSUER = "https://ehr.example.org/fhir"
JWKS_URL = "https://ehr.example.org/jwks.json"
AUDIENCE = "https://cds.example.org/cds-services/breast-cancer-back-pain"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def token(key: ec.EllipticCurvePrivateKey, exp: float, jti: str) -> str:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "iat": int(NOW), "exp": exp, "jti": jti}
    return jwt.encode(claims, key, algorithm="ES384", headers={"typ": "JWT", "kid": "k1"})


def verifier(key: ec.EllipticCurvePrivateKey, clock: Clock, replay: ReplayCache | None) -> JwtVerifier:
    jwks = JwksCache()
    public = ECAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": "k1", "alg": "ES384", "use": "sig"}
    jwks.preload(JWKS_URL, {"keys": [public]})  # no network: the subject here is the replay store
    return JwtVerifier({ISSUER: JWKS_URL}, jwks=jwks, clock=clock, leeway_seconds=LEEWAY, replay_cache=replay)


def reason(verifier: JwtVerifier, bearer: str) -> str:
    try:
        verifier.verify(f"Bearer {bearer}", AUDIENCE)
    except AuthenticationError as error:
        return str(error)
    return "ok"


# Two verifiers sharing one store: for the database, two workers (each with its own prune schedule).
Pair = Callable[[Clock], tuple[JwtVerifier, JwtVerifier]]


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def pair(
    request: pytest.FixtureRequest, tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> Iterator[tuple[Pair, SqlFeedbackStore | None]]:
    if request.param == "memory":
        # One process: build_verifier gives the in-process cache (what `memory://` and tests use).
        def memory_pair(clock: Clock) -> tuple[JwtVerifier, JwtVerifier]:
            one = verifier(key, clock, None)
            return one, one

        yield memory_pair, None
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'replay.sqlite3'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database()
    first, second = SqlFeedbackStore(url), SqlFeedbackStore(url)

    def database_pair(clock: Clock) -> tuple[JwtVerifier, JwtVerifier]:
        return verifier(key, clock, first.replay_cache()), verifier(key, clock, second.replay_cache())

    try:
        yield database_pair, first
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("exp", [NOW + 60.5, NOW + 60.999, NOW + 61])
def test_replay_in_the_last_second_of_validity_is_refused(
    pair: tuple[Pair, SqlFeedbackStore | None], key: ec.EllipticCurvePrivateKey, exp: float
) -> None:
    make_pair, store = pair
    clock = Clock()
    one, two = make_pair(clock)
    bearer = token(key, exp, f"jti-{uuid.uuid4()}")
    assert reason(one, bearer) == "ok"

    # Replays right up to the end of validity, each seen by the "other worker", which prunes as it checks.
    for before_end in (1.0, 0.5, 0.01):
        if exp + LEEWAY - before_end > NOW:
            clock.now = exp + LEEWAY - before_end
            assert reason(two, bearer) == "replayed-jti", f"replayed {before_end}s before the end"
    clock.now = exp + LEEWAY
    assert reason(two, bearer) == "expired"

    if store is not None:  # what the database keeps: exp + leeway, rounded up to a whole second
        with store._engine.connect() as connection:
            (kept,) = connection.execute(text("SELECT expires_at FROM seen_tokens")).scalars().all()
        assert kept == math.ceil(exp + LEEWAY)


def test_memory_store_flooded_in_the_last_second_refuses_every_replay(key: ec.EllipticCurvePrivateKey) -> None:
    """Unlimited replays inside the final second were possible when the jti was kept to floor(exp) + leeway."""
    clock = Clock()
    one = verifier(key, clock, None)
    bearer = token(key, NOW + 10.9, "flood")
    assert reason(one, bearer) == "ok"
    outcomes = set()
    for step in range(100):  # 100 replays spread over the last 0.9 s
        clock.now = NOW + 10 + LEEWAY + step * 0.009
        outcomes.add(reason(one, bearer))
    assert outcomes == {"replayed-jti"}


def test_database_prunes_seen_tokens_only_after_a_grace(tmp_path: Path) -> None:
    """Rows do go (storage is bounded), but only a while after expiry: hosts sharing it may disagree on time."""
    store = SqlFeedbackStore(f"sqlite:///{tmp_path / 'prune.sqlite3'}")
    try:
        replay = store.replay_cache()
        assert replay.add(("iss", "a"), expires_at=1_000.0, now=900.0)
        late = store.replay_cache()  # a fresh worker prunes on its first add
        assert late.add(("iss", "b"), expires_at=2_000.0, now=1_030.0)
        assert not late.add(("iss", "a"), expires_at=1_000.0, now=1_030.0)  # within the grace: still known
        later = store.replay_cache()
        assert later.add(("iss", "c"), expires_at=9_000.0, now=1_000.0 + 61)
        with store._engine.connect() as connection:
            rows = sorted(connection.execute(text("SELECT expires_at FROM seen_tokens")).scalars())
        assert rows == [2_000.0, 9_000.0]
    finally:
        store.close()
