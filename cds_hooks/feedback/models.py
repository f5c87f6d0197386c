"""CDS Hooks 2.0 feedback: request models, the storage seam, and an in-memory store.

Spec: CDS Hooks 2.0 §Feedback (https://cds-hooks.hl7.org/STU2/#feedback) and the invariants cds-fb-1..3
in HL7/cds-hooks `input/fsh/invariants`. What is stored is only what analytics need; the clinician's
free-text `userComment` and any `extension` are validated but never stored, since either may hold PHI.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from cards.suppression import Outcome, PriorAction
from cds_hooks.feedback.acknowledgements import Acknowledgements, SuppressedCard, latest_per_card
from cds_hooks.feedback.report import FeedbackFact, FeedbackReport, IssuedFact, SuppressedFact, build_report
from cds_hooks.protocol.errors import operation_outcome
from cds_hooks.security.jwt_auth import ReplayCache

__all__ = [
    "AcceptedSuggestion",
    "Coding",
    "FeedbackError",
    "FeedbackItem",
    "FeedbackRequest",
    "FeedbackResult",
    "FeedbackStore",
    "FeedbackTooLarge",
    "IssuedCard",
    "MemoryFeedbackStore",
    "OverrideReason",
    "StoredFeedback",
    "feedback_outcome",
    "parse_feedback",
    "stored_rows",
]

# JSON elements "SHALL NOT be null or empty" (2.0 "Use of JSON"), so every string must have content.
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
# Values we store are bounded to the database columns (migrations/versions/rev_0001_feedback_tables.py),
# so an oversized value is a 400 that names it, not a database error.
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=256)]
SystemUri = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
# "extension" is reserved everywhere and its value MUST be a JSON object; we accept and ignore it.
Extension = dict[str, Any] | None

# RFC 3339 §5.6 date-time. The offset is mandatory: a naive time is ambiguous, so it is rejected.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


class FeedbackError(ValueError):
    """A feedback request that is not valid CDS Hooks 2.0 feedback.

    `expression` locates the problem in the body, e.g. ``feedback[1].outcomeTimestamp``.
    """

    def __init__(self, message: str, expression: str) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression


class FeedbackTooLarge(FeedbackError):
    """More feedback items in one request than the service takes (MSCC_ALERT_FEEDBACK_MAX_ITEMS)."""


class _Element(BaseModel):
    # Unknown members are refused rather than dropped: a misspelt optional member (say "overideReason")
    # would otherwise vanish silently.
    model_config = ConfigDict(extra="forbid", frozen=True)

    extension: Extension = None


class Coding(_Element):
    system: SystemUri
    code: Identifier
    display: NonEmptyStr | None = None


class OverrideReason(_Element):
    reason: Coding | None = None
    userComment: NonEmptyStr | None = None

    @model_validator(mode="after")
    def _cds_fb_3(self) -> OverrideReason:
        if self.reason is None and self.userComment is None:
            raise PydanticCustomError("cds_fb_3", "overrideReason needs a 'reason' or a 'userComment' (cds-fb-3)")
        return self


class AcceptedSuggestion(_Element):
    id: Identifier


class FeedbackItem(_Element):
    card: Identifier
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: Annotated[list[AcceptedSuggestion], Field(min_length=1)] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: datetime

    @field_validator("outcomeTimestamp", mode="before")
    @classmethod
    def _rfc3339_with_offset(cls, value: object) -> object:
        if isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                raise PydanticCustomError("naive_timestamp", "must carry a UTC offset, e.g. 'Z'")
            return value
        if not isinstance(value, str):
            raise PydanticCustomError("rfc3339", "must be an RFC 3339 date-time string, e.g. '2021-12-11T10:05:31Z'")
        if not _RFC3339.fullmatch(value):
            # The value is not echoed: error messages may reach logs, and we never log request content.
            raise PydanticCustomError(
                "rfc3339", "must be an RFC 3339 date-time with a UTC offset, e.g. '2021-12-11T10:05:31Z'"
            )
        return value

    @field_validator("outcomeTimestamp", mode="after")
    @classmethod
    def _representable_in_utc(cls, value: datetime) -> datetime:
        # 0001-01-01T00:00:00+00:01 is valid RFC 3339 but its UTC instant is before year 1: unstorable.
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise PydanticCustomError("rfc3339", "must be a date-time whose UTC instant lies in years 1-9999") from None
        return value

    @model_validator(mode="after")
    def _cds_fb_2(self) -> FeedbackItem:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise PydanticCustomError(
                "cds_fb_2",
                "outcome 'accepted' needs a non-empty 'acceptedSuggestions' (cds-fb-2)",
                {"field": "acceptedSuggestions"},
            )
        return self


class FeedbackRequest(_Element):
    feedback: Annotated[list[FeedbackItem], Field(min_length=1)]


def _expression(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


# pydantic speaks of Python types and model classes; the client sent JSON.
_PLAIN_MESSAGES = {
    "missing": "is required",
    "model_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "list_type": "must be a JSON array",
    "string_type": "must be a JSON string",
    "string_too_short": "must not be empty",
    "too_short": "must not be empty",
    "extra_forbidden": "is not a CDS Hooks feedback member (only 'extension' may carry additions)",
}


_JSON_KINDS: dict[type, str] = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _describe(error: ErrorDetails, body: dict[str, Any]) -> tuple[str, str]:
    loc = tuple(error["loc"])
    field = (error.get("ctx") or {}).get("field")
    if isinstance(field, str):
        loc = (*loc, field)
    expression = _expression(loc) or "(body)"
    message = _PLAIN_MESSAGES.get(error["type"], error["msg"])
    if error["type"] == "literal_error" and loc[-1:] == ("outcome",):
        message += " (cds-fb-1)"
    elif error["type"] == "extra_forbidden" and len(loc) == 1:
        message = 'unknown top-level member: a feedback body is {"feedback": [...]}'
    # Name the card as well as the index: the client knows its cards by uuid, not by position.
    if len(loc) >= 2 and loc[0] == "feedback" and isinstance(loc[1], int):
        item = body["feedback"][loc[1]]
        card = item.get("card") if isinstance(item, dict) else None
        if isinstance(card, str) and card:
            card = card if len(card) <= 64 else card[:64] + "…"
            where = _expression(loc[2:]) or "item"
            return f"feedback[{loc[1]}] (card {card!r}): {where}: {message}", expression
    return f"{expression}: {message}", expression


def parse_feedback(raw: bytes, max_items: int | None = None) -> FeedbackRequest:
    """Decode and validate a feedback POST body; raise `FeedbackError` naming the first problem
    (`FeedbackTooLarge` for more than `max_items` items, checked before any item is validated)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FeedbackError(f"body is not valid JSON: {exc}", "(body)") from None
    if not isinstance(body, dict):
        kind = _JSON_KINDS.get(type(body), type(body).__name__)
        raise FeedbackError(f'body must be a JSON object {{"feedback": [...]}}, got {kind}', "(body)")
    items = body.get("feedback")
    if max_items is not None and isinstance(items, list) and len(items) > max_items:
        raise FeedbackTooLarge(f"feedback: {len(items)} items, more than the {max_items} one request may carry",
                               "feedback")
    try:
        return FeedbackRequest.model_validate(body)
    except ValidationError as exc:
        # An unknown top-level member usually means the wrong kind of body was posted: say that first.
        errors = sorted(
            exc.errors(include_url=False, include_input=False),
            key=lambda e: not (e["type"] == "extra_forbidden" and len(e["loc"]) == 1),
        )
        message, expression = _describe(errors[0], body)
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        raise FeedbackError(message, expression) from None


