"""What load tests send: eligible visits read from a generated world's
`visits.csv` (see server/world_generate.py) and random but valid fee lists.

Shared by the Locust kit (loadtests/locustfile.py) and `settlesim bench`, so
both touch the same people with the same kind of requests. Reading the CSV does
not load the world: a load generator stays small even for 1,000,000 people.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import yaml
from settlesim.v1 import settlement_service_pb2 as pb

VISITS_FILE = "visits.csv"
MANIFEST_FILE = "manifest.json"
# Generated people are eligible on every day of this window (world_generate.VALID_FROM/TO).
GENERATED_WINDOW = (date(2025, 1, 1), date(2027, 12, 31))


@dataclass(frozen=True, slots=True)
class EligibleVisit:
    """A person, institution and disease that settle on any day of `window`."""

    person_no: str
    institution_code: str
    disease_code: str
    window: tuple[date, date] = GENERATED_WINDOW

    def day(self, rng: random.Random) -> str:
        first, last = self.window
        return (first + timedelta(days=rng.randrange((last - first).days + 1))).isoformat()


def institution_tokens(world: Path | str | None) -> dict[str, str]:
    """Institution code -> bearer token (`token` in the world's institution
    files), for a server run with `serve --auth token`. Reads only those files."""
    from settlesim.server.world_loader import default_world_dir

    root = Path(world) if world else default_world_dir()
    if root.is_file():  # a visits.csv: its world is the folder around it
        root = root.parent
    records: list[dict[str, object]] = []
    files = [root / "institutions.yaml", *sorted((root / "institutions").glob("*.yaml"))]
    for path in files:
        if path.exists():
            records += yaml.safe_load(path.read_text(encoding="utf-8")) or []
    for path in sorted((root / "institutions").glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            records += [json.loads(line) for line in f if line.strip()]
    return {str(r["code"]): str(r["token"]) for r in records if r.get("token")}


# The bundled world's reference case (people/cast.yaml), for a plain `settlesim serve`.
BUNDLED = (
    EligibleVisit("63000000000000000001", "H11010500001", "M00503", (date(2022, 1, 1), date(2027, 12, 31))),
)
BUNDLED_CODES = ("A-CONSULT-001", "A-CHEMO-001")


@dataclass(frozen=True, slots=True)
class Workload:
    visits: tuple[EligibleVisit, ...]
    catalog_codes: tuple[str, ...]

    @classmethod
    def load(cls, world: Path | str | None) -> Workload:
        """From a generated world directory (or its visits.csv); None: the bundled world."""
        if world is None or str(world) == "":
            return cls(BUNDLED, BUNDLED_CODES)
        path = Path(world)
        csv_path = path / VISITS_FILE if path.is_dir() else path
        if not csv_path.exists():
            raise FileNotFoundError(f"{csv_path}: no visits file (make one with `settlesim world generate`)")
        window = GENERATED_WINDOW
        codes: tuple[str, ...] = BUNDLED_CODES
        manifest = csv_path.parent / MANIFEST_FILE
        if manifest.exists():
            meta = json.loads(manifest.read_text(encoding="utf-8"))
            valid = meta.get("valid", {})
            if valid:
                window = (date.fromisoformat(valid["from"]), date.fromisoformat(valid["to"]))
            codes = tuple(meta.get("catalogs", {}).get("codes", ())) + BUNDLED_CODES
        with csv_path.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            next(reader)  # psn_no,institution_code,disease_code,insurance_type
            visits = tuple(EligibleVisit(row[0], row[1], row[2], window) for row in reader if row)
        if not visits:
            raise ValueError(f"{csv_path} has no visits")
        return cls(visits, codes)

    def fees(self, rng: random.Random, max_items: int = 4) -> list[pb.FeeItem]:
        """1..max_items fee lines; amount = unit price × quantity, integer fen."""
        items = []
        for n in range(1, rng.randint(1, max_items) + 1):
            code = rng.choice(self.catalog_codes)
            price, quantity = rng.randrange(100, 60_000), rng.randint(1, 3)
            items.append(
                pb.FeeItem(
                    sequence_no=f"{n:04d}",
                    catalog_code=code,
                    hospital_item_code=f"HIS-{code}",
                    unit_price_fen=price,
                    quantity=quantity,
                    amount_fen=price * quantity,
                )
            )
        return items

    def settlement_request(
        self, rng: random.Random, msgid: str, operator: str = "load"
    ) -> pb.SettlementRequest:
        visit = rng.choice(self.visits)
        return pb.SettlementRequest(
            msgid=msgid,
            visit=pb.Visit(
                institution_code=visit.institution_code,
                person=pb.PersonRef(person_no=visit.person_no),
                disease_code=visit.disease_code,
                visit_date=visit.day(rng),
                medical_type=pb.MEDICAL_TYPE_CHRONIC_SPECIAL_OUTPATIENT,
            ),
            items=self.fees(rng),
            operator=operator,
        )
