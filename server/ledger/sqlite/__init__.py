"""The embedded SQLite ledger (the default store): one file, WAL, group commit.

schema.py and migrations.py (the tables by version), files.py (connections, the
start-up check), store.py (SqliteLedger: the contract's LedgerStore), writer.py (its writer
thread), jobs.py (the write jobs), group_commit.py
(the event loop's group commit), rows.py (settlement, totals and message rows),
national.py (the national visit flow's rows), audit_anchors.py, errors.py (storage
failures as refusals), invariants.py, answer_rows.py and check.py (`ledger check`).
"""

from settlesim.server.ledger.sqlite.audit_anchors import read_audit_anchor, read_audit_anchors
from settlesim.server.ledger.sqlite.check import check_file
from settlesim.server.ledger.sqlite.schema import SCHEMA_VERSION
from settlesim.server.ledger.sqlite.store import SqliteLedger

__all__ = ["SCHEMA_VERSION", "SqliteLedger", "check_file", "read_audit_anchor", "read_audit_anchors"]
