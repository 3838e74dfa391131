"""Scenarios: what a check run asks of the hospital's HIS (docs/his-check.md).

A scenario is YAML: the institution it is written for, the state his-check
arranges before the HIS starts (`setup`), the faults aimed at exact calls of
the run (`faults`), the tasks the HIS operator (or the vendor's automation)
must carry out (`tasks`), and what the ledger must hold at the end (`expect`).
The loader refuses unknown keys, naming the file, the path and the key.
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml

SCENARIO_KEYS = {
    "name",
    "title",
    "world",
    "institution",
    "why",
    "note",
    "deadline_ms",
    "setup",
    "faults",
    "tasks",
    "expect",
    "tags",
}
TASK_KEYS = {
    "settle": {"id", "do", "person", "disease", "date", "fees", "pre_settle", "note"},
    "reverse": {"id", "do", "settlement_of", "note"},
    "reconcile": {"id", "do", "start", "end", "note"},
}
FEE_KEYS = {"code", "price", "quantity", "name"}
SETUP_KEYS = {"person", "disease", "date", "fees"}
FAULT_KEYS = {"rpc", "kind", "nth", "from_nth", "delay_ms", "figures_off_fen"}
EXPECT_KEYS = {"in_force", "status", "fund_pays_fen", "patient_pays_fen", "total_fen", "refused"}
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


class ScenarioError(Exception):
    """A scenario file that does not follow the format: file, path, problem."""


@dataclass(frozen=True)
class Fee:
    code: str
    price: int  # fen
    quantity: int = 1
    name: str = ""


@dataclass(frozen=True)
class Task:
    id: str
    do: str  # settle | reverse | reconcile
    person: str = ""
    disease: str = ""
    date: str = ""
    fees: tuple[Fee, ...] = ()
    pre_settle: bool = False
    settlement_of: str = ""
    start: str = ""
    end: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "do": self.do}
        if self.do == "settle":
            data.update(
                person=self.person,
                disease=self.disease,
                date=self.date,
                pre_settle=self.pre_settle,
                fees=[
                    {"code": f.code, "price": f.price, "quantity": f.quantity, "name": f.name}
                    for f in self.fees
                ],
            )
        elif self.do == "reverse":
            data["settlement_of"] = self.settlement_of
        else:
            data.update(start=self.start, end=self.end)
        if self.note:
            data["note"] = self.note
        return data


@dataclass(frozen=True)
class Expectation:
    """What the ledger must hold at the end for one settle task's visit."""

    in_force: int | None = None  # settlements in force for the visit
    status: str = ""  # settled | reversed | voided: the visit's last settlement
    fund_pays_fen: int | None = None
    patient_pays_fen: int | None = None
    total_fen: int | None = None
    refused: str = ""  # the platform refuses it with this reason; the HIS must not retry it


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    world: str
    institution: str
    why: str
    tasks: tuple[Task, ...]
    note: str = ""
    deadline_ms: int = 10_000
    setup: tuple[Task, ...] = ()
    faults: tuple[dict[str, Any], ...] = ()
    expect: dict[str, Expectation] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    source: str = ""

    def task(self, task_id: str) -> Task:
        return next(t for t in self.tasks if t.id == task_id)


def scenarios_dir() -> Path:
    return Path(str(importlib.resources.files("settlesim.clients") / "hischeck" / "scenarios"))


def bundled() -> list[Scenario]:
    return [load_scenario(p) for p in sorted(scenarios_dir().glob("*.yaml"))]


