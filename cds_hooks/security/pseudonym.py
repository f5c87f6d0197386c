"""Keyed pseudonyms: who a card was for, and who saw it, without storing either identifier.

HMAC-SHA-256 with `MSCC_ALERT_PSEUDONYM_SECRET` over the issuer (the EHR that called, "" when unauthenticated)
and the id, so the same patient id at two EHRs are two people, and nobody without the secret can confirm a
guessed id against the database. A role prefix keeps a patient's and a clinician's pseudonyms apart even if
their ids are equal.
"""

from __future__ import annotations

import hashlib
import hmac


class Pseudonyms:
    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def _digest(self, role: str, issuer: str | None, identifier: str) -> str:
        message = "\0".join((role, issuer or "", identifier)).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def patient(self, issuer: str | None, patient_id: str) -> str:
        return self._digest("patient", issuer, patient_id)

    def user(self, issuer: str | None, user_id: str | None) -> str | None:
        return self._digest("user", issuer, user_id) if user_id else None
