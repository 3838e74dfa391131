"""What `settlesim replay` and `settlesim conformance` do, apart from parsing
arguments: load and filter cases, optionally start a throw-away reference
server, run, report. Exit 0 only when every case passed, 1 when any did not."""

from __future__ import annotations

import importlib.resources
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from settlesim.clients.replay import reports
from settlesim.clients.replay.cases import Case, CaseError, load_cases
from settlesim.clients.replay.runner import run_cases
from settlesim.clients.replay.target import TargetError


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


def conformance_cases_dir() -> Path:
    """The bundled conformance suite (package data)."""
    return Path(str(importlib.resources.files("settlesim.clients") / "conformance" / "cases"))


def select(cases: list[Case], tags: Sequence[str]) -> list[Case]:
    """Cases carrying any of the tags (a tag matches itself and its `tag:` children)."""
    if not tags:
        return cases
    return [c for c in cases if any(t == w or t.startswith(w + ":") for t in c.tags for w in tags)]


@contextmanager
def _reference_server() -> Iterator[str]:
    """The bundled reference server on a free port with a ledger that is thrown away."""
    from settlesim.server.app import ServerConfig, start

    with tempfile.TemporaryDirectory(prefix="settlesim-replay-") as tmp:
        running = start(ServerConfig(port=0, db_path=Path(tmp) / "ledger.db", max_workers=8))
        try:
            yield running.target
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
    if options.serve:
        with _reference_server() as target:
            console.print(f"[dim]started the reference server on {target} (throw-away ledger)[/dim]")
            return _run(cases, target, options, console)
    if not options.target:
        raise ReplayError("give --target HOST:PORT (or --serve for the bundled reference server)")
    return _run(cases, options.target, options, console)


def _run(cases: list[Case], target: str, options: ReplayOptions, console: Console) -> int:
    worlds = sorted({c.world for c in cases})

    terminal = reports.TerminalReport(console, len(cases))

    def header() -> None:  # only once the target has answered
        console.print(f"replaying {len(cases)} cases against {target} (world {', '.join(worlds)})")
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
                write(run, path)
            except OSError as e:
                raise ReplayError(f"cannot write {path}: {e}") from None
            console.print(f"[dim]wrote {path}[/dim]")
    sys.stdout.flush()
    return 0 if run.passed else 1
