"""The clerk's explanation of a settlement (server/console/explain.py), on real
answers of the reference server: every figure it states is derived here by hand."""

from __future__ import annotations

from conftest import CANCER_HOSPITAL
from settlesim.clients.hospital import Fee
from settlesim.server.console.explain import explain


def test_a_class_b_line_over_its_ceiling_is_explained_step_by_step(server, hospital):
    his = hospital(CANCER_HOSPITAL)
    answer = his.settle("63000000000000000009", "M00503", "2025-03-01", [Fee("B-CEIL-001", 9000)])
    why = explain(answer.settlement, server.world)
    # B-CEIL-001 (catalog 110000): class B, 5 % first share, ceiling 80.00. One at 90.00:
    # over the ceiling 90.00 − 80.00 = 10.00; B share 5 % of 80.00 = 4.00; in scope 76.00.
    (line,) = why.lines
    assert (line.over_ceiling, line.pre_self_pay, line.in_scope) == ("10.00", "4.00", "76.00")
    assert "price above the ceiling 80.00: 10.00 is the patient's" in line.why
    assert "乙类 first share 5%: 4.00 is the patient's" in line.why
    assert (
        line.source is not None
        and line.source.href == "/world/catalogs/110000?code=B-CEIL-001#item-B-CEIL-001"
    )
    steps = {step.title: step for step in why.steps}
    # Qinghai 390/M00503: deductible 50.00, none used; 76.00 − 50.00 = 26.00 at 100 %;
    # the patient pays 90.00 − 26.00 = 64.00 (= 10.00 + 4.00 + 50.00).
    assert steps["Deductible (起付线)"].figure == "50.00"
    assert "0.00 of it was already used" in steps["Deductible (起付线)"].text
    assert steps["Reimbursement ratio (报销比例)"].text.endswith("100% of 26.00 = 26.00.")
    assert steps["Patient pays (个人负担)"].text.startswith(
        "The patient pays the rest: 90.00 − 26.00 = 64.00"
    )
    assert "registration QH-R-0009 valid 2021-01-01..2027-12-31" in steps["Registration (跨省异地就医备案)"].text


def test_the_cap_step_says_when_the_cap_cut_the_fund_payment(server, hospital):
    his = hospital(CANCER_HOSPITAL)
    his.settle("65320000000000000001", "M00503", "2025-03-01", [Fee("A-TARGET-001", 1_000_000, 12)])
    answer = his.settle("65320000000000000001", "M00503", "2025-04-01", [Fee("A-TARGET-001", 2_000_000)])
    cap = {step.title: step for step in explain(answer.settlement, server.world).steps}[
        "Annual cap (年度限额)"
    ]
    # Hotan: cap 100,000.00; visit 1 paid 75 % of 120,000.00 = 90,000.00, so 10,000.00 is left;
    # visit 2's 75 % of 20,000.00 = 15,000.00 is cut to 10,000.00; cap left 0.00.
    assert (
        "90000.00 was paid before this visit, so 10000.00 was left, so the fund pays only 10000.00"
        in cap.text
    )
    assert cap.text.endswith("Cap left after this visit: 0.00.")
    assert cap.figure == "10000.00"
