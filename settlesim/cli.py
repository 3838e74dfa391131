"""The one command line: `settlesim SUBCOMMAND`. Each subcommand's work lives in
server/ or clients/; this module only parses arguments and reports errors as one
line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from settlesim.arguments import (
    EXIT_USAGE,
    OneLineParser,
    at_least_one,
    port_number,
    positive_seconds,
    target_address,
    zero_or_more,
    zero_or_more_seconds,
)

if TYPE_CHECKING:
    from settlesim.server.ledger import CheckReport, Figures


class CliError(Exception):
    """An expected failure, printed as one line without a traceback."""


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _ledger_db(value: str) -> str | Path:
    """A --db / $SETTLESIM_DB value: a ledger file, or a database URL (server/ledger/)."""
    from settlesim.server.ledger import ledger_location

    return ledger_location(value)


def _default_db() -> str | Path:
    """The ledger serve uses when given no --db: $SETTLESIM_DB, else the user data dir."""
    if os.environ.get("SETTLESIM_DB"):
        return _ledger_db(os.environ["SETTLESIM_DB"])
    from settlesim.server.app import default_db_path

    return default_db_path()


def _parser(prog: str, sub: argparse._SubParsersAction, help: str, examples: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        prog,
        help=help,
        description=help.replace("%%", "%"),  # `help` is %-formatted by argparse, a description is not
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# --- serve ----------------------------------------------------------------------------------


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        "serve",
        sub,
        "Run the reference settlement platform (the local development stub).",
        _examples(
            "settlesim serve                          # bundled world, default ledger, 127.0.0.1:50051",
            "settlesim serve --port 0 --db /tmp/s.db  # any free port, a throw-away ledger",
            "settlesim serve --world ./my-world --host 0.0.0.0",
            "grpcurl -plaintext 127.0.0.1:50051 list  # reflection (v1, v1alpha) is on",
            "settlesim serve --console-port 8080      # the web console and /metrics on 127.0.0.1:8080",
            "settlesim serve --tls-cert srv.pem --tls-key srv.key --client-ca ca.pem  # mutual TLS",
            "settlesim serve --auth token --audit-log audit.jsonl",
            "settlesim serve --fault-drop-after-commit 0.2 --fault-error UNAVAILABLE=0.05 --fault-seed 7",
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=50051, help="port 0-65535; 0 picks a free one (default 50051)")
    p.add_argument(
        "--national-port",
        type=port_number,
        default=None,
        help="also serve the national JSON door (docs/national.md) on this port, same engine and ledger; "
        "0 picks a free one (default: off)",
    )
    p.add_argument("--world", type=Path, help="world directory (default: the bundled world)")
    p.add_argument(
        "--db",
        type=_ledger_db,
        default=os.environ.get("SETTLESIM_DB"),
        help="ledger: a SQLite file, or a postgresql:// URL (default $SETTLESIM_DB or "
        "~/.local/share/settlesim/settlesim.db)",
    )
    # The thread-pool server's request threads; the event loop needs none. Still accepted.
    p.add_argument("--workers", type=at_least_one, default=16, help=argparse.SUPPRESS)
    p.add_argument(
        "--max-calls",
        type=at_least_one,
        default=2000,
        help="settlement calls worked on at once; more are refused SERVER_BUSY (default 2000)",
    )
    p.add_argument(
        "--body-timeout",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long a call may wait for its request message (default 10; docs/errors.md)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="server processes sharing the port and the ledger file (SO_REUSEPORT; default 1)",
    )
    sandboxes = p.add_mutually_exclusive_group()
    sandboxes.add_argument(
        "--sessions",
        dest="sessions",
        action="store_true",
        default=None,
        help="accept x-settlesim-session sandboxes even with --auth token/mtls, where they are off "
        "by default (see docs/sessions.md)",
    )
    sandboxes.add_argument(
        "--no-sessions",
        dest="sessions",
        action="store_false",
        help="refuse the x-settlesim-session sandbox header (see docs/sessions.md)",
    )
    p.add_argument(
        "--skip-integrity-check",
        action="store_true",
        help="start without SQLite's integrity check of the ledger (for a very large one; "
        "run `settlesim ledger check` instead; see docs/ledger.md)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--plain-logs", action="store_true", help="human log lines instead of JSON lines")
    p.add_argument(
        "--no-journal", action="store_true", help="keep no call journal (and so no check runs; docs/his-check.md)"
    )
    p.add_argument(
        "--journal-keep",
        type=zero_or_more,
        metavar="CALLS",
        help="the call journal keeps its newest CALLS calls (default: a million, about 3.5 GB; "
        "0 keeps every call) and, of older ones, check runs' calls only",
    )
    _add_console_args(p)
    _add_security_and_fault_args(p)
    p.set_defaults(run=run_serve)


def _add_console_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--console-port",
        type=port_number,
        help="the web console and /metrics on 127.0.0.1 (default: the gRPC port + 1, any free port with "
        "--port 0; off when the server demands identity unless given; docs/console.md)",
    )
    p.add_argument("--no-console", action="store_true", help="serve no web console and no /metrics")
    p.add_argument(
        "--console-token-file",
        type=Path,
        help="a file whose first line is the console's password (HTTP Basic, any user); "
        "required for the console when the server demands identity (default $SETTLESIM_CONSOLE_TOKEN)",
    )
    p.add_argument(
        "--console-reports", type=Path, help="a folder of replay/conformance reports (--json, --html) to list"
    )
    p.add_argument("--no-metrics", action="store_true", help="count nothing for /metrics (to measure their cost)")


def _console_config(args: argparse.Namespace) -> dict[str, object]:
    """Where the console listens, if at all, and its login (docs/console.md)."""
    token = os.environ.get("SETTLESIM_CONSOLE_TOKEN", "")
    if args.console_token_file is not None:
        _readable("--console-token-file", args.console_token_file)
        lines = args.console_token_file.read_text(encoding="utf-8").splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise CliError(f"--console-token-file {args.console_token_file}: the first line is empty")
    secured = (args.auth or ("mtls" if args.client_ca else "none")) != "none"
    port, fallback = args.console_port, False
    if args.no_console or args.processes > 1:
        port = None  # several processes: one console would show one process's counts
    elif port is None:
        if secured:
            port = None  # identity demanded: no console unless asked for, with a token
        else:
            port, fallback = (args.port + 1 if 0 < args.port < 65535 else 0), True
    if port is not None and secured and not token:
        raise CliError(
            "the console of a server that demands identity needs a password: "
            "--console-token-file FILE or $SETTLESIM_CONSOLE_TOKEN"
        )
    return {
        "console_port": port,
        "console_port_fallback": fallback,
        "console_token": token,
        "console_reports": args.console_reports,
        "metrics": not args.no_metrics,
    }


def run_serve(args: argparse.Namespace) -> int:
    from settlesim.server.app import ServerConfig, configure_logging, serve_forever
    from settlesim.server.auth import check_combination
    from settlesim.server.parent_death import stop_with_parent

    configure_logging(args.log_level, json_lines=not args.plain_logs)
    stop_with_parent()  # a benchmark's server: SIGTERM when the bench exits (server/parent_death.py)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        world_dir=args.world,
        db_path=args.db,
        max_workers=args.workers,
        allow_sessions=args.sessions,
        integrity_check=not args.skip_integrity_check,
        journal=not args.no_journal,
        **({} if args.journal_keep is None else {"journal_keep": args.journal_keep}),
        national_port=args.national_port,
        **_console_config(args),
        max_concurrent_calls=args.max_calls,
        request_body_seconds=args.body_timeout,
        **_security_and_fault_config(args),
    )
    if args.processes < 1:
        raise CliError("--processes must be at least 1")
    if args.processes > 1 and args.national_port is not None:
        raise CliError("--national-port serves one process: use it without --processes")
    try:  # the combination first ("--tls-cert and --tls-key go together"), then each file
        check_combination(config.auth, config.host, config.tls_cert, config.tls_key, config.client_ca)
    except ValueError as e:
        raise CliError(str(e)) from e
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key), ("--client-ca", args.client_ca)):
        _readable(flag, path)
    try:
        if args.processes > 1:
            from settlesim.server.processes import serve_processes

            return serve_processes(config, args.processes)
        return serve_forever(config)
    except ValueError as e:  # a refused auth/TLS combination
        raise CliError(str(e)) from e


def _add_security_and_fault_args(p: argparse.ArgumentParser) -> None:
    sec = p.add_argument_group("identity and audit (docs/security.md)")
    sec.add_argument("--tls-cert", type=Path, help="server certificate (PEM); turns TLS on")
    sec.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    sec.add_argument("--client-ca", type=Path, help="CA that signs hospital certificates: mutual TLS")
    sec.add_argument(
        "--auth",
        choices=["none", "token", "mtls"],
        help="caller identity: none (trust the request; local development), token (Bearer token "
        "from the world's institutions), mtls (client certificate CN/SAN). "
        "Default: mtls with --client-ca, else none",
    )
    sec.add_argument("--audit-log", type=Path, help="append-only JSON-lines audit log of every call")
    sec.add_argument("--audit-fsync", action="store_true", help="fsync each audit record (survives power loss)")
    sec.add_argument(
        "--audit-new-chain",
        action="store_true",
        help="the --audit-log file was rotated (moved aside): start a new chain there",
    )
    flt = p.add_argument_group("fault injection (docs/faults.md); all off by default")
    flt.add_argument("--faults", type=Path, metavar="YAML", help="fault plan file (per-RPC latency, errors, drops)")
    flt.add_argument("--fault-latency-ms", type=float, help="added latency on every settlement RPC")
    flt.add_argument(
        "--fault-error",
        action="append",
        default=[],
        metavar="CODE=RATE",
        help="refuse a share of every settlement RPC before it runs, e.g. UNAVAILABLE=0.05 (repeatable)",
    )
    flt.add_argument(
        "--fault-drop-after-commit",
        type=float,
        metavar="RATE",
        help="commit SettleVisit, then drop the answer (UNAVAILABLE) for this share of calls",
    )
    flt.add_argument("--fault-seed", type=int, help="seed for the fault draws (default: random)")


def _readable(flag: str, path: Path | None) -> None:
    """One line naming the flag and the file, not an errno from deep in start-up."""
    if path is None:
        return
    if not path.exists():
        raise CliError(f"{flag} {path}: no such file")
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        raise CliError(f"{flag} {path}: cannot read it ({e.strerror or e})") from None


def _security_and_fault_config(args: argparse.Namespace) -> dict[str, object]:
    from settlesim.server.faults import FaultPlanError, load_plan, plan_from_flags

    errors: dict[str, float] = {}
    for spec in args.fault_error:
        code, _, rate = spec.partition("=")
        try:
            errors[code.strip().upper()] = float(rate)
        except ValueError:
            raise CliError(f"--fault-error {spec!r}: expected CODE=RATE, e.g. UNAVAILABLE=0.05") from None
    try:
        flags = plan_from_flags(args.fault_latency_ms, errors, args.fault_drop_after_commit, args.fault_seed)
        plan = load_plan(args.faults).merged(flags) if args.faults else flags
    except (FaultPlanError, OSError) as e:
        raise CliError(str(e)) from e
    if args.audit_log and getattr(args, "processes", 1) > 1:
        # Each process would append its own chain of digests to the one file.
        raise CliError("--audit-log needs a single server process (drop --processes)")
    return {
        "auth": args.auth or ("mtls" if args.client_ca else "none"),
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "client_ca": args.client_ca,
        "audit_log": args.audit_log,
        "audit_fsync": args.audit_fsync,
        "audit_new_chain": args.audit_new_chain,
        "faults": plan if plan.active else None,
    }


# --- world ----------------------------------------------------------------------------------


def add_world(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        "world",
        sub,
        "Work with world data (regions, policies, catalogs, institutions, people).",
        _examples(
            "settlesim world check ./my-world",
            "settlesim world generate --persons 100000 --seed 7 /tmp/world-100k",
        ),
    )
    world_sub = p.add_subparsers(dest="world_command", required=True, metavar="{check,generate}")
    check = _parser(
        "check", world_sub, "Load a world directory and report the first problem.",
        _examples("settlesim world check ./my-world"),
    )  # fmt: skip
    check.add_argument("path", type=Path, nargs="?", help="world directory (default: the bundled world)")
    check.set_defaults(run=run_world_check)
    gen = _parser(
        "generate",
        world_sub,
        "Write a synthetic world with N people (deterministic for a seed).",
        _examples(
            "settlesim world generate --persons 1000 /tmp/world-1k",
            "settlesim world generate --persons 1000000 --seed 42 /tmp/world-1m",
        ),
    )
    gen.add_argument("--persons", type=int, required=True, help="number of insured people")
    gen.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    gen.add_argument("out_dir", type=Path, help="directory to write (created; must be empty or absent)")
    gen.set_defaults(run=run_world_generate)


def run_world_check(args: argparse.Namespace) -> int:
    from settlesim.server.world_loader import load_world

    world = load_world(args.path)
    print(
        f"world {world.name!r} is valid: {len(world.regions)} regions, {len(world.policies)} policies, "
        f"{len(world.catalogs)} catalogs, {len(world.institutions)} institutions, {len(world.people)} people; "
        f"digest {world.digest}"
    )
    return 0


def _check_persons(persons: int) -> None:
    """A number of people a world can be generated with, or a one-line refusal."""
    from settlesim.server.world_generate import MAX_PERSONS

    if not 1 <= persons <= MAX_PERSONS:
        raise CliError(f"--persons must be 1 to {MAX_PERSONS:,} (unique certificate numbers run out), not {persons}")


def run_world_generate(args: argparse.Namespace) -> int:
    from settlesim.server.world_generate import generate_world

    _check_persons(args.persons)
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        raise CliError(f"{args.out_dir} is not empty")
    report = generate_world(args.out_dir, args.persons, args.seed)
    regions = ", ".join(f"{region} {count}" for region, count in sorted(report.people_by_region.items()))
    print(
        f"wrote {report.persons} people in {report.shards} shard(s), {report.institutions} synthetic "
        f"institutions and {report.catalog_items} synthetic catalog items to {report.out_dir} "
        f"in {report.seconds:.1f}s (people by insured region: {regions})"
    )
    return 0


# --- ledger ---------------------------------------------------------------------------------


def add_ledger(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        "ledger",
        sub,
        "Inspect a ledger database.",
        _examples("settlesim ledger check --db ~/.local/share/settlesim/settlesim.db"),
    )
    ledger_sub = p.add_subparsers(dest="ledger_command", required=True, metavar="{check,copy}")
    check = _parser(
        "check",
        ledger_sub,
        "Verify a ledger without changing it (opened read-only): SQLite's quick_check, then the "
        "invariants: yearly totals equal the sum of settlements in force and are not negative, one "
        "settlement per msgid of an institution and one per acknowledged settle, fund + patient = "
        "total, every reversed or voided settlement linked to its reversal or void and every "
        "reversal or void to the settlement it undid. Exits 1 when any fails, 2 when the file is "
        "not a settlesim ledger.",
        _examples(
            "settlesim ledger check                # the ledger `settlesim serve` uses by default",
            "settlesim ledger check --db /tmp/s.db",
        ),
    )
    check.add_argument(
        "--db",
        type=_ledger_db,
        help="ledger (SQLite file or postgresql:// URL), only read (default: serve's, $SETTLESIM_DB or "
        "~/.local/share/settlesim/settlesim.db)",
    )
    check.add_argument(
        "--sessions", action="store_true", help="also list each x-settlesim-session sandbox, its owners and figures"
    )
    check.set_defaults(run=run_ledger_check)
    copy = _parser(
        "copy",
        ledger_sub,
        "Copy a ledger between stores (SQLite file or PostgreSQL database, either way) with its figures "
        "unchanged: the source is only read and must pass `ledger check`; the destination must be a new "
        "file or an empty database; every table is copied in one transaction, then both ends are checked "
        "and their rows and reconciliation sums compared (any difference, and nothing is kept). "
        "Stop the servers writing the source first. Exits 1 when the copy was not made.",
        _examples(
            "settlesim ledger copy --from ~/.local/share/settlesim/settlesim.db --to postgresql://me@db/settlesim",
            "settlesim ledger copy --from postgresql://me@db/settlesim --to /tmp/back.db",
        ),
    )
    copy.add_argument("--from", dest="source", required=True, help="the ledger to copy (file or postgresql:// URL)")
    copy.add_argument("--to", dest="destination", required=True, help="a new file, or an empty PostgreSQL database")
    copy.set_defaults(run=run_ledger_copy)


def run_ledger_check(args: argparse.Namespace) -> int:
    from settlesim.server import stored_answers
    from settlesim.server.ledger import LedgerFileError, check_ledger
    from settlesim.server.ledger.sqlite import SCHEMA_VERSION

    args.db = args.db or _default_db()
    if isinstance(args.db, Path) and not args.db.is_file():
        raise CliError(f"no ledger at {args.db}")
    try:
        report = check_ledger(args.db, answer_check=stored_answers.settlement_problems)
    except LedgerFileError as e:
        raise CliError(str(e)) from None
    problems = report.problems
    summary = ", ".join(f"{n} {status}" for status, n in sorted(report.counts.items())) or "no settlements"
    if report.schema_version < SCHEMA_VERSION:
        summary += f" (schema version {report.schema_version}: a server upgrades it when it next opens it)"
    for problem in problems:
        print(f"FAIL {problem}")
    for line in namespace_lines(report, each_session=args.sessions):
        print(line)
    verdict = f"{len(problems)} problem(s)" if problems else "OK"
    print(f"ledger {_shown(args.db)}: {verdict}; {summary}")  # the verdict last, where scripts look
    return 1 if problems else 0


def _shown(db: str | Path) -> str:
    """A ledger's name for printing: a database URL without its password."""
    from settlesim.server.ledger import is_database_url

    if is_database_url(db):
        from settlesim.server.ledger.postgres import redacted

        return redacted(str(db))
    return str(db)


