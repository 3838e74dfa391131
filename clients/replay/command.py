"""What `settlesim replay` and `settlesim conformance` do, apart from parsing
arguments: load and filter cases, optionally start a throw-away reference
server, run, report. Exit 0 only when every case passed, 1 when any did not."""

from __future__ import annotations

import importlib.resources
import ipaddress
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from settlesim.clients.channels import SCHEMES, split_host_port
from settlesim.clients.replay import reports
from settlesim.clients.replay.cases import Case, CaseError, load_cases
from settlesim.clients.replay.national_door import DOORS, NATIONAL
from settlesim.clients.replay.runner import NO_CREDENTIALS, run_cases
from settlesim.clients.replay.target import Credentials, TargetError, TargetWorld
from settlesim.clients.secure import CredentialsError, Identity, load_identities, read_pem


class ReplayError(Exception):
    """Nothing could be run (bad case file, target down, bad option): one line."""


@dataclass
class ReplayOptions:
    target: str | None = None
    serve: bool = False
    jobs: int = 4
    deadline: float = 10.0
    connect_timeout: float = 5.0
    tags: Sequence[str] = ()
    junit: Path | None = None
    json: Path | None = None
    html: Path | None = None
    list_only: bool = False
    tool: str = "settlesim replay"  # the command, as the reports name it (title, JUnit suite name)
    # A secured target (docs/cases.md): trust `ca` (TLS); present `cert`/`key`
    # (mutual TLS); `tokens`: a file of institution code -> token or {token, cert, key}.
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    tokens: Path | None = None
    server_name: str | None = None  # the name on the replicas' TLS certificate (default: the first host)
    # Run cases whose `world:` the target does not serve (they are refused otherwise).
    any_world: bool = False
    # grpc, or national: the same cases through the national JSON door (national_door.py).
    door: str = "grpc"


def credentials_of(options: ReplayOptions) -> Credentials | None:
    """The Credentials the options ask for (None: plaintext, no identity); one-line
    ReplayError for files that cannot be used or options that do not go together."""
    if options.ca is None and options.cert is None and options.key is None and options.tokens is None:
        return None
    if (options.cert is None) != (options.key is None):
        raise ReplayError("--cert and --key go together (the client certificate and its private key)")
    try:
        identities = load_identities(options.tokens) if options.tokens is not None else {}
        if options.ca is None and (options.cert is not None or any(i.cert for i in identities.values())):
            raise ReplayError(
                "a client certificate needs TLS: give --ca FILE, the CA that signed the server's certificate"
            )
        default = Identity()
        if options.cert is not None and options.key is not None:
            default = Identity(
                cert=read_pem(options.cert, "certificate"), key=read_pem(options.key, "private key")
            )
        ca = read_pem(options.ca, "certificate") if options.ca is not None else None
    except CredentialsError as e:
        raise ReplayError(str(e)) from None
    tokens = any(i.token for i in identities.values())
    if tokens and ca is None and options.target and not _loopback(options.target):
        raise ReplayError(
            f"--tokens would send bearer tokens in clear text to {options.target}: give --ca FILE (TLS); "
            "plaintext is for a loopback target only"
        )
    return Credentials(ca, default, identities, str(options.tokens or ""))


def _loopback(target: str) -> bool:
    """Every server `target` names is on this machine (a list: all of them)."""
    if target.startswith(SCHEMES):
        scheme, _, rest = target.partition(":")
        parts = [rest.removeprefix("//").split("/", 1)[-1]] if scheme == "dns" else rest.split(",")
    else:
        parts = target.split(",")
    return all(_loopback_host(split_host_port(part)[0] if ":" in part else part) for part in parts)


def _loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def conformance_cases_dir() -> Path:
    """The bundled conformance suite (package data)."""
    return Path(str(importlib.resources.files("settlesim.clients") / "conformance" / "cases"))


def select(cases: list[Case], tags: Sequence[str]) -> list[Case]:
    """Cases carrying any of the tags (a tag matches itself and its `tag:` children)."""
    if not tags:
        return cases
    return [c for c in cases if any(t == w or t.startswith(w + ":") for t in c.tags for w in tags)]


@contextmanager
def _reference_server(door: str = "grpc") -> Iterator[str]:
    """The bundled reference server on a free port with a ledger that is thrown away
    (with its national door, and that door's address, for --door national)."""
    from settlesim.server.app import ServerConfig, start

    national = 0 if door == NATIONAL else None
    with tempfile.TemporaryDirectory(prefix="settlesim-replay-") as tmp:
        running = start(ServerConfig(port=0, db_path=Path(tmp) / "ledger.db", max_workers=8, national_port=national))
        try:
            yield running.national.url if running.national is not None else running.target
        finally:
            running.stop(grace=1)


