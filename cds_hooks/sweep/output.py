"""The worklist files in DIR: worklist.ndjson (machine-readable, the cards as the hook returns them),
worklist.csv and worklist.html (for people), summary.json (counts only: no patient ids). Names, ids and MRNs
are written to the worklist files only, never to logs."""

from __future__ import annotations

import csv
import html
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

_TIER_ORDER = {"critical": 0, "warning": 1, "info": 2}
CSV_COLUMNS = ("patientId", "mrn", "name", "tier", "reason", "historyDate", "painOnset", "neurologicalDate", "action")


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Critical first, then warning, then info; within a tier the most recent pain first, then by id."""
    def key(row: dict[str, Any]) -> tuple[int, float, str]:
        pain = row.get("painLatest")
        recency = -datetime.fromisoformat(pain).timestamp() if pain else float("inf")
        return _TIER_ORDER.get(row["indicator"], 9), recency, row["patientId"]

    return sorted(rows, key=key)


def write_outputs(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = sort_rows(rows)
    with open(out / "worklist.ndjson", "wb") as stream:
        for row in rows:
            stream.write(orjson.dumps(row) + b"\n")
    table = [_flat(row) for row in rows]
    with open(out / "worklist.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    (out / "worklist.html").write_text(_html(table, summary), encoding="utf-8")
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def _flat(row: dict[str, Any]) -> dict[str, str]:
    dates = row.get("keyDates", {})
    return {
        "patientId": row["patientId"],
        "mrn": row.get("mrn", ""),
        "name": row.get("name", ""),
        "tier": row["indicator"],
        "reason": row["summary"],
        "historyDate": dates.get("history", ""),
        "painOnset": dates.get("painOnset", ""),
        "neurologicalDate": dates.get("neurological", ""),
        "action": row.get("action", ""),
    }


def summarise(rows: list[dict[str, Any]], time_zone: str | None, **counts: Any) -> dict[str, Any]:
    """`time_zone`: the site's (MSCC_ALERT_TIME_ZONE), which the rows' dates count days in; named only when set."""
    return {
        **counts,
        **({"timeZone": time_zone} if time_zone else {}),
        "patientsByIndicator": dict(Counter(row["indicator"] for row in rows)),
        "patientsByKind": dict(Counter(row["kind"] for row in rows)),
    }


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d1d1f; }
h1 { font-size: 20px; margin: 0 0 4px; }
p.meta { color: #555; margin: 0 0 16px; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f6; position: sticky; top: 0; }
td.tier { font-weight: 600; text-transform: uppercase; white-space: nowrap; }
tr.critical td.tier { color: #fff; background: #b00020; }
tr.warning td.tier { color: #1d1d1f; background: #ffb300; }
tr.info td.tier { color: #fff; background: #1565c0; }
td.date, td.id { white-space: nowrap; }
"""


def _html(table: list[dict[str, str]], summary: dict[str, Any]) -> str:
    """A plain, self-contained page (inline style, no scripts, nothing fetched), every value escaped."""
    by_tier = summary.get("patientsByIndicator", {})
    zone = summary.get("timeZone")
    as_of = "now"
    if "now" in summary:
        moment = datetime.fromisoformat(summary["now"])
        as_of = (moment.astimezone(ZoneInfo(zone)) if zone else moment).strftime("%Y-%m-%d %H:%M %Z")
    meta = (f"As of {as_of}: {summary.get('patients', 0):,} patients, "
            f"{summary.get('resources', 0):,} resources read; "
            f"{by_tier.get('critical', 0)} critical, {by_tier.get('warning', 0)} warning, "
            f"{by_tier.get('info', 0)} info.")
    if zone:
        meta += f" Dates are days in {zone}."
    if "since" in summary:  # a delta sweep (cds_hooks/sweep/delta.py): say what the list covers, and what it lacks
        meta += (f" Only patients with a relevant change since {summary['since']}: {summary['candidates']:,} "
                 f"changed, {summary['patientsFetched']:,} evaluated on their whole record.")
        if missing := summary.get("patientsNotFetched"):
            meta += (f" {missing:,} changed patient{'s' if missing > 1 else ''} could not be read from the FHIR "
                     f"server and {'are' if missing > 1 else 'is'} NOT on this list: see not-fetched.csv.")
    head = ("<tr><th>Tier</th><th>Patient</th><th>MRN</th><th>Name</th><th>Reason</th><th>Breast cancer</th>"
            "<th>Pain onset</th><th>Neurological</th><th>Suggested action</th></tr>")
    body = []
    for row in table:
        e = {k: html.escape(v) for k, v in row.items()}
        body.append(
            f'<tr class="{e["tier"]}"><td class="tier">{e["tier"]}</td>'
            f'<td class="id">{e["patientId"]}</td><td class="id">{e["mrn"]}</td>'
            f'<td>{e["name"]}</td><td>{e["reason"]}</td><td class="date">{e["historyDate"]}</td>'
            f'<td class="date">{e["painOnset"]}</td><td class="date">{e["neurologicalDate"]}</td>'
            f'<td>{e["action"]}</td></tr>'
        )
    if not body:
        body.append('<tr><td colspan="9">No patient needs action.</td></tr>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>MSCC alert worklist</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>Breast cancer + new spinal pain: patients to act on</h1>"
        f'<p class="meta">{html.escape(meta)}</p>'
        f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></body></html>\n"
    )
