"""Reports of a replay run: the terminal (progress, then expected vs actual for every
differing field, money in yuan and fen), JUnit XML for CI, JSON for scripts, and one
self-contained HTML file for people."""

from __future__ import annotations

import json
import re
import socket
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text
from settlesim.clients.replay.cases import Case
from settlesim.clients.replay.compare import Diff
from settlesim.clients.replay.national_door import NATIONAL
from settlesim.clients.replay.runner import CaseResult, RunResult, StepResult

STYLE = {"passed": "green", "failed": "red", "error": "magenta", "skipped": "dim"}
LABEL = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP"}


def headline(run: RunResult) -> str:
    n = len(run.cases)
    skipped = f", {len(run.skipped)} skipped" if run.skipped else ""
    door = ""
    if run.door == NATIONAL:
        door = f" (national door; {len(not_compared(run))} checks not expressible there, listed)"
    return (
        f"{n} case{'s' if n != 1 else ''}: {run.count('passed')} passed, {run.count('failed')} failed, "
        f"{run.count('error')} errors{skipped} in {run.seconds:.2f}s against {run.target}{door}"
    )


def not_compared(run: RunResult) -> list[dict[str, str]]:
    """Through the national door: each check not made (a step not sent, an expected field
    or the refusal's fields not compared), with why."""
    return [
        {"case": c.case.name, "step": s.step.id, "path": u.path, "reason": u.reason}
        for c in run.cases
        for s in c.steps
        for u in s.unexpressed
    ]


# --- terminal ----------------------------------------------------------------------------------


class TerminalReport:
    """One line per finished case while the run goes on (with a live progress bar
    on a terminal; plain lines in CI logs), then the details of everything that
    did not pass."""

    def __init__(self, console: Console, total: int) -> None:
        self.console, self.total, self.done = console, total, 0
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    def start(self) -> None:
        if self.console.is_terminal and self.progress is None:
            self.progress = Progress(
                TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=self.console, transient=True,
            )  # fmt: skip
            self.task = self.progress.add_task("cases", total=self.total)
            self.progress.start()

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def case_done(self, result: CaseResult) -> None:
        self.done += 1
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)
        status = result.status
        line = Text(f"[{self.done:>{len(str(self.total))}}/{self.total}] ")
        line.append(f"{LABEL[status]:<5}", style=STYLE[status])
        line.append(f" {result.case.name}")
        steps = len(result.steps)
        line.append(f"  {steps} step{'s' if steps != 1 else ''}, {result.seconds * 1000:.0f} ms", style="dim")
        self.console.print(line)

    def summary(self, run: RunResult) -> None:
        for case in run.cases:
            if case.status != "passed":
                self._case_details(case)
        unexpressed: dict[str, list[str]] = defaultdict(list)
        for row in not_compared(run):
            unexpressed[row["reason"]].append(f"{row['case']}/{row['step']}: {row['path']}")
        if unexpressed:
            self.console.rule(Text("not compared through the national door", style="yellow"), align="left")
        for reason, where in sorted(unexpressed.items()):
            self.console.print(Text(f"  {len(where)} × {reason}", style="yellow"))
            self.console.print(Text("      " + ", ".join(where), style="dim"))
        style = "bold green" if run.passed else "bold red"
        self.console.print(Text(headline(run), style=style))

    def _case_details(self, case: CaseResult) -> None:
        c = case.case
        self.console.rule(Text(f"{LABEL[case.status]} {c.name}", style=STYLE[case.status]), align="left")
        self.console.print(f"{c.title}\n[dim]{c.source} · world {c.world} · session {case.session}[/dim]")
        for step in case.steps:
            if step.status in {"passed"}:
                continue
            head = Text(f"  step {step.step.id} ({step.step.call}): ")
            head.append(LABEL[step.status], style=STYLE[step.status])
            if step.message:
                head.append(f" — {step.message}")
            self.console.print(head)
            if step.diffs:
                self.console.print(diff_lines(step.diffs))