@dataclass(frozen=True)
class IssuedCard:
    uuid: str
    indicator: Literal["info", "warning", "critical"]
    # What suppression and the report need (cards/suppression.py); pseudonyms only, never an id.
    kind: str | None = None
    evidence_at: datetime | None = None
    rules_version: str | None = None
    patient_key: str | None = None
    user_key: str | None = None

    def context(self) -> dict[str, Any]:
        """The columns of revision 0003, as a row fragment."""
        return {"kind": self.kind, "evidence_at": self.evidence_at, "rules_version": self.rules_version,
                "patient_key": self.patient_key, "user_key": self.user_key}


@dataclass(frozen=True)
class FeedbackResult:
    """What a store did with one feedback request."""

    stored: int  # new rows (a redelivery of a stored item is not new)
    # Indices into the request's items that name a card this service never issued to this client: not stored.
    refused: tuple[int, ...] = ()


# Refused items are named one by one up to this many; the rest are counted. Keeps the answer small.
_LISTED_REFUSALS = 20


def feedback_outcome(request: FeedbackRequest, result: FeedbackResult) -> dict[str, Any]:
    """The OperationOutcome answering a feedback POST: a summary, and a warning per refused item."""
    summary = f"Feedback received: {len(request.feedback)} item(s), {result.stored} new"
    if result.refused:
        summary += f", {len(result.refused)} refused (card not issued by this service to this client)"
    issues: list[tuple[str, str, str, list[str] | None]] = [("information", "informational", summary, None)]
    for index in result.refused[:_LISTED_REFUSALS]:
        issues.append(("warning", "not-found", f"feedback[{index}].card: this service did not issue this card to "
                       "this client; the item was not stored", [f"feedback[{index}].card"]))
    if len(result.refused) > _LISTED_REFUSALS:
        issues.append(("warning", "not-found",
                       f"{len(result.refused) - _LISTED_REFUSALS} more item(s) refused for the same reason", None))
    return operation_outcome(issues)