def run_ledger_copy(args: argparse.Namespace) -> int:
    from settlesim.server import stored_answers
    from settlesim.server.ledger import LedgerFileError, check_ledger
    from settlesim.server.ledger.copy import CopyError, copy_ledger

    def problems(where: str) -> list[str]:
        return check_ledger(_ledger_db(where), answer_check=stored_answers.settlement_problems).problems

    try:
        report = copy_ledger(args.source, args.destination, problems)
    except (CopyError, LedgerFileError) as error:
        print(f"ledger copy: {error}", file=sys.stderr)
        return 1
    in_force = report.figures.in_force
    total = sum(row[4] for row in in_force)
    rows = ", ".join(f"{n} {table}" for table, n in report.figures.rows.items() if n) or "no rows"
    print(f"copied {report.source} -> {report.destination}: {rows}")
    print(
        f"  in force: {sum(row[3] for row in in_force)} settlements, total {total}, fund "
        f"{sum(row[5] for row in in_force)}, patient {sum(row[6] for row in in_force)} fen "
        f"({len(in_force)} institution-years), identical at both ends; ledger check OK at both ends"
    )
    return 0


def namespace_lines(report: CheckReport, *, each_session: bool = False) -> list[str]:
    """The real ledger and the sandboxes apart: a sandbox's money is never the real ledger's."""

    def figures(f: Figures) -> str:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(f.counts.items())) or "no settlements"
        money = f"total {f.total}, fund {f.fund_pays}, patient {f.patient_pays} fen"
        return f"{counts}; in force {f.in_force}: {money}"

    lines = [f"  real ledger: {figures(report.real)}"]
    sandboxes = report.sandboxes
    if not sandboxes.sessions:
        return [*lines, "  sandboxes: none"]
    plural = "s" if sandboxes.sessions != 1 else ""
    apart = f"{sandboxes.sessions} session{plural}, apart from the real ledger"
    lines.append(f"  sandboxes ({apart}): {figures(sandboxes)}")
    if each_session:
        for session in sorted(s for s in report.namespaces if s):
            owners = report.owners.get(session, "no owner").replace(",", ", ")
            lines.append(f"  session {session} ({owners}): {figures(report.namespaces[session])}")
    return lines