def diff_lines(diffs: list[Diff]) -> Text:
    """Field, then expected and actual on their own lines: never truncated, whatever
    the width of the CI log."""
    text = Text()
    for d in diffs:
        text.append(f"    {d.path}\n", style="bold")
        text.append("        expected ", style="dim")
        text.append(d.show(d.expected) + "\n", style="green")
        text.append("        actual   ", style="dim")
        text.append(d.show(d.actual) + "\n", style="red")
    text.rstrip()
    return text


# --- JSON --------------------------------------------------------------------------------------


def _diff_dict(d: Diff) -> dict[str, Any]:
    return {
        "path": d.path,
        "expected": d.expected,
        "actual": d.actual,
        "expected_shown": d.show(d.expected),
        "actual_shown": d.show(d.actual),
    }


def _step_dict(s: StepResult) -> dict[str, Any]:
    return {
        "id": s.step.id,
        "call": s.step.call,
        "institution": s.step.institution,
        "status": s.status,
        "message": s.message,
        "why": s.step.why,
        "seconds": round(s.seconds, 4),
        "diffs": [_diff_dict(d) for d in s.diffs],
        "expected": s.expected,
        "request": s.request,
        "answer": s.answer,
        "unexpressed": [{"path": u.path, "reason": u.reason} for u in s.unexpressed],
    }


def rules_table(run: RunResult) -> dict[str, list[dict[str, str]]]:
    """tag (rule) -> the cases that cover it and their results."""
    rules: dict[str, list[dict[str, str]]] = defaultdict(list)
    for case in run.cases:
        for tag in case.case.tags or ("(untagged)",):
            rules[tag].append({"case": case.case.name, "status": case.status})
    return dict(sorted(rules.items()))


def as_dict(run: RunResult, tool: str = "settlesim replay") -> dict[str, Any]:
    """The whole run as plain data; `tool` names the command (replay, conformance) in reports."""
    return {
        "tool": tool,
        "target": run.target,
        "door": run.door,
        # What the target said it serves (PlatformService); null when it did not say.
        "target_world": (
            {"name": run.world.name, "digest": run.world.digest, "version": run.world.version} if run.world else None
        ),
        "run_id": run.run_id,
        "started": run.started,
        "seconds": round(run.seconds, 3),
        "passed": run.passed,
        "summary": {
            "cases": len(run.cases),
            "passed": run.count("passed"),
            "failed": run.count("failed"),
            "errors": run.count("error"),
            "skipped": len(run.skipped),
            "unexpressed": len(not_compared(run)),
        },
        "headline": headline(run),
        "rules": rules_table(run),
        "cases": [
            {
                "name": c.case.name,
                "title": c.case.title,
                "source": c.case.source,
                "world": c.case.world,
                "tags": list(c.case.tags),
                "why": c.case.why,
                "status": c.status,
                "session": c.session,
                "seconds": round(c.seconds, 4),
                "steps": [_step_dict(s) for s in c.steps],
            }
            for c in run.cases
        ],
        # Not run: the target would not let this replay act for their institution.
        "skipped": [
            {"name": case.name, "title": case.title, "source": case.source, "tags": list(case.tags), "why": why}
            for case, why in run.skipped
        ],
        # Through the national door: the checks not made there, with why.
        "unexpressed": not_compared(run),
    }


