"""Clinical policy: the configurable design choices of docs/clinical-rules.md §1.2 and §1.5.

The numbers are design choices, not guideline rules (docs/clinical-rules.md says so); each names where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import tzinfo
from typing import Literal


@dataclass(frozen=True, slots=True)
class Policy:
    # "New" pain: onset within this many days. 6 weeks matches the common definition of acute low back
    # pain (docs/clinical-rules.md §1.2 item 2); allowed range 28-90.
    new_pain_window_days: int = 42
    # No back-pain evidence in this many days before onset (HEDIS LBP look-back, docs/clinical-rules.md §1.2 item 3;
    # the 180-day figure itself is a design choice, §4).
    pain_washout_days: int = 180
    # NRS >= 7 "severe": a common convention, not a guideline threshold (docs/clinical-rules.md §1.3 list S).
    severe_pain_score: float = 7.0
    # verificationStatus `unconfirmed` counts only when configured (docs/clinical-rules.md §1.1 H1).
    count_unconfirmed: bool = False
    # Carcinoma in situ alone: no card by default; `info` if configured (docs/clinical-rules.md §1.1, §3 item 2).
    in_situ_mode: Literal["ignore", "info"] = "ignore"
    # NG234 covers any cancer; the breast-specific service keeps this off (docs/clinical-rules.md §1.1 H2 note).
    any_cancer: bool = False
    # NG234 covers adults only (docs/clinical-rules.md §1.0, §1.5 item 5).
    minimum_age_years: int = 18
    # Hospice/palliative care: keep the card with goals-of-care wording, or downgrade to info (§1.5 item 4).
    end_of_life_mode: Literal["keep", "downgrade"] = "keep"
    # Not clinical: the zone a card's reader counts days in ("today", "12 Nov"). None: each dateTime in the offset
    # the record wrote (fhir_mapping/dates.py says why a site should set it).
    display_zone: tzinfo | None = None