# --- bench ----------------------------------------------------------------------------------


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        "bench",
        sub,
        "Benchmark SettleVisit: the noop server vs the reference server on a generated world, "
        "closed loop then open loop at 80 %% of the settle peak; prints req/s, p50/p95/p99 and "
        "server CPU per request (it measures; it asserts nothing).",
        _examples(
            "settlesim bench --persons 1000                      # generates a world in a temp folder",
            "settlesim bench --world /tmp/world-1m --seconds 20  # a world made by `world generate`",
            "settlesim bench --world /tmp/world-1m --processes 2",
            "settlesim bench --persons 1000 --rounds 3           # three interleaved rounds, medians",
            "settlesim bench --replicas 2 --db postgresql://bench@db.example/bench   # 2 replicas, one database",
            "settlesim bench --replicas 2                        # 2 replicas sharing one SQLite file",
        ),
    )
    p.add_argument("--world", type=Path, help="a generated world (default: generate --persons into a temp dir)")
    p.add_argument("--persons", type=int, default=1000, help="people to generate without --world (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="seed for the world and the requests (default 1)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured time per run (default 10)")
    p.add_argument("--warmup", type=zero_or_more_seconds, default=2.0, help="unmeasured warm-up per server (default 2)")
    p.add_argument("--concurrency", type=int, default=32, help="calls in flight, closed loop (default 32)")
    p.add_argument("--connections", type=int, default=4, help="HTTP/2 connections (default 4)")
    p.add_argument("--load", type=float, default=0.8, help="open-loop rate as a share of the peak (default 0.8)")
    p.add_argument(
        "--processes", type=at_least_one, default=1,
        help="processes of the reference server and of each noop one (default 1)",
    )
    p.add_argument(
        "--replicas", type=at_least_one, default=1, help="`settlesim serve` replicas on one ledger, each on its own "
        "port, the load spread over them round_robin (default 1; docs/scaling.md)",
    )  # fmt: skip
    p.add_argument(
        "--db", help="the ledger the reference servers share: postgresql://... (a throw-away database: the run "
        "writes to it; prints its commits/s and rows/s too) or a SQLite path on this host "
        "(default: a new SQLite file per round)",
    )  # fmt: skip
    p.add_argument("--no-journal", action="store_true", help="serve without the call journal (to measure its cost)")
    p.add_argument("--no-metrics", action="store_true", help="serve without metrics (to measure their cost)")
    p.add_argument("--rounds", type=at_least_one, default=1, help="interleaved rounds, then their medians (default 1)")
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from settlesim.clients.bench import BenchConfig, run

    if args.world is not None and not (args.world / "visits.csv").exists():
        raise CliError(f"{args.world} has no visits.csv; make it with `settlesim world generate`")
    if args.seconds <= 0 or args.concurrency < 1 or args.connections < 1 or not 0 < args.load <= 1:
        raise CliError("--seconds, --concurrency, --connections must be positive and --load in (0, 1]")
    if args.world is None:
        _check_persons(args.persons)
    config = BenchConfig(
        world=args.world,
        persons=args.persons,
        seed=args.seed,
        seconds=args.seconds,
        warmup=args.warmup,
        concurrency=args.concurrency,
        channels=args.connections,
        load_fraction=args.load,
        processes=args.processes,
        server_args=(("--no-journal",) if args.no_journal else ())
        + (("--no-metrics",) if args.no_metrics else ()),
        rounds=args.rounds,
        replicas=args.replicas,
        db=args.db or None,
    )
    run(config)
    return 0


# --- replay, conformance ----------------------------------------------------------------------


def _replay_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        type=target_address,
        metavar="HOST:PORT",
        help="the server to test (any implementation of the protos), e.g. 127.0.0.1:50051; replicas of one "
        "platform as a:50051,b:50051 or dns:///name:50051, called round_robin (docs/scaling.md)",
    )
    p.add_argument("--junit", type=Path, metavar="FILE", help="also write a JUnit XML report")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write a JSON report")
    p.add_argument("--html", type=Path, metavar="FILE", help="also write a self-contained HTML report")
    p.add_argument("--jobs", type=int, default=4, help="cases run in parallel (default 4)")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="only cases with this tag (repeatable)")
    p.add_argument("--deadline", type=float, default=10.0, help="seconds per call (default 10)")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    p.add_argument(
        "--serve", action="store_true", help="start the reference server on a free port (throw-away ledger)"
    )
    p.add_argument(
        "--any-world", action="store_true", help="run cases whose world: the target does not serve (they fail)"
    )
    p.add_argument(
        "--door", choices=("grpc", "national"), default="grpc",
        help="grpc (default), or national: send each case as the national JSON envelopes an HIS posts, "
        "--target being the national door's HOST:PORT (serve --national-port); what that interface "
        "cannot carry is skipped and listed with why",
    )  # fmt: skip
    secured = p.add_argument_group(
        "a secured target (serve --auth token, TLS, mutual TLS; docs/cases.md)",
        "e.g. --tokens tokens.yaml | --ca ca.pem --tokens tokens.yaml | --ca ca.pem --cert his.pem --key his.key",
    )
    secured.add_argument(
        "--ca",
        type=Path,
        metavar="FILE",
        help="speak TLS and trust this CA (PEM) for the server's certificate",
    )
    secured.add_argument(
        "--cert", type=Path, metavar="FILE", help="client certificate (PEM) for mutual TLS, for every institution "
        "not given its own in --tokens; needs --ca and --key",
    )  # fmt: skip
    secured.add_argument("--key", type=Path, metavar="FILE", help="the private key (PEM) of --cert")
    secured.add_argument(
        "--server-name", metavar="NAME", help="the name the servers' TLS certificate carries "
        "(default: the host of the first --target; for replicas sharing one certificate)",
    )  # fmt: skip
    secured.add_argument(
        "--tokens", type=Path, metavar="FILE", help="YAML/JSON map: institution code -> bearer token, or -> "
        "{token, cert, key} (PEM paths relative to the file); cases acting for an institution the target "
        "refuses without credentials are skipped",
    )  # fmt: skip


