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

# The card's links: at most three, and never repeated in the detail. NG234
# holds the recognition lists and the 24-hour / 1-week imaging and dexamethasone recommendations; QS56 the
# timing measures (statements 2 and 3); ACR variant 7 is the US imaging reference for suspected cancer.
LINKS: Final = (
    ("NICE NG234: spinal metastases and MSCC", NICE_NG234_RECS),
    ("NICE QS56: MSCC quality standard", NICE_QS56),
    ("ACR: low back pain, suspected cancer (variant 7)", ACR_LOW_BACK_PAIN),
)

# The order we suggest (docs/clinical-rules.md §1.4): MRI of the WHOLE spine, coded in LOINC (42698-1, VSAC).
MRI_WHOLE_SPINE_CODING: Final = {
    "system": "http://loinc.org",
    "code": "42698-1",
    "display": "MR Cervical and thoracic and lumbar spine",
}
MRI_WHOLE_SPINE_TEXT: Final = "MRI of the whole spine (cervical, thoracic and lumbar)"

# CDS Hooks indicator -> FHIR RequestPriority (HL7 ConceptMap "indicator-to-request-priority";
# docs/clinical-rules.md §1.4).
PRIORITY: Final = {"warning": "urgent", "critical": "stat", "info": "routine"}

# Override reasons offered on every clinical card, as (system, code, display). Where one fits we use the
# CDS Hooks 3.0 ballot's suggested codes: CodeSystem http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes
# (CDS Hooks 3.0.0-ballot, https://build.fhir.org/ig/HL7/cds-hooks/CodeSystem-non-adherence-reason-codes.html,
# from the AHRQ CDSiC override-reason taxonomy), displays worded for this card. It has no code for "the pain has
# another, benign explanation", so that one stays ours.
HL7_OVERRIDE_REASON_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"
OVERRIDE_REASON_SYSTEM: Final = "urn:mscc-alert:override-reason"
OVERRIDE_REASONS: Final = (
    (HL7_OVERRIDE_REASON_SYSTEM, "indication-order-exists", "Spinal MRI already ordered or booked"),
    (HL7_OVERRIDE_REASON_SYSTEM, "action-completed", "Spinal MRI already done"),
    (OVERRIDE_REASON_SYSTEM, "benign-cause-known", "Pain explained by a known benign cause"),
    (HL7_OVERRIDE_REASON_SYSTEM, "patient-ineligible", "Not applicable: no invasive breast cancer or no new pain"),
    (HL7_OVERRIDE_REASON_SYSTEM, "need-more-info", "Awaiting results or specialist advice"),
    (HL7_OVERRIDE_REASON_SYSTEM, "patient-refuses", "Patient declines investigation"),
    (HL7_OVERRIDE_REASON_SYSTEM, "does-not-align-preferences", "Not in line with the patient's goals of care"),
)
# Codes earlier versions offered (all in OVERRIDE_REASON_SYSTEM). Feedback carrying them is still accepted and
# reported; the report names what each meant and which standard code replaced it.
RETIRED_OVERRIDE_REASONS: Final = {
    "imaging-done-elsewhere": ("Spinal MRI already done or booked elsewhere", "indication-order-exists"),
    "patient-declines": ("Patient declines investigation", "patient-refuses"),
    "goals-of-care": ("Not in line with the patient's goals of care", "does-not-align-preferences"),
}

