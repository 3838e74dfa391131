"""The web console (控制台): a read-only view of a running platform — the live
call journal, settlements and why they came to their amounts, people and their
year so far, the world, check runs — and `/metrics` for Prometheus
(docs/console.md).

`create_app` makes the FastAPI app; server/app.py serves it on its own
localhost port (server/http_server.py). Pages are Jinja2 templates with a
little htmx (the journal polls for new calls). Handlers are plain `def`s:
FastAPI runs them in its thread pool, each with its own read-only SQLite
connection (reads.py), so a page never waits on nor holds up a settle.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from google.protobuf import json_format
from settlesim.server.console import reads
from settlesim.server.console.explain import explain, yuan
from settlesim.server.ledger import LedgerStore
from settlesim.server.metrics import CONTENT_TYPE_LATEST, Metrics
from settlesim.server.model import InsuranceType, World
from settlesim.v1 import settlement_service_pb2 as pb

HERE = Path(__file__).parent
RPCS = tuple(pb.DESCRIPTOR.services_by_name["SettlementService"].methods_by_name)
PAGE = 100  # rows of world tables per page


@dataclass(frozen=True)
class ConsoleConfig:
    world: World
    ledger: LedgerStore
    journal_path: Path | None  # None: serve --no-journal
    metrics: Metrics | None = None
    token: str = ""  # "": no login (the insecure local stub); else HTTP Basic, password = token
    reports_dir: Path | None = None  # replay/conformance reports to list (--console-reports)


def create_app(config: ConsoleConfig) -> FastAPI:
    app = FastAPI(title="settlesim console", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals.update(yuan=yuan, urlencode=urlencode)
    templates.env.filters["zip"] = zip  # a Dated value's (effective date, version) pairs
    world = config.world
    meanings = reads.reason_meanings()
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    dependencies = [Depends(_login(config.token))] if config.token else []

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"world": world, **context})

    def journal_db():  # type: ignore[no-untyped-def]
        return reads.read_only(config.journal_path)

    # --- metrics ------------------------------------------------------------------------------

    @app.get("/metrics", dependencies=dependencies)
    def metrics() -> Response:
        if config.metrics is None:
            raise HTTPException(404, "metrics are off")
        return Response(config.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    # --- the journal --------------------------------------------------------------------------

    @app.get("/", dependencies=dependencies)
    def home() -> RedirectResponse:
        return RedirectResponse("/journal")

    def journal_context(f: reads.JournalFilter, before: int) -> dict[str, Any]:
        with journal_db() as db:
            entries = reads.journal_page(db, f, before)
        filters = {k: v for k, v in vars(f).items() if v}
        older = entries[-1].seq if len(entries) == reads.PAGE else 0
        return {
            "entries": entries, "f": f, "filters": filters, "before": before, "older": older,
            "rpcs": RPCS, "journal_on": config.journal_path is not None, "outcome_window": reads.OUTCOME_WINDOW,
        }  # fmt: skip

    @app.get("/journal", response_class=HTMLResponse, dependencies=dependencies)
    def journal(request: Request, f: Annotated[reads.JournalFilter, Depends(_filter)], before: int = 0):
        return page(request, "journal.html", **journal_context(f, before))

    @app.get("/journal/rows", response_class=HTMLResponse, dependencies=dependencies)
    def journal_rows(request: Request, f: Annotated[reads.JournalFilter, Depends(_filter)]):
        """The newest page's rows: what the journal page polls for (htmx)."""
        return page(request, "journal_rows.html", **journal_context(f, 0))

    @app.get("/journal/{seq}", response_class=HTMLResponse, dependencies=dependencies)
    def journal_entry(request: Request, seq: int):
        with journal_db() as db:
            entry = reads.journal_entry(db, seq)
        if entry is None:
            raise HTTPException(404, f"no journal entry {seq}")
        # A pre-settle's answer is never stored: only the ledger's settlements have a page.
        stored = entry.rpc != "PreSettleVisit"
        settlement_id = (
            ((entry.answer or {}).get("settlement") or {}).get("settlement_id", "") if stored else ""
        )
        return page(
            request, "entry.html", e=entry, meaning=meanings.get(entry.reason, ""), settlement_id=settlement_id,
            request_json=json.dumps(entry.request, ensure_ascii=False, indent=2),
            answer_json=json.dumps(entry.answer, ensure_ascii=False, indent=2) if entry.answer else "",
        )  # fmt: skip

    @app.get("/journal/{seq}/why", response_class=HTMLResponse, dependencies=dependencies)
    def journal_why(request: Request, seq: int):
        """A journaled answer's settlement explained: a pre-settle (2206), never stored in the
        ledger, or a settle as it was answered."""
        with journal_db() as db:
            entry = reads.journal_entry(db, seq)
        settlement = ((entry.answer or {}).get("settlement") if entry else None) or None
        if settlement is None:
            raise HTTPException(404, f"journal entry {seq} carries no settlement")
        answer = json_format.ParseDict(settlement, pb.Settlement())
        return page(
            request, "settlement.html", stored=None, s=answer, why=explain(answer, world), seq=seq,
            status=f"{entry.rpc} answer, journal #{seq}",
        )  # fmt: skip

    # --- settlements and people ------------------------------------------------------------

    @app.get("/settlements/{settlement_id}", response_class=HTMLResponse, dependencies=dependencies)
    def settlement(request: Request, settlement_id: str):
        found = reads.settlement(config.ledger, settlement_id)
        if found is None:
            raise HTTPException(404, f"no settlement {settlement_id}")
        stored, answer = found
        return page(
            request, "settlement.html", stored=stored, s=answer, why=explain(answer, world),
            status=pb.SettlementStatus.Name(answer.status).removeprefix("SETTLEMENT_STATUS_").lower(),
        )  # fmt: skip

    @app.get("/people", response_class=HTMLResponse, dependencies=dependencies)
    def people(request: Request, person_no: str = ""):
        if person_no:
            return RedirectResponse(f"/people/{person_no.strip()}")
        sample = [world.people[k] for k in _first(world.people, 20)]
        return page(request, "people.html", sample=sample, count=len(world.people))

    @app.get("/people/{person_no}", response_class=HTMLResponse, dependencies=dependencies)
    def person(request: Request, person_no: str, session: str = ""):
        who = world.people.get(person_no)
        if who is None:
            raise HTTPException(404, f"no person {person_no} in world {world.name}")
        totals = reads.yearly_totals(config.ledger, session, person_no)
        rows = [_year_row(world, who, disease, year, used, paid) for disease, year, used, paid in totals]
        this_year = date.today().year
        return page(request, "person.html", p=who, rows=rows, session=session, this_year=this_year)

    # --- the world ----------------------------------------------------------------------------

    @app.get("/world", response_class=HTMLResponse, dependencies=dependencies)
    def world_page(request: Request, institutions_page: int = 0):
        codes = sorted(world.institutions)
        shown = [
            world.institutions[c] for c in codes[institutions_page * PAGE : (institutions_page + 1) * PAGE]
        ]
        return page(
            request, "world.html", institutions=shown, institutions_page=institutions_page,
            more_institutions=len(codes) > (institutions_page + 1) * PAGE, people=len(world.people),
        )  # fmt: skip

    @app.get("/world/policies/{region}", response_class=HTMLResponse, dependencies=dependencies)
    def policy(request: Request, region: str):
        found = world.policies.get(region)
        if found is None:
            raise HTTPException(404, f"no policy for region {region}")
        return page(request, "policy.html", policy=found)

    @app.get("/world/catalogs/{region}", response_class=HTMLResponse, dependencies=dependencies)
    def catalog(request: Request, region: str, code: str = "", p: int = 0):
        found = world.catalogs.get(region)
        if found is None:
            raise HTTPException(404, f"no catalog for region {region}")
        codes = [code] if code in found.items else sorted(found.items)[p * PAGE : (p + 1) * PAGE]
        return page(
            request, "catalog.html", catalog=found, items=[found.items[c] for c in codes], p=p,
            more=not code and len(found.items) > (p + 1) * PAGE, code=code,
        )  # fmt: skip

    # --- check runs and reports -------------------------------------------------------------

    @app.get("/runs", response_class=HTMLResponse, dependencies=dependencies)
    def runs(request: Request, before: str = ""):
        with journal_db() as db:
            found = reads.runs_page(db, before)
        older = found[-1].run_id if len(found) == reads.PAGE else ""
        return page(request, "runs.html", runs=found, older=older, reports=_reports(config.reports_dir))

    @app.get("/runs/{run_id}", response_class=HTMLResponse, dependencies=dependencies)
    def run(request: Request, run_id: str):
        with journal_db() as db:
            found = reads.run(db, run_id)
            entries = reads.run_entries(db, run_id) if found else []
        if found is None:
            raise HTTPException(404, f"no check run {run_id}")
        settled = reads.session_settlements(config.ledger, found.session)
        graded, problem = _grade(world, found, entries, settled)
        return page(request, "run.html", run=found, entries=entries, graded=graded, problem=problem)

    @app.get("/reports/{name}", dependencies=dependencies)
    def report(name: str) -> FileResponse:
        for found in _reports(config.reports_dir):
            if found["name"] == name:
                return FileResponse(found["path"])
        raise HTTPException(404, f"no report {name}")

    return app