def add_replay(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        "replay",
        sub,
        "Replay case files (docs/cases.md) against a server and check every answer, money-exact. "
        "Exit 0 when all pass, 1 when any fails, 2 when nothing could run (bad case, target down).",
        _examples(
            "settlesim replay my-cases/ --target 127.0.0.1:50051",
            "settlesim replay case.yaml --target his-test:50051 --junit out/junit.xml --html out/report.html",
            "settlesim replay cases/ --target 127.0.0.1:50051 --tag rule:ratio --jobs 8",
            "settlesim replay my-case.yaml --serve   # against a throw-away reference server",
            "settlesim replay cases/ --target 127.0.0.1:50051 --tokens tokens.yaml   # serve --auth token",
            "settlesim replay cases/ --target his-test:50443 --ca ca.pem --cert his.pem --key his.key  # mTLS",
        ),
    )
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="case files or folders of *.yaml")
    _replay_options(p)
    p.set_defaults(run=run_replay)


def add_conformance(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        "conformance",
        sub,
        "Run the bundled conformance suite (every registration reason and settlement rule, the seed "
        "stories) against a server. Exit codes as for replay.",
        _examples(
            "settlesim conformance --target 127.0.0.1:50051",
            "settlesim conformance --serve       # against a throw-away reference server",
            "settlesim conformance --target 127.0.0.1:50051 --junit junit.xml --html report.html",
            "settlesim conformance --list",
            "settlesim conformance --target 127.0.0.1:50051 --tokens tokens.yaml   # serve --auth token",
            "settlesim conformance --target localhost:50443 --ca ca.pem --tokens creds.yaml  # TLS, per-hospital",
            "settlesim conformance --target 10.0.0.1:50051,10.0.0.2:50051   # two replicas, round_robin",
        ),
    )
    _replay_options(p)
    p.set_defaults(run=run_conformance)


