"""Locust load through the national door: HIS terminals posting the JSON envelope.

    settlesim serve --national-port 8080 --world /tmp/world-100k &
    locust -f loadtests/national_locustfile.py --host http://127.0.0.1:8080 --world /tmp/world-100k \\
        --headless -u 20 -r 20 -t 30s --csv /tmp/national

One flow is one visit as an HIS calls it (clients/national.py): 2201 → 2203 → 2204 →
2206 → 2207, each a request named by its infno. Every answer is checked (infcode 0;
fund + person = total = the lines; 2207 = 2206) and reported as "validate / visit
validated", as the gRPC kit does. Each user has its own ledger sandbox per
institution (x-settlesim-session), so exact checks hold while users settle the same people.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from locust import HttpUser, events, task
from settlesim.clients.national import (
    PATH,
    NationalRefused,
    decode,
    encode,
    money_problems,
    msgid,
    play_visit,
)
from settlesim.clients.workload import Workload

SESSION_HEADER = "x-settlesim-session"


class ValidationError(AssertionError):
    """An answer that breaks a rule of the national interface."""


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument(
        "--world",
        default="",
        help="generated world directory or its visits.csv (default: the bundled world's reference case)",
    )


_workload: dict[str, Workload] = {}


def _workload_for(world: str) -> Workload:
    if world not in _workload:
        _workload[world] = Workload.load(world or None)
    return _workload[world]


class NationalHospital(HttpUser):
    """One HIS terminal of the national door, closed loop."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.workload = _workload_for(getattr(options, "world", "") if options else "")
        self.rng = random.Random()
        self.tag = uuid.uuid4().hex[:8].upper()
        self.seq = 0
        self.headers = {"content-type": "application/json"}

    def next_msgid(self, institution_code: str) -> str:
        self.seq += 1
        return msgid(institution_code, self.tag, self.seq)

    def headers_for(self, institution: str) -> dict[str, str]:
        """A sandbox of this user's per institution: a sandbox belongs to the institution that
        first wrote in it (docs/sessions.md)."""
        return {**self.headers, SESSION_HEADER: f"locust-national-{self.tag}-{institution}"}

    def post(self, envelope: dict[str, Any]) -> dict[str, Any]:
        with self.client.post(
            PATH,
            data=encode(envelope),
            headers=self.headers_for(envelope["fixmedins_code"]),
            name=envelope["infno"],
            catch_response=True,
        ) as response:
            try:
                answer = decode(response.content)
            except ValueError:
                response.failure(f"not JSON: HTTP {response.status_code}")
                return {}
            if answer.get("infcode") != 0:
                response.failure(f"{answer.get('err_reason')}: {answer.get('err_detail')}")
            return answer

    @task
    def visit(self) -> None:
        request = self.workload.settlement_request(self.rng, "")
        institution = request.visit.institution_code
        try:
            played = play_visit(self.post, request, lambda: self.next_msgid(institution))
        except NationalRefused:
            return  # already a failure of its infno
        problems = money_problems(request, played)
        self.environment.events.request.fire(
            request_type="validate",
            name="visit validated",
            response_time=0,
            response_length=0,
            exception=ValidationError("; ".join(problems)) if problems else None,
            context={},
        )
