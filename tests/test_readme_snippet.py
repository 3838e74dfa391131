"""The README's Python snippet gives the figures its comment promises, on every run: run it
twice against one fresh server (the figures are derived by hand in docs/domain.md, the 2021
Qinghai case: total 17963, fund 12963, patient 5000)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_snippet() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) == 1, "the README has one Python snippet"
    return blocks[0]


def test_the_readme_snippet_prints_its_commented_figures_twice_in_a_row(server):
    snippet = readme_snippet()
    promised = re.search(r"total (\d+), fund (\d+), patient (\d+)", snippet)
    assert promised, "the snippet's comment names total, fund and patient"
    # Hand derivation (docs/domain.md): total 5000 + 12963 = 17963; deductible min(17963, 5000) = 5000;
    # fund round((17963 - 5000) × 100%) = 12963; patient 17963 - 12963 = 5000.
    assert tuple(map(int, promised.groups())) == (17963, 12963, 5000)
    assert "127.0.0.1:50051" in snippet
    code = snippet.replace("127.0.0.1:50051", server.target)
    for run in (1, 2):
        scope: dict[str, object] = {}
        exec(compile(code, "README.md snippet", "exec"), scope)
        totals = scope["answer"].settlement.totals  # type: ignore[attr-defined]
        got = (totals.total_fen, totals.fund_pays_fen, totals.patient_pays_fen)
        assert got == (17963, 12963, 5000), f"run {run}: total, fund, patient = {got}"
        scope["his"].close()  # type: ignore[attr-defined]