def _filter(
    institution: str = "", rpc: str = "", outcome: str = "", msgid: str = "", session: str = "",
    run_id: Annotated[str, Query(alias="run")] = "",
) -> reads.JournalFilter:  # fmt: skip
    return reads.JournalFilter(
        institution.strip(), rpc, outcome.strip(), msgid.strip(), session.strip(), run_id
    )


def _login(token: str):  # type: ignore[no-untyped-def]
    basic = HTTPBasic(realm="settlesim console")

    # Depends() as a default: an Annotated[] naming this closure's `basic` would not resolve
    # under `from __future__ import annotations`.
    def check(credentials: HTTPBasicCredentials = Depends(basic)) -> None:  # noqa: B008
        if not secrets.compare_digest(credentials.password.encode(), token.encode()):
            raise HTTPException(401, "wrong console token", headers={"WWW-Authenticate": "Basic"})

    return check


def _first(mapping: Any, n: int) -> list[str]:
    """The first n keys, without listing a million of them."""
    out = []
    for key in mapping:
        out.append(key)
        if len(out) == n:
            break
    return out


def _year_row(world: World, who: Any, disease: str, year: int, used: int, paid: int) -> dict[str, Any]:
    """A year's running totals and what is left, with the terms in force at the
    year's end (or today, for the current year): the terms a next visit meets."""
    day = min(date(year, 12, 31), max(date.today(), date(year, 1, 1)))
    policy = world.policy_for(who.insured_region)
    terms = since = None
    insurance = InsuranceType(who.insurance_type)
    if policy is not None and (insurance, disease) in policy.terms:
        dated = policy.terms[(insurance, disease)].on(day)
        if dated is not None:
            since, terms = dated
    cap = terms.annual_cap if terms is not None else None
    return {
        "disease": disease, "disease_name": world.diseases[disease].name if disease in world.diseases else "",
        "year": year, "deductible": terms.deductible if terms else None, "deductible_used": used,
        "fund_paid": paid, "cap": cap, "cap_left": None if cap is None else max(0, cap - paid),
        "since": since, "policy": policy.region if policy else "", "insurance": insurance.value,
    }  # fmt: skip


