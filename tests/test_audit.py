"""The audit log never costs a hospital its answer."""

from __future__ import annotations

import logging

from conftest import CANCER_HOSPITAL
from settlesim.clients.hospital import Fee, Hospital
from settlesim.server.app import ServerConfig, start


def test_a_failed_audit_write_loses_neither_the_answer_nor_the_record(tmp_path, caplog):
    """The disk under the audit log fails (here: its file is closed underneath
    it). A settle that committed must still be answered, or the hospital would
    void or retry a settlement that stands; the record goes to the error log."""
    running = start(ServerConfig(port=0, db_path=tmp_path / "ledger.db", audit_log=tmp_path / "audit.jsonl"))
    his = Hospital.connect(running.target, CANCER_HOSPITAL)
    try:
        assert running.audit is not None
        running.audit._file.close()
        with caplog.at_level(logging.ERROR, logger="settlesim.server"):
            answer = his.settle(
                "63000000000000000001", "M00503", "2021-12-09", [Fee("A-CONSULT-001", 5000)]
            )
        assert answer.settlement.settlement_id and not answer.replayed
        failed = [r.getMessage() for r in caplog.records if "audit log write failed" in r.getMessage()]
        assert len(failed) == 1 and answer.settlement.settlement_id in failed[0]
        assert running.ledger.get("", CANCER_HOSPITAL, answer.settlement.settlement_id).status == "settled"
    finally:
        his.close()
        running.stop(grace=1)
