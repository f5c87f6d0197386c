"""`mscc-alert serve` with two trusted issuers, one of whose JWKS endpoints drips a byte at a time: junk
tokens naming that issuer must not make a valid call from the other issuer wait (it waited 44 s when every
JWKS wait held a thread of the shared pool for as long as the drip went on)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from pytest_httpserver import HTTPServer

from tests.conftest import SERVICE_ID, LiveService, start_live_service, stop_live_service
from tests.scenarios import fhir_builders as fb
from tests.slow_http import DripServer

pytestmark = pytest.mark.e2e

ISSUER_A = "https://ehr-a.example.org/fhir"  # its key server drips
ISSUER_B = "https://ehr-b.example.org/fhir"
JWKS_PATH = "/jwks.json"
JUNK = 45


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, key: ec.EllipticCurvePrivateKey) -> Iterator[LiveService]:
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": "b-1", "alg": "ES384", "use": "sig"}
    good = HTTPServer(host="127.0.0.1", port=0)
    good.expect_request(JWKS_PATH).respond_with_json({"keys": [jwk]})
    good.start()
    with DripServer("headers", interval=0.5, max_seconds=120) as dripping:
        issuers = {ISSUER_A: dripping.url(JWKS_PATH), ISSUER_B: good.url_for(JWKS_PATH)}
        live = start_live_service(
            Path(tmp_path_factory.mktemp("isolation")),
            {"MSCC_ALERT_TRUSTED_ISSUERS": json.dumps(issuers), "MSCC_ALERT_JWKS_FETCH_SECONDS": "3"},
        )
        try:
            yield live
        finally:
            stop_live_service(live)
            good.clear()
            good.stop()


def bearer(key: ec.EllipticCurvePrivateKey, issuer: str, kid: str, audience: str) -> str:
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    return "Bearer " + jwt.encode(claims, key, algorithm="ES384", headers={"typ": "JWT", "kid": kid})


def test_valid_call_from_b_while_a_drips(service: LiveService, key: ec.EllipticCurvePrivateKey) -> None:
    hook_url = service.url(f"/cds-services/{SERVICE_ID}")
    junk_results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def junk() -> None:
        started = time.monotonic()
        token = bearer(key, ISSUER_A, f"junk-{uuid.uuid4()}", service.url("/cds-services"))
        try:
            response = requests.get(service.url("/cds-services"), headers={"Authorization": token}, timeout=60)
            status = response.status_code
        except requests.RequestException:
            status = 0
        with lock:
            junk_results.append((status, time.monotonic() - started))

    threads = [threading.Thread(target=junk) for _ in range(JUNK)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # the junk is in: A's fetch drips, and as many of its tokens as may wait are waiting

    timings = []
    for _ in range(3):  # the first is B's first contact: its own JWKS fetch is part of it
        body = json.dumps(fb.hook_request(fb.patient())).encode()
        started = time.monotonic()
        response = requests.post(
            hook_url, data=body, timeout=60,
            headers={"Authorization": bearer(key, ISSUER_B, "b-1", hook_url), "Content-Type": "application/json"},
        )
        timings.append(time.monotonic() - started)
        assert response.status_code == 200, response.text
    for thread in threads:
        thread.join(timeout=60)

    assert len(junk_results) == JUNK
    assert {status for status, _ in junk_results} == {401}
    # Generous margins for a loaded machine: the point is seconds, not the 44 s of a starved pool.
    assert max(timings) < 2.0, timings
    assert max(seconds for _, seconds in junk_results) < 15.0  # each junk call: at most the 3 s fetch deadline
