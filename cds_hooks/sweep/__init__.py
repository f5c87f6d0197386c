"""`mscc-alert sweep`: the hook's rules over a whole population, read from a FHIR Bulk Data export.

The export (HL7 Bulk Data Access IG, https://hl7.org/fhir/uv/bulkdata/export.html) is NDJSON: one resource per
line, one resource type per file, a type split over several files, no order promised. Every line is screened
with the hook's own relevance peek (`fhir_mapping.intake.Screen`); the few relevant lines are grouped by patient,
and each patient who could get a card is run through the very pipeline the hook runs
(`cards.evaluate.evaluate_documents`). Nothing here decides anything clinical: it reads, groups and writes.

Engines: `local` (this package only, `--workers` processes) and `spark` (PySpark, optional extra `spark`).
With `--since` (delta.py) the export is a delta: it names the patients with a relevant change, and each is
evaluated on the whole record fetched from the FHIR server, as the hook fetches it.
"""