def _run_replay(paths: list[Path], args: argparse.Namespace, serve: bool = False, tool: str = "replay") -> int:
    from settlesim.clients.replay.command import ReplayError, ReplayOptions, replay

    if args.jobs < 1:
        raise CliError("--jobs must be at least 1")
    options = ReplayOptions(
        target=args.target,
        serve=serve,
        tool=f"settlesim {tool}",
        jobs=args.jobs,
        deadline=args.deadline,
        tags=args.tag,
        junit=args.junit,
        json=args.json,
        html=args.html,
        list_only=args.list,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        tokens=args.tokens,
        server_name=args.server_name,
        any_world=args.any_world,
        door=args.door,
    )
    try:
        return replay(paths, options)
    except ReplayError as e:
        raise CliError(str(e)) from None


def run_replay(args: argparse.Namespace) -> int:
    if args.serve and args.target:
        raise CliError("give --target or --serve, not both")
    return _run_replay(args.paths, args, serve=args.serve)


def run_conformance(args: argparse.Namespace) -> int:
    from settlesim.clients.replay.command import conformance_cases_dir

    if args.serve and args.target:
        raise CliError("give --target or --serve, not both")
    return _run_replay([conformance_cases_dir()], args, serve=args.serve, tool="conformance")


# --- audit ----------------------------------------------------------------------------------