# Card wording. Each line's source is named here, not on the card: the card links to the guidelines instead.
# NICE CG75 (contact the MSCC coordinator immediately, an oncological emergency); NG234 rec 1.5.2 (MRI whole
# spine as soon as possible and always within 24 hours); rec 1.8.1 (16 mg dexamethasone as soon as possible)
# and 1.8.2 (stop it if MSCC is excluded); CG75/NG234 (neutral spine alignment until assessed if instability
# or severe mechanical pain is suspected). The second line is replaced when an MRI is already ordered.
CRITICAL_ACTIONS: Final = (
    "Contact the acute oncology / MSCC team **now**: an oncological emergency.",
    "MRI of the **whole spine** as soon as possible and **within 24 hours**.",
    "**Dexamethasone 16 mg** orally (or IV equivalent) now unless contraindicated; stop it if MSCC is excluded.",
    "Keep the spine neutral (lie flat, log-roll) if instability is suspected; give analgesia.",
)
MRI_ORDERED_ACTION: Final = "MRI whole spine is ordered ({when}): make sure it is done **within 24 hours**."
# NICE QS56 statement 2 and NG234 (MRI whole spine within 1 week; metastases are commonest in the thoracic spine,
# REMEDY BNSSG imaging pathway);
# CG75/NG234 (safety-net on MSCC symptoms); NG234 (no plain X-ray to diagnose or rule out spinal metastases).
# The X-ray line is the first left out when a card is too long (render.py).
WARNING_ACTIONS: Final = (
    "MRI of the **whole spine** (not just the painful level) **within 1 week**.",
    "Safety-net: leg weakness, numbness, difficulty walking, bladder or bowel problems: seek help **at once**.",
)
XRAY_ACTION: Final = "Plain X-ray cannot rule out spinal metastases."
# CG75: pain suggestive of spinal metastases -> contact the MSCC coordinator urgently (within 24 hours).
SUGGESTIVE_ACTION: Final = "Suggestive features{features}: acute oncology advice **within 24 hours**."
# A weak history (a tier-B drug alone, carcinoma in situ) asks for the history to be checked: NG234 acts on a
# past or current diagnosis of cancer, and these drugs have non-cancer uses (USPSTF risk reduction; letrozole
# for ovulation induction).
WEAK_HISTORY_ACTION: Final = (
    "Confirm any invasive breast cancer: if so, new spinal pain needs MRI of the whole spine within 1 week, "
    "sooner with neurological signs."
)
PARTIAL_IMAGING_ACTION: Final = "{what} covers only part of the spine: image the rest of the spine."
CONTEXT_IMAGING_ACTION: Final = "{what}: does not replace MRI."
# NICE CKS Hypercalcaemia: a separate emergency in cancer; corrected calcium decides the urgency.
HYPERCALCAEMIA_ACTION: Final = "Hypercalcaemia{when}: a separate emergency; check corrected calcium today."
# BMJ Best Practice (citing Al-Qurainy & Collis, BMJ 2016): investigation may not be warranted near the end of
# life, and a decision not to investigate is made with the patient.
END_OF_LIFE_ACTION: Final = (
    "Palliative care: agree goals of care with the patient; treatment may still palliate."
)
# Drugs and treatment effects that can cause back pain are differentials, never a reason to skip the work-up
# (the pain an aromatase inhibitor causes does not explain away new spinal pain in breast cancer).
DIFFERENTIAL_LINE: Final = "**Differential:** {items}: not a reason to skip the MRI."

# Order-time advice (order-select / order-sign; docs/clinical-rules.md §1.6). NICE NG234: MRI of the whole spine
# (within 1 week for suspected spinal metastases, within 24 hours for suspected MSCC), CT of the whole spine if MRI
# is contraindicated, and no plain X-ray to diagnose or rule out spinal metastases or MSCC; ACR Appropriateness
# Criteria, low back pain (variant 7, suspected cancer): MRI usually appropriate, radiography only "may be
# appropriate". Bone scan and PET do not replace the MRI (docs/clinical-rules.md §1.5).
ORDER_TIMING: Final = {"critical": "within 24 hours (stat)", "warning": "within 1 week (urgent)"}
ORDER_WINDOW: Final = {"critical": "within 24 h", "warning": "within 1 week"}
# The priorities that meet each tier's time frame (FHIR R4 RequestPriority, from least to most urgent: routine,
# urgent, asap, stat). An order with no priority is left alone: the EHR has not set one yet, and the CDS Hooks
# sandbox drops the priority of a draft it has just updated, so asking again would loop.
ORDER_PRIORITY_ENOUGH: Final = {"critical": ("asap", "stat"), "warning": ("urgent", "asap", "stat")}
# The appropriateness rating an imaging order carries for clients that follow the Argonaut Project's CDS Hooks for
# PAMA guidance (codes appropriate | not-appropriate | no-criteria-apply), as the CDS Hooks sandbox's imaging view
# does: it applies an `update` suggestion only when the updated ServiceRequest carries this extension. The
# whole-spine MRI we suggest is the appropriate order (NICE NG234; ACR low back pain variant 7).
PAMA_RATING_EXTENSION: Final = {
    "url": "http://fhir.org/argonaut/Extension/pama-rating",
    "valueCodeableConcept": {"coding": [{"system": "http://fhir.org/argonaut/CodeSystem/pama-rating",
                                         "code": "appropriate"}]},
}
ORDER_LEAD: Final = {"critical": "Suspected MSCC", "warning": "Suspected spinal metastases"}
ORDER_MRI: Final = {"critical": "order MRI of the whole spine within 24 h",
                    "warning": "order MRI of the whole spine within 1 week"}
ORDER_WHY: Final = {
    "xray": "NICE NG234: do not use plain X-ray of the spine to diagnose or rule out spinal metastases or MSCC; "
            "MRI of the **whole spine** {timing}.",
    "partial": "{what} images only part of the spine: NICE NG234 asks for MRI of the **whole spine** {timing}.",
    "context": "{what} does not replace MRI of the **whole spine**, which NICE NG234 asks for {timing}.",
    "duplicate": "MRI of the whole spine is already {state}, so {what} adds nothing: NICE NG234 asks for the MRI "
                 "{timing}.",
    "priority": "{what} is drafted as {priority}: NICE NG234 asks for the whole-spine MRI {timing}.",
}
