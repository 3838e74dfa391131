"""Reports of graded check runs: the terminal, JUnit XML for CI, JSON for scripts,
and one self-contained HTML file (clients/hischeck/html.py)."""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from settlesim.clients.hischeck.checks import CheckResult
from settlesim.clients.hischeck.command import Graded

LABEL = {"passed": "PASS", "failed": "FAIL", "not_applicable": "n/a"}


def headline(graded: Sequence[Graded]) -> str:
    checks = [r for g in graded for r in g.results]
    failed = sum(r.status == "failed" for r in checks)
    runs_failed = sum(not g.passed for g in graded)
    return (
        f"{len(graded)} run{'s' if len(graded) != 1 else ''}: {len(graded) - runs_failed} passed, "
        f"{runs_failed} failed; {len(checks)} checks, {failed} failed"
    )


def entry_line(e: dict[str, Any]) -> str:
    """One journal entry in a line: #seq time rpc msgid -> outcome (figures)."""
    outcome = e["code"] + (f" {e['reason']}" if e["reason"] else "")
    if e.get("fault"):
        outcome += f" [fault {e['fault']}]"
    if e.get("undelivered"):
        outcome += " [answered after the caller's deadline]"
    settlement = (e.get("answer") or {}).get("settlement") or {}
    totals = settlement.get("totals") or {}
    money = ""
    if totals:
        t = {k: totals.get(k, 0) for k in ("total_fen", "fund_pays_fen", "patient_pays_fen")}
        money = f" total {t['total_fen']} fund {t['fund_pays_fen']} patient {t['patient_pays_fen']}"
    if e["rpc"] == "Reconcile" and e.get("answer"):
        money = f" matched={e['answer'].get('matched', False)}" + (
            " with entries" if e["request"].get("include_entries") else ""
        )
    if e["rpc"] == "VoidByMessageId":
        money = f" original {e['request'].get('original_msgid', '')}" + money
    actor = " (setup)" if e.get("actor") == "setup" else ""
    return f"#{e['seq']:<4} {e['time'][11:23]} {e['rpc']:<18} {e['msgid'] or '-':<30} {outcome}{money}{actor}"


def terminal(graded: Sequence[Graded], out: Any = print) -> None:
    for g in graded:
        out(
            f"{'PASSED' if g.passed else 'FAILED'}  {g.scenario.name} — {g.scenario.title}  "
            f"(run {g.run.get('run_id')}, {g.run.get('institution_code')}, {len(g.record.entries)} calls)"
        )
        if g.driver_exit not in (None, 0):
            out(f"  the driver exited {g.driver_exit}:")
            for line in g.driver_output.strip().splitlines()[-10:]:
                out(f"    {line}")
        for r in g.results:
            if r.status == "failed":
                out(f"  FAIL {r.id} [{r.severity}] {r.message}")
        failed_entries = {s for r in g.results if r.status == "failed" for s in r.entries}
        if failed_entries:
            out("  journal entries named:")
            for e in g.record.entries:
                if e["seq"] in failed_entries:
                    out(f"    {entry_line(e)}")
    out(headline(graded))


def as_dict(graded: Sequence[Graded]) -> dict[str, Any]:
    return {
        "passed": bool(graded) and all(g.passed for g in graded),
        "headline": headline(graded),
        "runs": [
            {
                "scenario": g.scenario.name,
                "title": g.scenario.title,
                "why": g.scenario.why,
                "run": g.run,
                "target": g.target,
                "passed": g.passed,
                "seconds": round(g.seconds, 3),
                "instructions": g.lines,
                "driver_exit": g.driver_exit,
                "driver_output": g.driver_output,
                "checks": [_result(r) for r in g.results],
                "journal": g.record.entries,
                "journal_lines": [entry_line(e) for e in g.record.entries],
                "settlements": g.record.settlements,
            }
            for g in graded
        ],
    }


def _result(r: CheckResult) -> dict[str, Any]:
    return {
        "id": r.id,
        "title": r.title,
        "severity": r.severity,
        "status": r.status,
        "message": r.message,
        "entries": list(r.entries),
    }


def write_json(graded: Sequence[Graded], path: Path) -> None:
    path.write_text(json.dumps(as_dict(graded), ensure_ascii=False, indent=2), encoding="utf-8")


def write_junit(graded: Sequence[Graded], path: Path) -> None:
    """junit-10.xsd (Jenkins, Surefire, pytest): one testsuite per run, one testcase per check."""
    checks = [r for g in graded for r in g.results]
    root = ET.Element(
        "testsuites",
        name="settlesim his-check",
        tests=str(len(checks)),
        failures=str(sum(r.status == "failed" for r in checks)),
        errors="0",
        time=f"{sum(g.seconds for g in graded):.3f}",
    )
    for g in graded:
        suite = ET.SubElement(
            root,
            "testsuite",
            name=g.scenario.name,
            tests=str(len(g.results)),
            failures=str(sum(r.status == "failed" for r in g.results)),
            errors="0",
            skipped=str(sum(r.status == "not_applicable" for r in g.results)),
            time=f"{g.seconds:.3f}",
            timestamp=str(g.run.get("opened_at", ""))[:19],
            hostname=socket.gethostname(),
        )
        props = ET.SubElement(suite, "properties")
        for name, value in (
            ("target", g.target),
            ("run_id", g.run.get("run_id", "")),
            ("institution", g.run.get("institution_code", "")),
        ):
            ET.SubElement(props, "property", name=name, value=str(value))
        lines = {e["seq"]: entry_line(e) for e in g.record.entries}
        for r in g.results:
            case = ET.SubElement(
                suite, "testcase", classname=f"his-check.{g.scenario.name}", name=r.id, time="0"
            )
            if r.status == "failed":
                failure = ET.SubElement(case, "failure", message=r.message[:500], type=r.severity)
                failure.text = r.message + "\n" + "\n".join(lines[s] for s in r.entries if s in lines)
            elif r.status == "not_applicable":
                ET.SubElement(case, "skipped", message="not applicable to this scenario")
        out = ET.SubElement(suite, "system-out")
        out.text = "\n".join(lines.values())
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def write_html(graded: Sequence[Graded], path: Path) -> None:
    from settlesim.clients.hischeck.html import render

    path.write_text(render(as_dict(graded)), encoding="utf-8")
