"""mscc-alert: a CDS Hooks 2.0 service for suspected spinal metastases and MSCC after breast cancer.

Commands: `serve`, `evaluate FILE`, `sweep SOURCE`, `feedback-report`. Settings come from MSCC_ALERT_*
environment variables (README, "Configuration"); the options below override them.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import logging
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import orjson
from pydantic import ValidationError

from cds_hooks.settings import Settings

_log = logging.getLogger("mscc_alert")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  MSCC_ALERT_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()]
        print("mscc-alert: invalid configuration:\n" + "\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None


DATABASE_HELP = ("feedback database URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
                 "(default: $MSCC_ALERT_DATABASE_URL, else an SQLite file in $XDG_DATA_HOME/mscc-alert)")


def _use_database(args: argparse.Namespace) -> None:
    """--database-url overrides MSCC_ALERT_DATABASE_URL, for this process and the workers it starts."""
    if args.database_url:
        os.environ["MSCC_ALERT_DATABASE_URL"] = args.database_url


def shown_database(settings: Settings) -> str:
    """The database URL as it may be printed: never its password."""
    from sqlalchemy.engine import make_url

    from cds_hooks.feedback.store import default_database_url

    url = settings.database_url or default_database_url()
    if url == "memory://":
        return "memory:// (in memory: nothing is kept)"
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show no more than the part after any credentials
        return url.rsplit("@", 1)[-1]


def _serve(args: argparse.Namespace) -> int:
    from cds_hooks.protocol.fhir_servers import is_loopback_host as is_loopback
    from cds_hooks.protocol.runtime import build_verifier, open_feedback_store
    from cds_hooks.server.logs import configure_logging
    from cds_hooks.server.serve import listening_socket, serve

    if args.workers < 1:
        print("mscc-alert: --workers must be at least 1", file=sys.stderr)
        return 2
    _use_database(args)
    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    verifier = build_verifier(settings)
    if verifier is None and settings.auth == "on" and not is_loopback(args.host):
        print(
            "mscc-alert: refusing to start: no trusted JWT issuers are configured and the service would "
            f"listen on {args.host}, beyond this machine.\n  Configure MSCC_ALERT_TRUSTED_ISSUERS="
            "'{\"<iss>\": \"<jwks url>\"}', or set MSCC_ALERT_AUTH=off explicitly to run without "
            "authentication.",
            file=sys.stderr,
        )
        return 2
    # Bind before anything else is said, so that a busy port is one line and nothing else.
    try:
        sock = listening_socket(args.host, args.port)
    except OSError as exc:
        why = "the port is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        print(f"mscc-alert: cannot listen on {args.host}:{args.port}: {why} (choose another --port)",
              file=sys.stderr)
        return 2
    if verifier is None:
        _log.warning(
            "AUTHENTICATION IS OFF: any caller can invoke this service. Fine on loopback for development; "
            "configure MSCC_ALERT_TRUSTED_ISSUERS before exposing it.", extra={"auth": "off"},
        )
    elif not settings.public_base_url and not is_loopback(args.host):
        _log.warning("MSCC_ALERT_PUBLIC_BASE_URL is not set: client JWTs must then name this server's socket "
                     "address as their aud; set it to the URL the EHR calls")
    if verifier is not None and settings.fhir_servers:
        _log.warning("MSCC_ALERT_FHIR_SERVERS is ignored when trusted issuers are configured: list each issuer's "
                     "FHIR servers under its fhir_servers in MSCC_ALERT_TRUSTED_ISSUERS")
    # Migrate the feedback database once, here, before any worker starts: workers starting together on a
    # fresh database would otherwise race to create it. A bad database URL also fails now, clearly.
    try:
        open_feedback_store(settings).close()
    except Exception as exc:
        sock.close()
        print(f"mscc-alert: cannot open the feedback database {shown_database(settings)}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if settings.pseudonym_secret is None:
        _log.warning("SUPPRESSION IS OFF: MSCC_ALERT_PSEUDONYM_SECRET is not set, so a card a clinician has already "
                     "acted on is shown again on every chart opening; set it (32+ characters) to show each card once "
                     "unless it gets worse", extra={"suppression": "off"})
    else:
        _log.info("suppression on: a card acted on is not shown again for %g days after an override, %g after an "
                  "accepted critical and %g after an accepted warning card, unless it escalates or new evidence "
                  "appears", settings.suppress_override_days, settings.suppress_accepted_critical_days,
                  settings.suppress_accepted_warning_days, extra={"suppression": "on"})
    host = f"[{args.host}]" if ":" in args.host else args.host
    port = sock.getsockname()[1]
    _log.info("starting", extra={"host": args.host, "port": port, "workers": args.workers,
                                 "auth": "off" if verifier is None else "jwt"})
    # Where to point a browser or an EHR, and which database the feedback goes to (never its password).
    _log.info(f"mscc-alert {_version()} serving http://{host}:{port}/cds-services (Ctrl-C stops)",
              extra={"docs": f"http://{host}:{port}/docs", "database": shown_database(settings)})
    from cds_hooks.server.metrics import MULTIPROC_ENV

    metrics_dir = None
    if args.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Each worker counts in its own process: a private folder where all of them write, so that /metrics
        # (answered by whichever worker a scrape reaches) sums every worker. Removed when the workers stop.
        metrics_dir = tempfile.mkdtemp(prefix="mscc-alert-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
        _log.info("metrics of all workers are summed", extra={"metrics_dir": metrics_dir})
    try:
        serve(args.host, port, args.workers, settings, sock)
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _parse_now(value: str) -> datetime | None:
    """An ISO 8601 date or date-time; without a zone it is taken as UTC, a date alone as its midnight UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _evaluate(args: argparse.Namespace) -> int:
    from cards.evaluate import Evaluation, evaluate_documents
    from cds_hooks.protocol.errors import ServiceError
    from cds_hooks.services.registry import registry_from_settings
    from fhir_mapping.terminology import load_terminology

    settings = _settings()
    try:
        raw = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"mscc-alert: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    now = _parse_now(args.now) if args.now else datetime.now(UTC)
    if now is None:
        print(f"mscc-alert: --now {args.now!r} is not an ISO 8601 date or date-time "
              "(e.g. 2026-11-01 or 2026-11-01T09:30:00+00:00)", file=sys.stderr)
        return 2
    terminology = load_terminology()
    try:
        head = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        print(f"mscc-alert: {args.file} is not JSON: {exc}", file=sys.stderr)
        return 2
    evaluation: Evaluation
    cards: list[dict[str, Any]]
    if isinstance(head, dict) and "hook" in head:
        # Run by an operator, as in open mode: MSCC_ALERT_FHIR_SERVERS, else loopback FHIR servers only.
        services = registry_from_settings(settings, terminology, open_mode=True)
        service = services.for_hook(str(head["hook"]))
        if service is None:
            hooks = ", ".join(sorted({s.hook for s in services.values()}))
            print(f"mscc-alert: no service here answers the {head['hook']!r} hook (hooks served: {hooks})",
                  file=sys.stderr)
            return 2
        try:
            outcome = service.evaluate(service.decode(raw), now)
        except ServiceError as exc:
            print(f"mscc-alert: HTTP {exc.status} would be returned: {exc.message}", file=sys.stderr)
            return 1
        evaluation, cards = outcome.evaluation, outcome.cards
    elif isinstance(head, dict) and "resourceType" in head:
        evaluation = evaluate_documents([raw], patient_id=None, user_id=None, now=now,
                                        policy=settings.policy(), terminology=terminology)
        cards = evaluation.cards
    else:
        print(f"mscc-alert: {args.file} is neither a CDS Hooks request nor a FHIR resource/Bundle",
              file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(orjson.dumps({"cards": cards}, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(_readable(evaluation, cards))
    return 0


def _readable(evaluation: Any, cards: list[dict[str, Any]]) -> str:
    if not cards:
        why = evaluation.decision.why_not or "no rule fired"
        return f"No card ({why}). Resources read: {evaluation.resources_seen}, used: {evaluation.resources_used}."
    blocks = []
    for card in cards:
        lines = [f"[{card['indicator'].upper()}] {card['summary']}", "", card.get("detail", "")]
        for suggestion in card.get("suggestions", []):
            lines += ["", f"Suggestion: {suggestion['label']}"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _sweep(args: argparse.Namespace) -> int:
    from cds_hooks.server.logs import configure_logging
    from cds_hooks.sweep.run import SweepError, SweepOptions, run_sweep
    from cds_hooks.sweep.workers import WorkerFailed

    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    try:
        now = datetime.fromisoformat(args.now) if args.now else datetime.now(UTC)
    except ValueError:
        print(f"mscc-alert: --now {args.now!r} is not an ISO 8601 date-time", file=sys.stderr)
        return 2
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if args.workers < 1:
        print("mscc-alert: --workers must be at least 1", file=sys.stderr)
        return 2
    source = Path(args.source)
    if args.since and not args.source.startswith(("http://", "https://")):
        print("mscc-alert: --since needs a Bulk Data kick-off URL as SOURCE (a folder is swept whole)",
              file=sys.stderr)
        return 2
    if args.since:
        return _sweep_since(args, settings, now)
    if args.source.startswith(("http://", "https://")):
        # A Bulk Data kick-off URL: download the export next to the worklist, then sweep the files.
        from cds_hooks.bulk import BulkExportError, download_export

        try:
            source = download_export(args.source, Path(args.out) / "export", settings=settings, since=args.since)
        except BulkExportError as exc:  # its message is safe to show: no URL, token or resource
            print(f"mscc-alert: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130  # what happened on the server has been said on stderr already
    options = SweepOptions(source=source, out=Path(args.out), now=now, engine=args.engine, workers=args.workers,
                           spark_master=args.spark_master)
    try:
        summary = run_sweep(options, settings)
    except SweepError as exc:
        print(f"mscc-alert: {exc}", file=sys.stderr)
        return 2
    except WorkerFailed as exc:  # an internal failure: its type and place, never its text (it may quote data)
        print(f"mscc-alert: the sweep failed: {exc}", file=sys.stderr)
        return 1
    tiers = summary["patientsByIndicator"]
    print(f"{summary['patients']:,} patients, {summary['resources']:,} resources in {summary['seconds']:.1f} s: "
          f"{tiers.get('critical', 0)} critical, {tiers.get('warning', 0)} warning, {tiers.get('info', 0)} info; "
          f"{summary['linesSkipped']:,} lines skipped. Worklist in {args.out}")
    return 0


def _sweep_since(args: argparse.Namespace, settings: Settings, now: datetime) -> int:
    """The delta sweep: the `_since` export names the changed patients; each is evaluated on the whole record
    fetched from the FHIR server (cds_hooks/sweep/delta.py)."""
    from cds_hooks.bulk import BulkExportError
    from cds_hooks.sweep.delta import EXIT_NOT_FETCHED, NOT_FETCHED_FILE, DeltaOptions, TooManyChanged, run_delta_sweep

    if args.engine != "local" or args.workers != 1 or args.spark_master:
        print("mscc-alert: with --since the delta is screened in this process and its changed patients fetched "
              "from the FHIR server (MSCC_ALERT_SWEEP_SINCE_PARALLEL at once): --engine, --workers and "
              "--spark-master do not apply", file=sys.stderr)
        return 2
    options = DeltaOptions(kickoff_url=args.source, since=args.since, out=Path(args.out), now=now)
    try:
        summary = run_delta_sweep(options, settings)
    except (BulkExportError, TooManyChanged) as exc:  # messages safe to show: no URL, token or patient id
        print(f"mscc-alert: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    tiers = summary["patientsByIndicator"]
    print(f"{summary['candidates']:,} patients with a relevant change since {args.since} "
          f"({summary['resources']:,} resources in the delta), {summary['patientsFetched']:,} evaluated on their "
          f"whole record in {summary['seconds']:.1f} s: {tiers.get('critical', 0)} critical, "
          f"{tiers.get('warning', 0)} warning, {tiers.get('info', 0)} info. Worklist in {args.out}")
    if summary["patientsNotFetched"]:
        print(f"mscc-alert: {summary['patientsNotFetched']:,} changed patients could not be fetched and are NOT on "
              f"the worklist: see {Path(args.out) / NOT_FETCHED_FILE}", file=sys.stderr)
        return EXIT_NOT_FETCHED
    return 0


def _feedback_report(args: argparse.Namespace) -> int:
    from cds_hooks.feedback.report import render_report
    from cds_hooks.feedback.report_html import render_html
    from cds_hooks.protocol.runtime import open_feedback_store

    _use_database(args)
    settings = _settings()
    try:
        store = open_feedback_store(settings)
    except Exception as exc:
        print(f"mscc-alert: cannot open the feedback database {shown_database(settings)}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    try:
        report = store.report(settings.policy().display_zone)
    finally:
        store.close()
    print(f"Feedback database: {shown_database(settings)}\n")
    print(render_report(report))
    if args.html:
        try:
            Path(args.html).write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            print(f"mscc-alert: cannot write {args.html}: {exc.strerror}", file=sys.stderr)
            return 2
        print(f"HTML report written to {args.html}")
    return 0


def _version() -> str:
    # Imported here: importlib.metadata and the lookup cost ~40 ms, paid by every command if done up front.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mscc-alert")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class _VersionAction(argparse.Action):
    """--version, looking the version up only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> NoReturn:
        print(f"{parser.prog} {_version()}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mscc-alert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the CDS Hooks service", description="Run the CDS Hooks service.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; beyond loopback needs MSCC_ALERT_TRUSTED_ISSUERS or "
                            "MSCC_ALERT_AUTH=off (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default: %(default)s)")
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes, each on its own core (default: %(default)s)")
    serve.add_argument("--database-url", metavar="URL", help=DATABASE_HELP)
    serve.set_defaults(run=_serve)
    evaluate = commands.add_parser(
        "evaluate", help="evaluate a hook request or a FHIR Bundle offline",
        description="Evaluate a CDS Hooks patient-view request, or a FHIR resource or Bundle (e.g. a Synthea "
                    "export), offline, and print the card.")
    evaluate.add_argument("file", help="a JSON file: a patient-view request, or a FHIR resource or Bundle")
    evaluate.add_argument("--json", action="store_true",
                          help="print the CDS Hooks response as JSON instead of readable text (default: off)")
    evaluate.add_argument("--now", metavar="WHEN",
                          help="evaluate as of this ISO 8601 date or date-time, e.g. 2026-11-01 (midnight UTC) "
                               "or 2026-11-01T09:30:00+01:00; no zone means UTC (default: the current time)")
    evaluate.set_defaults(run=_evaluate)
    sweep = commands.add_parser("sweep", help="worklist of patients who need action, from a FHIR Bulk Data export")
    sweep.add_argument("source", help="a folder of Bulk NDJSON files (.ndjson, .ndjson.gz), or a $export kick-off URL")
    sweep.add_argument("--out", required=True,
                       help="folder for worklist.ndjson/.csv/.html and summary.json (required; no default)")
    sweep.add_argument("--engine", choices=("local", "spark"), default="local",
                       help="local processes, or PySpark (default: %(default)s)")
    sweep.add_argument("--workers", type=int, default=1, help="local engine: processes (default 1)")
    sweep.add_argument("--spark-master", help="spark engine: master URL (default local[*]), or sc://host for "
                       "Spark Connect")
    sweep.add_argument("--since", help="with a kick-off URL: export only what changed since this instant "
                       "(_since), then evaluate each patient with a relevant change on the whole record fetched "
                       "from the FHIR server (default: a full sweep)")
    sweep.add_argument("--now", help="evaluate as of this ISO 8601 instant (default: now)")
    sweep.set_defaults(run=_sweep)
    report = commands.add_parser(
        "feedback-report", help="acceptance and override rates from stored feedback",
        description="Print acceptance and override rates by card kind and override reason from the feedback "
                    "database the service writes.")
    report.add_argument("--database-url", metavar="URL", help=DATABASE_HELP)
    report.add_argument("--html", metavar="FILE",
                        help="also write a self-contained HTML report with charts (default: none)")
    report.set_defaults(run=_feedback_report)
    return parser


def run() -> NoReturn:
    """The console command (`mscc-alert`, `python -m cds_hooks`): main(), the exit handlers (log and stream
    flushes, child processes, temporary folders), then exit without the interpreter freeing each object it
    holds one by one: after a sweep that took 0.3-0.4 s, a tenth of the whole run on a 1 GB export."""
    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result: int = args.run(args)
        sys.stdout.flush()
    except KeyboardInterrupt:  # Ctrl-C: the server has already shut down cleanly
        return 130
    except BrokenPipeError:  # `mscc-alert evaluate ... | head`: the reader left; nothing more to say
        # Point stdout at /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return result
