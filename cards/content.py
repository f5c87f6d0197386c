"""Guideline sources and fixed wording the cards use. Every statement names where it comes from."""

from __future__ import annotations

from typing import Final

NICE_NG234: Final = "https://www.nice.org.uk/guidance/ng234"
NICE_NG234_RECS: Final = "https://www.nice.org.uk/guidance/ng234/chapter/Recommendations"
NICE_QS56: Final = "https://www.nice.org.uk/guidance/qs56"
NICE_CG75: Final = "https://www.nice.org.uk/guidance/cg75"
ACR_LOW_BACK_PAIN: Final = "https://acsearch.acr.org/docs/69483/Narrative/"
ACP_LOW_BACK_PAIN: Final = "https://www.acpjournals.org/doi/10.7326/0003-4819-147-7-200710020-00006"

SOURCE_URL: Final = NICE_NG234

GUIDELINES: Final = (
    ("NICE NG234 (2023): spinal metastases and metastatic spinal cord compression", NICE_NG234),
    ("NICE QS56: metastatic spinal cord compression in adults (statements 2 and 3)", NICE_QS56),
    ("ACR Appropriateness Criteria: low back pain, variant 7 (suspected cancer)", ACR_LOW_BACK_PAIN),
    ("ACP/APS 2007: new low back pain with a history of cancer warrants prompt MRI", ACP_LOW_BACK_PAIN),
)

# The order we suggest (clinical.md §1.4): MRI of the WHOLE spine, coded in LOINC (VERIFIED VSAC).
MRI_WHOLE_SPINE_CODING: Final = {
    "system": "http://loinc.org",
    "code": "42698-1",
    "display": "MR Cervical and thoracic and lumbar spine",
}
MRI_WHOLE_SPINE_TEXT: Final = "MRI of the whole spine (cervical, thoracic and lumbar)"

# CDS Hooks indicator -> FHIR RequestPriority (HL7 ConceptMap "indicator-to-request-priority", clinical.md §1.4).
PRIORITY: Final = {"warning": "urgent", "critical": "stat", "info": "routine"}

OVERRIDE_REASON_SYSTEM: Final = "urn:mscc-alert:override-reason"
OVERRIDE_REASONS: Final = (
    ("imaging-done-elsewhere", "Spinal MRI already done or booked elsewhere"),
    ("benign-cause-known", "Pain explained by a known benign cause"),
    ("patient-declines", "Patient declines investigation"),
    ("goals-of-care", "Not in line with the patient's goals of care"),
)

CRITICAL_ACTIONS: Final = (
    "Contact the acute oncology service / MSCC coordinator **now**: treat as an oncological emergency "
    "(NICE CG75; NG234).",
    "MRI of the **whole spine** as soon as possible and **always within 24 hours** (NICE NG234 rec 1.5.2).",
    "Offer **dexamethasone 16 mg** orally (or the equivalent IV dose) as soon as possible unless "
    "contraindicated (NICE NG234 rec 1.8.1); stop it if MSCC is later excluded.",
    "Keep the spine neutral (lie flat, log-roll) if mechanical instability or severe movement-related pain is "
    "suspected, until assessed; give adequate analgesia.",
)
WARNING_ACTIONS: Final = (
    "MRI of the **whole spine** as soon as possible and **within 1 week** (NICE QS56 statement 2; NG234), "
    "not just the painful segment: metastases are commonest in the thoracic spine.",
    "Do not use plain X-ray to diagnose or rule out spinal metastases (NICE NG234).",
    "Safety-net: tell the patient to seek help **immediately** if leg weakness, numbness, difficulty walking, "
    "or bladder or bowel problems develop: that is suspected MSCC, an emergency.",
)
SUGGESTIVE_ACTION: Final = (
    "The pain has features suggestive of spinal metastases: seek advice from the acute oncology service / "
    "MSCC coordinator **within 24 hours** (NICE CG75)."
)
END_OF_LIFE_NOTE: Final = (
    "The patient is receiving hospice or palliative care: discuss goals of care with the patient; "
    "radiotherapy and steroids may still relieve pain and preserve function. A decision not to investigate "
    "must be made with the patient (BMJ Best Practice, citing Al-Qurainy & Collis, BMJ 2016)."
)