def replay(paths: Sequence[Path], options: ReplayOptions, console: Console | None = None) -> int:
    console = console or Console(highlight=False, soft_wrap=True)
    try:
        cases = select(load_cases(paths), options.tags)
    except CaseError as e:
        raise ReplayError(str(e)) from None
    if not cases:
        raise ReplayError(f"no case carries the tag(s) {', '.join(options.tags)}")
    if options.list_only:
        for case in cases:
            console.print(f"{case.name}  [dim]{', '.join(case.tags)}[/dim]")
        console.print(f"{len(cases)} cases")
        return 0
    credentials = credentials_of(options)
    if options.door not in DOORS:
        raise ReplayError(f"--door must be one of {', '.join(DOORS)} (got {options.door!r})")
    if options.serve:
        if credentials is not None:
            raise ReplayError(
                "--serve starts a plaintext reference server without authentication; "
                "--ca/--cert/--key/--tokens are for --target"
            )
        with _reference_server(options.door) as target:
            console.print(f"[dim]started the reference server on {target} (throw-away ledger)[/dim]")
            return _run(cases, target, options, console)
    if not options.target:
        raise ReplayError("give --target HOST:PORT (or --serve for the bundled reference server)")
    return _run(cases, options.target, options, console, credentials)


def _run(
    cases: list[Case],
    target: str,
    options: ReplayOptions,
    console: Console,
    credentials: Credentials | None = None,
) -> int:
    worlds = sorted({c.world for c in cases})

    terminal = reports.TerminalReport(console, len(cases))

    def skip(skipped: list[tuple[Case, str]]) -> None:  # cases acting for institutions without credentials
        terminal.total -= len(skipped)
        for case, why in skipped:  # a case for the other door, or with no national form: each with why
            if not why.startswith(NO_CREDENTIALS):
                console.print(f"[yellow]skipping {case.name}: {why}[/yellow]")
        skipped = [(case, why) for case, why in skipped if why.startswith(NO_CREDENTIALS)]
        if not skipped:
            return
        codes = sorted({code for _, why in skipped for code in why.removeprefix(NO_CREDENTIALS).split(", ")})
        console.print(
            f"[yellow]skipping {len(skipped)} case{'s' if len(skipped) != 1 else ''}: the target does not let "
            f"this replay act for {', '.join(codes)} (give credentials in --tokens FILE):[/yellow] "
            + ", ".join(case.name for case, _ in skipped)
        )

    def world(served: TargetWorld | None, mismatch: str | None) -> None:
        if served is None and options.door == NATIONAL:
            console.print(f"[dim]through the national door at {target} (it does not say which world it "
                          f"serves: the cases assume world {', '.join(worlds)})[/dim]")  # fmt: skip
        elif served is None:
            console.print(
                f"[yellow]{target} does not say which world it serves (no settlesim.v1.PlatformService): "
                f"the cases assume world {', '.join(worlds)}[/yellow]"
            )
        elif mismatch is not None:
            console.print(f"[yellow]--any-world: {mismatch}; expect failures[/yellow]")
        else:
            console.print(f"[dim]{target} serves {served}[/dim]")

    def header() -> None:  # only once the target has answered
        console.print(f"replaying {terminal.total} cases against {target} (world {', '.join(worlds)})")
        terminal.start()

    try:
        run = run_cases(
            cases,
            target,
            jobs=options.jobs,
            deadline=options.deadline,
            connect_timeout=options.connect_timeout,
            on_case=terminal.case_done,
            on_start=header,
            credentials=credentials,
            on_skip=skip,
            any_world=options.any_world,
            on_world=world,
            door=options.door,
            server_name=options.server_name,
        )
    except TargetError as e:
        raise ReplayError(str(e)) from None
    finally:
        terminal.stop()
    terminal.summary(run)
    for path, write in ((options.junit, reports.write_junit), (options.json, reports.write_json),
                        (options.html, reports.write_html)):  # fmt: skip
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write(run, path, options.tool)
            except OSError as e:
                raise ReplayError(f"cannot write {path}: {e}") from None
            console.print(f"[dim]wrote {path}[/dim]")
    sys.stdout.flush()
    return 0 if run.passed else 1
