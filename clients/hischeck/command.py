"""What `settlesim his-check start|finish|run` do, apart from parsing arguments:
open a run on a stub (arming the scenario's faults and arranging its state),
tell the operator what to do, then read the run back, grade it and report
(docs/his-check.md). Exit 0 only when every check of every run passed."""

from __future__ import annotations

import json
import shlex
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from settlesim.clients.hischeck.checks import CheckResult, Record, grade
from settlesim.clients.hischeck.scenarios import Scenario, ScenarioError, find_scenario, instructions
from settlesim.clients.hospital import Fee, Hospital
from settlesim.clients.rejections import rejection_of
from settlesim.v1 import his_check_pb2 as hc
from settlesim.v1 import his_check_pb2_grpc as hc_grpc

SETUP_HEADER = "x-settlesim-his-check"


class HisCheckError(Exception):
    """Nothing could be checked (stub down, run refused, bad scenario): one line."""


@dataclass(frozen=True)
class Connection:
    """How to reach the stub, as the run's institution (a secured stub wants its credentials)."""

    target: str
    token: str = ""
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def channel(self) -> grpc.Channel:
        if self.ca is None:
            return grpc.insecure_channel(self.target)
        creds = grpc.ssl_channel_credentials(
            self.ca.read_bytes(),
            self.key.read_bytes() if self.key else None,
            self.cert.read_bytes() if self.cert else None,
        )
        return grpc.secure_channel(self.target, creds)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def driver_args(self) -> list[str]:
        """The same credentials for the bundled good driver (`{credentials}` in --exec)."""
        out = []
        for flag, value in (
            ("--token", self.token),
            ("--ca", self.ca),
            ("--cert", self.cert),
            ("--key", self.key),
        ):
            if value:
                out += [flag, str(value)]
        return out


@dataclass
class Started:
    run: hc.Run
    scenario: Scenario
    plan: dict[str, Any]
    lines: list[str]


@dataclass
class Graded:
    scenario: Scenario
    run: dict[str, Any]
    record: Record
    results: list[CheckResult]
    target: str
    seconds: float = 0.0
    driver_exit: int | None = None
    driver_output: str = ""
    lines: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)


def _fail(error: grpc.RpcError, what: str, target: str) -> HisCheckError:
    code = error.code()
    if code == grpc.StatusCode.UNAVAILABLE and not rejection_of(error).reason:
        return HisCheckError(f"cannot reach {target}: {error.details()}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return HisCheckError(
            f"{target} has no check runs (settlesim.v1.HisCheckService); is it `settlesim serve` "
            "with the journal on?"
        )
    return HisCheckError(f"{what}: {code.name} {rejection_of(error).reason}: {error.details()}")