def add_audit(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        "audit",
        sub,
        "Work with the append-only audit log written by `serve --audit-log` (docs/security.md).",
        _examples("settlesim audit verify /var/log/settlesim/audit.jsonl"),
    )
    audit_sub = p.add_subparsers(dest="audit_command", required=True, metavar="{verify}")
    verify = _parser(
        "verify",
        audit_sub,
        "Check the chain of digests and its end against the head the ledger anchored: "
        "exits 1 when a line was edited, removed or inserted, the file was truncated or "
        "its chain recomputed, or no ledger holds its anchor (unless --no-anchor).",
        _examples(
            "settlesim audit verify audit.jsonl",
            "settlesim audit verify --db ~/.local/share/settlesim/settlesim.db audit.jsonl",
            "settlesim audit verify --no-anchor copied-audit.jsonl",
        ),
    )
    verify.add_argument("path", type=Path, help="audit log (JSON lines)")
    verify.add_argument(
        "--db",
        type=_ledger_db,
        help="the ledger holding its anchor (default: the one serve uses, $SETTLESIM_DB or the user data dir)",
    )
    verify.add_argument(
        "--no-anchor",
        action="store_true",
        help="check the chain alone: records removed from the end go unnoticed (exit 0 on an intact chain)",
    )
    verify.set_defaults(run=run_audit_verify)


def run_audit_verify(args: argparse.Namespace) -> int:
    from settlesim.server.audit import verify_against

    if not args.path.is_file():
        raise CliError(f"no audit log at {args.path}")
    if args.no_anchor and args.db is not None:
        raise CliError("give --db or --no-anchor, not both")
    if isinstance(args.db, Path) and not args.db.is_file():
        raise CliError(f"no ledger at {args.db}")
    # The chain alone cannot see records removed from the end: without the anchor
    # the tail is unverified, and that is only an answer when asked for (--no-anchor).
    db = None if args.no_anchor else (args.db or _default_db())
    no_ledger = isinstance(db, Path) and not db.is_file()
    report, anchored = verify_against(args.path, None if no_ledger else db)
    for problem in report.problems:
        print(f"FAIL {problem}")
    if no_ledger:
        print(
            f"FAIL the tail is not verified: no ledger at {db} (serve's default ledger) to hold the file "
            "to its anchor, so records removed from its end would go unnoticed; give --db LEDGER, "
            "or --no-anchor to check the chain alone"
        )
    summary = f"{len(report.problems)} problem(s)" if report.problems else "chain OK"
    if args.no_anchor:
        anchored = "the tail is not verified (--no-anchor)"
    print(
        f"audit log {args.path}: {report.records} records, {summary}" + (f"; {anchored}" if anchored else "")
    )
    return 1 if report.problems or no_ledger else 0


# --- his-check, journal (docs/his-check.md) ---------------------------------------------------


def _his_check_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", metavar="HOST:PORT", help="the running stub (settlesim serve)")
    p.add_argument("--token", help="the institution's bearer token (serve --auth token)")
    p.add_argument("--ca", type=Path, metavar="FILE", help="speak TLS and trust this CA (PEM)")
    p.add_argument(
        "--cert", type=Path, metavar="FILE", help="the institution's client certificate (mutual TLS)"
    )
    p.add_argument("--key", type=Path, metavar="FILE", help="the private key of --cert")


def _his_check_reports(p: argparse.ArgumentParser) -> None:
    p.add_argument("--junit", type=Path, metavar="FILE", help="also write a JUnit XML report")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write a JSON report")
    p.add_argument("--html", type=Path, metavar="FILE", help="also write a self-contained HTML report")