def find_scenario(name_or_path: str) -> Scenario:
    """A bundled scenario by name, or a scenario file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return load_scenario(path)
    candidate = scenarios_dir() / f"{name_or_path}.yaml"
    if candidate.is_file():
        return load_scenario(candidate)
    names = ", ".join(s.stem for s in sorted(scenarios_dir().glob("*.yaml")))
    raise ScenarioError(f"no scenario {name_or_path!r}: give a YAML file or one of {names}")


class _At:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: {path}: {problem}")

    def keys(self, path: str, data: Any, allowed: set[str], required: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(path, "must be a mapping")
        for key in data:
            if key not in allowed:
                raise self.fail(
                    f"{path}.{key}" if path else str(key),
                    f"unknown key; allowed: {', '.join(sorted(allowed))}",
                )
        for key in required:
            if key not in data:
                raise self.fail(f"{path}.{key}" if path else key, "required")
        return data

    def text(self, path: str, value: Any) -> str:
        if isinstance(value, date):
            return value.isoformat()
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise self.fail(path, "must be a string")
        return str(value)

    def integer(self, path: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(path, "must be an integer (money is integer fen)")
        return value


def load_scenario(path: Path) -> Scenario:
    at = _At(str(path))
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ScenarioError(f"{path}: not valid YAML: {e}") from e
    at.keys("", doc, SCENARIO_KEYS, ("name", "world", "institution", "why", "tasks"))
    name = at.text("name", doc["name"])
    if not _NAME.fullmatch(name):
        raise at.fail("name", "a-z 0-9 . _ - only")
    tasks = tuple(_task(at, f"tasks[{i}]", t) for i, t in enumerate(_list(at, "tasks", doc["tasks"])))
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise at.fail("tasks", "task ids must be unique")
    for i, t in enumerate(tasks):
        if t.do == "reverse" and t.settlement_of not in ids[:i]:
            raise at.fail(f"tasks[{i}].settlement_of", f"{t.settlement_of!r} is no earlier settle task")
    setup = tuple(
        _task(
            at,
            f"setup[{i}]",
            {
                **at.keys(f"setup[{i}]", s, SETUP_KEYS, tuple(SETUP_KEYS)),
                "do": "settle",
                "id": f"setup{i + 1}",
            },
        )
        for i, s in enumerate(_list(at, "setup", doc.get("setup") or []))
    )
    faults = []
    for i, f in enumerate(_list(at, "faults", doc.get("faults") or [])):
        at.keys(f"faults[{i}]", f, FAULT_KEYS, ("rpc", "kind"))
        nth = f.get("nth", [])
        if not isinstance(nth, list) or not all(isinstance(n, int) for n in nth):
            raise at.fail(f"faults[{i}].nth", "must be a list of call numbers, e.g. [1]")
        faults.append(dict(f))
    expect: dict[str, Expectation] = {}
    for task_id, e in at.keys("expect", doc.get("expect") or {}, set(ids)).items():
        where = f"expect.{task_id}"
        at.keys(where, e, EXPECT_KEYS)
        if scenario_task(tasks, task_id).do != "settle":
            raise at.fail(where, "expectations are for settle tasks")
        money = {
            k: at.integer(f"{where}.{k}", e[k])
            for k in ("fund_pays_fen", "patient_pays_fen", "total_fen")
            if k in e
        }
        status = e.get("status", "")
        if status not in ("", "settled", "reversed", "voided"):
            raise at.fail(f"{where}.status", "settled, reversed or voided")
        expect[task_id] = Expectation(
            in_force=at.integer(f"{where}.in_force", e["in_force"]) if "in_force" in e else None,
            status=status,
            refused=at.text(f"{where}.refused", e.get("refused", "")),
            **money,
        )
    return Scenario(
        name=name,
        title=at.text("title", doc.get("title", name)),
        world=at.text("world", doc["world"]),
        institution=at.text("institution", doc["institution"]),
        why=at.text("why", doc["why"]),
        note=at.text("note", doc.get("note", "")),
        deadline_ms=at.integer("deadline_ms", doc.get("deadline_ms", 10_000)),
        tasks=tasks,
        setup=setup,
        faults=tuple(faults),
        expect=expect,
        tags=tuple(at.text(f"tags[{i}]", t) for i, t in enumerate(doc.get("tags") or [])),
        source=str(path),
    )


def scenario_task(tasks: tuple[Task, ...], task_id: str) -> Task:
    return next(t for t in tasks if t.id == task_id)


def _list(at: _At, path: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise at.fail(path, "must be a list")
    return value


def _task(at: _At, path: str, data: Any) -> Task:
    if not isinstance(data, dict) or data.get("do") not in TASK_KEYS:
        raise at.fail(f"{path}.do", f"must be one of {', '.join(TASK_KEYS)}")
    do = data["do"]
    required = {
        "settle": ("id", "person", "disease", "date", "fees"),
        "reverse": ("id", "settlement_of"),
        "reconcile": ("id", "start", "end"),
    }[do]
    at.keys(path, data, TASK_KEYS[do], required)
    fees = tuple(
        Fee(
            code=at.text(f"{path}.fees[{i}].code", f["code"]),
            price=at.integer(f"{path}.fees[{i}].price", f["price"]),
            quantity=at.integer(f"{path}.fees[{i}].quantity", f.get("quantity", 1)),
            name=at.text(f"{path}.fees[{i}].name", f.get("name", "")),
        )
        for i, f in enumerate(_list(at, f"{path}.fees", data.get("fees", [])))
        if at.keys(f"{path}.fees[{i}]", f, FEE_KEYS, ("code", "price"))
    )
    if do == "settle" and not fees:
        raise at.fail(f"{path}.fees", "at least one fee item")
    return Task(
        id=at.text(f"{path}.id", data["id"]),
        do=do,
        person=at.text(f"{path}.person", data.get("person", "")),
        disease=at.text(f"{path}.disease", data.get("disease", "")),
        date=at.text(f"{path}.date", data.get("date", "")),
        fees=fees,
        pre_settle=bool(data.get("pre_settle", False)),
        settlement_of=at.text(f"{path}.settlement_of", data.get("settlement_of", "")),
        start=at.text(f"{path}.start", data.get("start", "")),
        end=at.text(f"{path}.end", data.get("end", "")),
        note=at.text(f"{path}.note", data.get("note", "")),
    )


def instructions(scenario: Scenario, institution: str) -> list[str]:
    """What the HIS operator must do, one line per task."""
    lines = []
    if scenario.note:
        lines.append(scenario.note.strip())
    lines.append(f"Use a deadline of {scenario.deadline_ms / 1000:g} s per call.")
    for n, t in enumerate(scenario.tasks, 1):
        if t.do == "settle":
            fees = "; ".join(
                f"{f.code}{' ' + f.name if f.name else ''} {f.price / 100:.2f} yuan × {f.quantity}"
                for f in t.fees
            )
            pre = (
                " Pre-settle it first (2206) and settle exactly what you pre-settled." if t.pre_settle else ""
            )
            line = (
                f"{n}. [{t.id}] At {institution}, settle (2207) a visit for person {t.person}, disease "
                f"{t.disease}, on {t.date}, with these fee items: {fees}.{pre}"
            )
        elif t.do == "reverse":
            line = f"{n}. [{t.id}] Reverse (2208) the settlement of task [{t.settlement_of}]."
        else:
            line = (
                f"{n}. [{t.id}] Reconcile (3201) {t.start}..{t.end} with your own figures; when it does not "
                "match, fetch the entries (3202), settle the difference (void or record), reconcile again."
            )
        if t.note:
            line += f" {t.note.strip()}"
        lines.append(line)
    return lines