def write_json(run: RunResult, path: Path, tool: str = "settlesim replay") -> None:
    path.write_text(json.dumps(as_dict(run, tool), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# --- JUnit XML ---------------------------------------------------------------------------------


def _failure_text(case: CaseResult) -> str:
    lines = []
    for s in case.steps:
        if s.status in {"failed", "error"}:
            lines.append(
                f"step {s.step.id} ({s.step.call}): {s.status}{' — ' + s.message if s.message else ''}"
            )
            lines += [
                f"  {d.path}: expected {d.show(d.expected)}, actual {d.show(d.actual)}" for d in s.diffs
            ]
    return "\n".join(lines)


# Characters XML 1.0 cannot carry at all (not even escaped): C0 controls other than tab, newline
# and carriage return, lone surrogates, U+FFFE and U+FFFF. An answer or message that holds one is
# shown as \xNN / \uNNNN instead, so the report stays well-formed.
_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_MULTI_DOCUMENT = re.compile(r"^(?P<file>.*)#(?P<n>\d+)$")


def _xml(text: str) -> str:
    return _NOT_XML.sub(lambda m: repr(m.group())[1:-1], text)


def _file_of(source: str) -> str:
    """`cases/x.yaml#2` (the 2nd document of a file) -> `cases/x.yaml`."""
    match = _MULTI_DOCUMENT.match(source)
    return match.group("file") if match else source


def junit_tree(run: RunResult, tool: str = "settlesim replay") -> ET.ElementTree:
    """JUnit XML valid against the junit-10.xsd schema that Jenkins, Maven Surefire and
    pytest (xunit2) share, which GitLab and GitHub test reporters also read: one testsuite
    per case file (`file` = its path), one testcase per case. The schema has no
    testcase@file nor testsuites@skipped, so a case's own source (`file.yaml#2` for the 2nd
    document of a file), world, session and tags go to its system-out."""
    groups: dict[tuple[str, str], list[CaseResult]] = defaultdict(list)
    for case in run.cases:
        groups[case.case.group or "cases", _file_of(case.case.source)].append(case)
    skipped: dict[tuple[str, str], list[tuple[Case, str]]] = defaultdict(list)
    for case, why in run.skipped:
        key = (case.group or "cases", _file_of(case.source))
        skipped[key].append((case, why))
        groups.setdefault(key, [])
    root = ET.Element(
        "testsuites",
        name=tool,
        tests=str(len(run.cases) + len(run.skipped)),
        failures=str(run.count("failed")),
        errors=str(run.count("error")),
        time=f"{run.seconds:.3f}",
    )
    for (group, file), cases in groups.items():
        suite = ET.SubElement(
            root,
            "testsuite",
            name=_xml(group),
            tests=str(len(cases) + len(skipped[group, file])),
            failures=str(sum(c.status == "failed" for c in cases)),
            errors=str(sum(c.status == "error" for c in cases)),
            skipped=str(len(skipped[group, file])),
            time=f"{sum(c.seconds for c in cases):.3f}",
            timestamp=run.started,
            hostname=socket.gethostname(),
            file=_xml(file),
        )
        props = ET.SubElement(suite, "properties")
        for name, value in (("target", run.target), ("run_id", run.run_id), ("door", run.door)):
            ET.SubElement(props, "property", name=name, value=_xml(value))
        for case in cases:
            element = ET.SubElement(
                suite, "testcase", classname=_xml(group), name=case.case.name, time=f"{case.seconds:.3f}"
            )
            if case.status in {"failed", "error"}:
                bad = [s for s in case.steps if s.status == case.status]
                ndiffs = sum(len(s.diffs) for s in bad)
                message = (
                    f"{ndiffs} field(s) differ, first in step {bad[0].step.id}"
                    if case.status == "failed"
                    else bad[0].message
                )
                tag = "failure" if case.status == "failed" else "error"
                kind = "AnswerMismatch" if case.status == "failed" else "TargetError"
                ET.SubElement(element, tag, message=_xml(message), type=kind).text = _xml(_failure_text(case))
            ET.SubElement(element, "system-out").text = _xml(
                f"{case.case.title}\nsource {case.case.source}\nworld {case.case.world}\n"
                f"session {case.session}\ntags: {', '.join(case.case.tags)}\n"
                + "\n".join(f"step {s.step.id} ({s.step.call}): {s.status}" for s in case.steps)
                + "".join(
                    f"\nnot compared through the national door: step {s.step.id} {u.path}: {u.reason}"
                    for s in case.steps
                    for u in s.unexpressed
                )
            )
        for case, why in skipped[group, file]:
            element = ET.SubElement(suite, "testcase", classname=_xml(group), name=case.name, time="0.000")
            ET.SubElement(element, "skipped", message=_xml(why))
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(run: RunResult, path: Path, tool: str = "settlesim replay") -> None:
    junit_tree(run, tool).write(path, encoding="utf-8", xml_declaration=True)


# --- HTML --------------------------------------------------------------------------------------


def write_html(run: RunResult, path: Path, tool: str = "settlesim replay") -> None:
    from settlesim.clients.replay.html import render

    path.write_text(render(as_dict(run, tool)), encoding="utf-8")