def add_his_check(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        "his-check",
        sub,
        "Grade a hospital's HIS against the stub: open a check run for a scenario, let the HIS do "
        "its tasks, grade what the journal recorded (docs/his-check.md).",
        _examples(
            "settlesim his-check list",
            "settlesim his-check start lost-answer-after-commit --institution H11010500001 --target 127.0.0.1:50051",
            "settlesim his-check finish RUN_ID --target 127.0.0.1:50051 --html report.html",
            "settlesim his-check run all --serve --exec 'python -m settlesim.clients.hischeck.good_his "
            "{target} {institution} {run} {tasks}' --junit junit.xml",
        ),
    )
    hs = p.add_subparsers(dest="his_check_command", required=True, metavar="{list,start,finish,run}")
    ls = _parser("list", hs, "List the bundled scenarios.", _examples("settlesim his-check list"))
    ls.set_defaults(run=run_his_check_list)
    st = _parser(
        "start",
        hs,
        "Open a run: arm the scenario's faults, print the HIS operator's tasks, the target and the run id.",
        _examples(
            "settlesim his-check start qinghai-happy-path --institution H11010500001 --target 127.0.0.1:50051",
            "settlesim his-check start reversal --serve     # a throw-away stub, serving until the run is finished",
        ),
    )
    st.add_argument("scenario", help="a bundled scenario's name or a scenario YAML file")
    st.add_argument("--institution", help="the HIS's institution code (default: the scenario's)")
    st.add_argument(
        "--serve", action="store_true", help="start a throw-away stub and serve until the run is finished"
    )
    st.add_argument(
        "--tasks-out", type=Path, metavar="FILE", help="also write the tasks as JSON for automation"
    )
    st.add_argument("--timeout", type=int, default=3600, help="seconds the run takes calls (default 3600)")
    _his_check_connection(st)
    st.set_defaults(run=run_his_check_start)
    fi = _parser(
        "finish",
        hs,
        "Grade a run and report; exit 0 only when every check passes.",
        _examples(
            "settlesim his-check finish 20261201090115-5f32aa40 --target 127.0.0.1:50051 --junit junit.xml"
        ),
    )
    fi.add_argument("run_id", metavar="RUN")
    fi.add_argument("--scenario", help="the scenario file, when the run was started from a file not at hand")
    _his_check_connection(fi)
    _his_check_reports(fi)
    fi.set_defaults(run=run_his_check_finish)
    ru = _parser(
        "run",
        hs,
        "start -> your driver command -> finish, for CI; exit 0 only when every check of every run passes.",
        _examples(
            "settlesim his-check run qinghai-happy-path --target 127.0.0.1:50051 "
            "--exec './drive-his {target} {run} {tasks}'",
            "settlesim his-check run all --serve --exec 'python -m settlesim.clients.hischeck.good_his "
            "{target} {institution} {run} {tasks}'",
        ),
    )
    ru.add_argument(
        "scenarios",
        nargs="+",
        metavar="SCENARIO",
        help="scenario names or files; `all` for every bundled one",
    )
    ru.add_argument("--institution", help="the HIS's institution code (default: each scenario's)")
    ru.add_argument(
        "--exec",
        dest="command",
        required=True,
        metavar="COMMAND",
        help="the driver: {target} {institution} {run} {tasks} {scenario} {credentials} are filled in",
    )
    ru.add_argument("--serve", action="store_true", help="against a throw-away stub")
    ru.add_argument(
        "--timeout", type=float, default=300, help="seconds the driver may take per run (default 300)"
    )
    _his_check_connection(ru)
    _his_check_reports(ru)
    ru.set_defaults(run=run_his_check_run)


def _connection(args: argparse.Namespace, target: str | None = None):  # type: ignore[no-untyped-def]
    from settlesim.clients.hischeck.command import Connection

    target = target or args.target
    if not target:
        raise CliError("give --target HOST:PORT (or --serve)")
    if "," in target or target.startswith(("dns:", "ipv4:", "ipv6:")):
        # A check run's faults are armed in one server and its journal is that server's.
        raise CliError(
            f"--target {target}: his-check grades one server (its faults and its journal): give one "
            "replica's HOST:PORT, not a list (docs/scaling.md)"
        )
    if (args.cert is None) != (args.key is None):
        raise CliError("--cert and --key go together")
    if args.cert is not None and args.ca is None:
        raise CliError("a client certificate needs TLS: give --ca FILE")
    return Connection(target, args.token or "", args.ca, args.cert, args.key)


def _report(graded: list, args: argparse.Namespace) -> int:  # type: ignore[type-arg]
    from settlesim.clients.hischeck import reports
    from settlesim.clients.hischeck.command import exit_code

    reports.terminal(graded)
    if args.junit:
        reports.write_junit(graded, args.junit)
    if args.json:
        reports.write_json(graded, args.json)
    if args.html:
        reports.write_html(graded, args.html)
    return exit_code(graded)


def run_his_check_list(args: argparse.Namespace) -> int:
    from settlesim.clients.hischeck.scenarios import bundled

    for s in bundled():
        print(f"{s.name:<34} {s.institution}  {s.title}")
    return 0


def run_his_check_start(args: argparse.Namespace) -> int:
    import time

    from settlesim.clients.hischeck.command import HisCheckError, fetch_record, start, throwaway_stub

    if args.serve and args.target:
        raise CliError("give --target or --serve, not both")
    try:
        if not args.serve:
            return _print_started(
                start(args.scenario, args.institution, _connection(args), args.timeout), args
            )
        with throwaway_stub() as target:
            conn = _connection(args, target)
            started = start(args.scenario, args.institution, conn, args.timeout)
            _print_started(started, args)
            print(
                f"serving until `settlesim his-check finish {started.run.run_id} --target {target}` (Ctrl-C stops)",
                flush=True,
            )
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                time.sleep(1)
                run, _ = fetch_record(started.run.run_id, conn, close=False)
                if run.closed_at:
                    break
            return 0
    except HisCheckError as e:
        raise CliError(str(e)) from None