def run_message_dict(run: hc.Run) -> dict[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(run, preserving_proto_field_name=True)


def start(scenario_ref: str, institution: str | None, conn: Connection, timeout_s: int = 0) -> Started:
    """Open the run, arm its faults, arrange its setup; the plan for the HIS."""
    try:
        scenario = find_scenario(scenario_ref)
    except ScenarioError as e:
        raise HisCheckError(str(e)) from None
    institution = institution or scenario.institution
    faults = [
        hc.TargetedFault(
            rpc=f["rpc"],
            kind=f["kind"],
            nth=f.get("nth", []),
            from_nth=f.get("from_nth", 0),
            delay_ms=f.get("delay_ms", 0),
            figures_off_fen=f.get("figures_off_fen", 0),
        )
        for f in scenario.faults
    ]
    channel = conn.channel()
    try:
        admin = hc_grpc.HisCheckServiceStub(channel)
        try:
            run = admin.OpenRun(
                hc.OpenRunRequest(
                    institution_code=institution, scenario=scenario_ref, faults=faults, timeout_s=timeout_s
                ),
                metadata=conn.metadata,
                timeout=15,
            ).run
        except grpc.RpcError as e:
            raise _fail(e, f"opening a run for {institution}", conn.target) from None
        his = Hospital(channel, institution, metadata=(*conn.metadata, (SETUP_HEADER, "setup")), retries=0)
        # Setup msgids are stamped a day back: the HIS's own msgids (another process, same
        # institution, same second) must never collide with them.
        stamp = (datetime.now() - timedelta(days=1)).strftime("%Y%m%d%H%M%S")
        for n, task in enumerate(scenario.setup, 1):
            try:
                his.settle(
                    task.person,
                    task.disease,
                    task.date,
                    [Fee(f.code, f.price, f.quantity, name=f.name) for f in task.fees],
                    msgid=f"{institution}{stamp}{9000 + n:04d}",
                )
            except grpc.RpcError as e:
                admin.CloseRun(hc.CloseRunRequest(run_id=run.run_id), metadata=conn.metadata, timeout=15)
                raise _fail(e, f"arranging {scenario.name} ({task.id})", conn.target) from None
    finally:
        channel.close()
    lines = instructions(scenario, institution)
    plan = {
        "run_id": run.run_id,
        "target": conn.target,
        "institution": institution,
        "scenario": scenario.name,
        "deadline_ms": scenario.deadline_ms,
        "instructions": lines,
        "tasks": [t.to_dict() for t in scenario.tasks],
    }
    return Started(run, scenario, plan, lines)


def fetch_record(run_id: str, conn: Connection, close: bool = True) -> tuple[hc.Run, Record]:
    channel = conn.channel()
    try:
        admin = hc_grpc.HisCheckServiceStub(channel)
        try:
            answer = admin.GetRunRecord(
                hc.GetRunRecordRequest(run_id=run_id), metadata=conn.metadata, timeout=60
            )
            run = answer.run
            if close:
                run = admin.CloseRun(
                    hc.CloseRunRequest(run_id=run_id), metadata=conn.metadata, timeout=15
                ).run
        except grpc.RpcError as e:
            raise _fail(e, f"reading run {run_id}", conn.target) from None
    finally:
        channel.close()
    if answer.lost_entries:
        raise HisCheckError(
            f"run {run_id}: journal incomplete: {answer.lost_entries} entries lost "
            "(the server could not store them; see its log): the run is not graded"
        )
    entries = sorted((json.loads(e) for e in answer.entries_json), key=lambda e: (e["time"], e["seq"]))
    record = Record(
        run=run_message_dict(run),
        entries=entries,
        settlements=[json.loads(s) for s in answer.settlements_json],
        catalog_codes=frozenset(answer.catalog_codes),
    )
    return run, record


def finish(run_id: str, conn: Connection, scenario_ref: str | None = None) -> Graded:
    run, record = fetch_record(run_id, conn)
    try:
        scenario = find_scenario(scenario_ref or run.scenario)
    except ScenarioError as e:
        raise HisCheckError(f"run {run_id}: {e}; give --scenario") from None
    graded = Graded(scenario, record.run, record, grade(record, scenario), conn.target)
    graded.lines = instructions(scenario, run.institution_code)
    return graded


def run_with_driver(
    scenario_ref: str, institution: str | None, conn: Connection, command: str, timeout_s: float = 300
) -> Graded:
    """start -> the vendor's driver command as a subprocess -> finish."""
    began = time.monotonic()
    started = start(scenario_ref, institution, conn, int(timeout_s) + 60)
    with tempfile.TemporaryDirectory(prefix="his-check-") as tmp:
        tasks = Path(tmp) / "tasks.json"
        tasks.write_text(json.dumps(started.plan, ensure_ascii=False, indent=2), encoding="utf-8")
        argv = [
            part.format(
                target=conn.target,
                institution=started.plan["institution"],
                run=started.run.run_id,
                tasks=str(tasks),
                scenario=started.scenario.name,
                credentials="{credentials}",
            )
            for part in shlex.split(command)
        ]
        if "{credentials}" in command:
            at = argv.index("{credentials}") if "{credentials}" in argv else len(argv)
            argv = argv[:at] + conn.driver_args() + argv[at + 1 :]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
            exit_code, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as e:
            exit_code, output = -1, f"the driver did not finish in {timeout_s:g} s: {e}"
        except OSError as e:
            exit_code, output = -1, f"cannot run {argv[0]}: {e}"
    graded = finish(started.run.run_id, conn, scenario_ref)
    graded.seconds = time.monotonic() - began
    graded.driver_exit, graded.driver_output = exit_code, output
    return graded


@contextmanager
def throwaway_stub(world: Path | None = None, **config: Any) -> Iterator[str]:
    """A reference server on a free port with a throw-away ledger (`--serve`)."""
    from settlesim.server.app import ServerConfig
    from settlesim.server.app import start as start_server

    with tempfile.TemporaryDirectory(prefix="settlesim-his-check-") as tmp:
        running = start_server(
            ServerConfig(port=0, db_path=Path(tmp) / "ledger.db", world_dir=world, **config)
        )
        try:
            yield running.target
        finally:
            running.stop(grace=1)


def exit_code(graded: Sequence[Graded]) -> int:
    return 0 if graded and all(g.passed for g in graded) else 1