def _grade(world: World, run: Any, entries: list[Any], settled: list[Any]) -> tuple[list[Any], str]:
    """The run's findings now: the same checks `his-check finish` applies."""
    from settlesim.clients.hischeck.checks import Record, grade
    from settlesim.clients.hischeck.scenarios import ScenarioError, find_scenario
    from settlesim.server.his_check_service import settlement_dict

    try:
        scenario = find_scenario(run.scenario)
    except ScenarioError as e:
        return [], str(e)
    institution = world.institutions.get(run.institution)
    catalog = world.catalog_for(institution.region) if institution else None
    record = Record(
        run={"run_id": run.run_id, "institution_code": run.institution, "scenario": run.scenario,
             "session": run.session, "opened_at": run.opened_at, "closed_at": run.closed_at},
        entries=[e.to_dict() for e in entries],
        settlements=[settlement_dict(s) for s in settled],
        catalog_codes=frozenset(catalog.items) if catalog else frozenset(),
    )  # fmt: skip
    return grade(record, scenario), ""


def _reports(folder: Path | None) -> list[dict[str, Any]]:
    """Replay and conformance reports (--json / --html files) in the reports folder."""
    if folder is None or not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)[:200]:
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and "summary" in data:
                found.append({"name": path.name, "path": path, "kind": "json", "data": data})
        elif path.suffix == ".html":
            found.append({"name": path.name, "path": path, "kind": "html", "data": None})
    return found