def _print_started(started, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    import json

    print(f"scenario  {started.scenario.name} — {started.scenario.title}")
    print(f"target    {started.plan['target']}")
    print(f"institution {started.plan['institution']}")
    print(f"run       {started.run.run_id}   (session {started.run.session}, until {started.run.expires_at})")
    print("the HIS must now:")
    for line in started.lines:
        print(f"  {line}")
    print(
        f"then: settlesim his-check finish {started.run.run_id} --target {started.plan['target']}", flush=True
    )
    if args.tasks_out:
        args.tasks_out.write_text(json.dumps(started.plan, ensure_ascii=False, indent=2), encoding="utf-8")
    return 0


def run_his_check_finish(args: argparse.Namespace) -> int:
    from settlesim.clients.hischeck.command import HisCheckError, finish

    try:
        graded = finish(args.run_id, _connection(args), args.scenario)
    except HisCheckError as e:
        raise CliError(str(e)) from None
    return _report([graded], args)


def run_his_check_run(args: argparse.Namespace) -> int:
    from settlesim.clients.hischeck.command import HisCheckError, run_with_driver, throwaway_stub
    from settlesim.clients.hischeck.scenarios import bundled

    if args.serve and args.target:
        raise CliError("give --target or --serve, not both")
    names = [s.name for s in bundled()] if args.scenarios == ["all"] else args.scenarios
    try:
        if args.serve:
            with throwaway_stub() as target:
                conn = _connection(args, target)
                graded = [
                    run_with_driver(n, args.institution, conn, args.command, args.timeout) for n in names
                ]
        else:
            conn = _connection(args)
            graded = [run_with_driver(n, args.institution, conn, args.command, args.timeout) for n in names]
    except HisCheckError as e:
        raise CliError(str(e)) from None
    return _report(graded, args)


def add_journal(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        "journal",
        sub,
        "Read the call journal the stub keeps beside its ledger (docs/his-check.md).",
        _examples(
            "settlesim journal show --db /tmp/s.db --institution H11010500001 --rpc SettleVisit",
            "settlesim journal export --db /tmp/s.db --run RUN_ID > run.jsonl",
            "settlesim journal export --db /tmp/s.db --run RUN_ID --as-case --out recorded.yaml",
        ),
    )
    js = p.add_subparsers(dest="journal_command", required=True, metavar="{show,export}")
    for name, help in (
        ("show", "Print journal entries as a table."),
        ("export", "Write journal entries as JSON lines, or a run as a replay case (--as-case)."),
    ):
        q = _parser(name, js, help, _examples(f"settlesim journal {name} --db /tmp/s.db --run RUN_ID"))
        q.add_argument(
            "--db",
            type=Path,
            default=os.environ.get("SETTLESIM_DB"),
            help="the ledger whose journal to read (default $SETTLESIM_DB or the default ledger)",
        )
        q.add_argument("--institution", default="", help="only this institution's calls")
        q.add_argument("--run", dest="run_id", default="", help="only this check run's calls")
        q.add_argument("--rpc", default="", help="only this RPC, e.g. SettleVisit")
        q.add_argument("--msgid", default="", help="only calls carrying this msgid")
        q.add_argument(
            "--since", default="", help="calls from this UTC time on (ISO 8601, e.g. 2026-12-01T08)"
        )
        q.add_argument("--until", default="", help="calls before this UTC time")
        q.add_argument("--limit", type=int, default=0, help="at most this many entries")
        if name == "export":
            q.add_argument("--out", type=Path, metavar="FILE", help="write here instead of standard output")
            q.add_argument("--world", default="default", help="the world the stub ran, named in the case")
            q.add_argument(
                "--as-case",
                action="store_true",
                help="write the run (--run) as a replay case (docs/cases.md)",
            )
        q.set_defaults(run=run_journal_show if name == "show" else run_journal_export)


def _journal_entries(args: argparse.Namespace) -> list:  # type: ignore[type-arg]
    import sqlite3

    from settlesim.server.app import default_db_path
    from settlesim.server.journal import damaged_journal, journal_path, open_read_only, query

    path = journal_path(args.db or default_db_path())
    try:
        db = open_read_only(path)
    except FileNotFoundError as e:
        raise CliError(str(e)) from None
    try:
        return list(
            query(
                db,
                institution=args.institution,
                run_id=args.run_id,
                rpc=args.rpc,
                msgid=args.msgid,
                since=args.since,
                until=args.until,
                limit=args.limit,
            )
        )
    except sqlite3.DatabaseError as e:  # not a database, damaged
        raise CliError(str(damaged_journal(path, e))) from None
    finally:
        db.close()


def run_journal_show(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    entries = _journal_entries(args)
    table = Table(show_lines=False, box=None)
    for column in ("#", "time (UTC)", "rpc", "institution", "run", "msgid", "outcome", "fault", "ms"):
        table.add_column(column)
    for e in entries:
        outcome = (
            e.code + (f" {e.reason}" if e.reason else "") + (" (after deadline)" if e.undelivered else "")
        )
        table.add_row(
            str(e.seq),
            e.time[:23],
            e.rpc,
            e.institution,
            e.run_id or "-",
            e.msgid or "-",
            outcome,
            e.fault or "",
            f"{e.latency_ms:.1f}",
        )
    Console(width=200).print(table)
    print(f"{len(entries)} entries")
    return 0


def _run_scenario(args: argparse.Namespace) -> str:
    """The scenario a run was opened for, from the runs table beside the journal."""
    import sqlite3

    from settlesim.server.app import default_db_path
    from settlesim.server.journal import journal_path, open_read_only

    db = open_read_only(journal_path(args.db or default_db_path()))
    try:
        row = db.execute("SELECT scenario FROM runs WHERE run_id = ?", (args.run_id,)).fetchone()
    except sqlite3.OperationalError:  # a journal written before runs existed
        row = None
    finally:
        db.close()
    return Path(row[0]).stem if row else ""


def run_journal_export(args: argparse.Namespace) -> int:
    import json

    entries = _journal_entries(args)
    if args.as_case:
        from settlesim.clients.hischeck.record_case import case_yaml

        if not args.run_id:
            raise CliError("--as-case needs --run RUN_ID (one run makes one case)")
        if not entries:
            raise CliError(f"the journal has no calls for run {args.run_id}")
        text = case_yaml([e.to_dict() for e in entries], _run_scenario(args), args.world)
    else:
        text = "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in entries)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


# --- main -----------------------------------------------------------------------------------

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_serve, add_world, add_ledger, add_replay, add_conformance, add_bench, add_audit, add_his_check,
    add_journal,
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="settlesim",
        description="Stub, conformance suite and load kit for cross-province outpatient "
        "chronic/special-disease (门诊慢特病) direct settlement.",
        epilog=_examples("settlesim serve", "settlesim SUBCOMMAND --help"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CliError as e:
        print(f"settlesim: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one clear line for the errors users meet
        from settlesim.server.audit import AuditAnchorError
        from settlesim.server.journal import JournalFileError
        from settlesim.server.ledger import LedgerFileError
        from settlesim.server.world_loader import WorldError

        if isinstance(e, WorldError | LedgerFileError | JournalFileError | AuditAnchorError | OSError):
            print(f"settlesim: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