@runtime_checkable
class FeedbackStore(Protocol):
    """Where issued cards and feedback go. Implementations must not store PHI (see module docstring)."""

    def record_issued(
        self, service_id: str, cards: Sequence[IssuedCard], issuer: str | None, tenant: str | None
    ) -> None:
        """Note cards returned by a hook call, durably, before the response goes: feedback on a card is only
        accepted if the card is on record. Called on the hook path, so it is one short write."""

    def record_feedback(
        self, service_id: str, request: FeedbackRequest, issuer: str | None, tenant: str | None
    ) -> FeedbackResult:
        """Store feedback on cards this service issued to `issuer`; items on other cards are refused.

        A repeat of (service id, card, outcome, outcomeTimestamp) is ignored. Durable when it returns.
        """

    def report(self, zone: tzinfo | None = None) -> FeedbackReport: ...

    def replay_cache(self) -> ReplayCache | None:
        """Where client JWT ids are remembered, shared by every worker using this store (None: in memory)."""

    def ping(self) -> None:
        """Raise unless the store answers now (readiness)."""

    def acknowledgements(self) -> Acknowledgements:
        """Earlier actions on a patient's cards, and the count of suppressed cards (cards/suppression.py)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class StoredFeedback:
    """One feedback row as both stores keep it: exactly the analytics columns, nothing else."""

    service_id: str
    card_uuid: str
    outcome: str
    accepted_suggestions: tuple[str, ...]
    reason_system: str | None
    reason_code: str | None
    outcome_timestamp: datetime  # UTC
    received_at: datetime  # UTC
    issuer: str | None
    tenant: str | None


def stored_rows(
    service_id: str, request: FeedbackRequest, issuer: str | None, tenant: str | None, received_at: datetime
) -> list[StoredFeedback]:
    """Reduce a validated request to the rows a store keeps (no userComment, no extensions)."""
    rows = []
    for item in request.feedback:
        reason = item.overrideReason.reason if item.overrideReason else None
        rows.append(
            StoredFeedback(
                service_id=service_id,
                card_uuid=item.card,
                outcome=item.outcome,
                accepted_suggestions=tuple(s.id for s in item.acceptedSuggestions or ()),
                reason_system=reason.system if reason else None,
                reason_code=reason.code if reason else None,
                outcome_timestamp=item.outcomeTimestamp.astimezone(UTC),
                received_at=received_at,
                issuer=issuer,
                tenant=tenant,
            )
        )
    return rows


class MemoryFeedbackStore:
    """In-process store with the same semantics as the SQL one; for tests and `mscc-alert evaluate`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._issued: dict[tuple[str, str], tuple[str, str | None]] = {}  # -> (indicator, issuer)
        self._cards: dict[tuple[str, str], tuple[IssuedCard, datetime]] = {}
        self._feedback: dict[tuple[str, str, str, datetime], StoredFeedback] = {}
        self._suppressed: list[tuple[str, SuppressedCard, datetime]] = []

    def record_issued(
        self, service_id: str, cards: Sequence[IssuedCard], issuer: str | None, tenant: str | None
    ) -> None:
        now = datetime.now(UTC)
        with self._lock:
            for card in cards:
                self._issued.setdefault((service_id, card.uuid), (card.indicator, issuer))
                self._cards.setdefault((service_id, card.uuid), (card, now))

    def record_feedback(
        self, service_id: str, request: FeedbackRequest, issuer: str | None, tenant: str | None
    ) -> FeedbackResult:
        new = 0
        refused = []
        with self._lock:
            for index, row in enumerate(stored_rows(service_id, request, issuer, tenant, datetime.now(UTC))):
                issued = self._issued.get((row.service_id, row.card_uuid))
                if issued is None or issued[1] != issuer:
                    refused.append(index)
                    continue
                key = (row.service_id, row.card_uuid, row.outcome, row.outcome_timestamp)
                if key not in self._feedback:
                    self._feedback[key] = row
                    new += 1
        return FeedbackResult(new, tuple(refused))

    @property
    def feedback_rows(self) -> list[StoredFeedback]:
        with self._lock:
            return list(self._feedback.values())

    def report(self, zone: tzinfo | None = None) -> FeedbackReport:
        with self._lock:
            issued_by_kind: dict[str, int] = {}
            for kind, _ in self._issued.values():
                issued_by_kind[kind] = issued_by_kind.get(kind, 0) + 1
            facts = [
                FeedbackFact(
                    service_id=row.service_id,
                    card_uuid=row.card_uuid,
                    kind=self._issued.get((row.service_id, row.card_uuid), ("unknown", None))[0],
                    outcome=row.outcome,
                    outcome_timestamp=row.outcome_timestamp,
                    reason_system=row.reason_system,
                    reason_code=row.reason_code,
                )
                for row in self._feedback.values()
            ]
            cards = [IssuedFact(service, uuid, card.indicator, at, card.rules_version, card.patient_key, card.user_key)
                     for (service, uuid), (card, at) in self._cards.items()]
            hidden = [SuppressedFact(card.indicator, card.rules_version, at) for _, card, at in self._suppressed]
        return build_report(issued_by_kind, facts, cards, hidden, zone)

    def replay_cache(self) -> None:
        return None  # one process: the verifier's own in-memory cache is shared by everything

    def ping(self) -> None:
        """Always ready: it is this process's memory."""

    def acknowledgements(self) -> MemoryFeedbackStore:
        return self

    def prior_actions(self, service_id: str, patient_key: str, since: datetime, limit: int) -> list[PriorAction]:
        with self._lock:
            rows = []
            for row in self._feedback.values():
                card, issued_at = self._cards.get((row.service_id, row.card_uuid), (None, None))
                if (card is None or issued_at is None or row.service_id != service_id or card.kind is None
                        or card.patient_key != patient_key or row.received_at <= since):
                    continue
                outcome: Outcome = "accepted" if row.outcome == "accepted" else "overridden"
                action = PriorAction(card.kind, card.indicator, card.evidence_at, outcome, issued_at,
                                     row.outcome_timestamp, row.received_at)
                rows.append((row.card_uuid, action))
        rows.sort(key=lambda item: item[1].received_at, reverse=True)
        return latest_per_card(rows[:limit])

    def record_suppressed(
        self, service_id: str, cards: Sequence[SuppressedCard], issuer: str | None, tenant: str | None
    ) -> None:
        now = datetime.now(UTC)
        with self._lock:
            self._suppressed.extend((service_id, card, now) for card in cards)

    def close(self) -> None:
        """Nothing to release; present to satisfy `FeedbackStore`."""
