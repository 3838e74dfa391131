"""The ledger's package boundary (docs/ledger.md "Package layout"): only the SQLite store
(server/ledger/sqlite/) speaks SQLite for the ledger; everyone else asks the contract
(server/ledger/contract.py). And `--db` goes through the factory: a PostgreSQL URL opens the
PostgreSQL store (server/ledger/postgres/), and one it cannot reach is one line, its password
masked."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from settlesim.server.ledger import LedgerFileError, check_ledger, open_ledger
from settlesim.server.ledger.sqlite import SqliteLedger

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("server", "settlesim", "clients", "scripts", "loadtests")
STORE = "server/ledger/sqlite/"
# sqlite3 outside the store, each for a file that is not the ledger (by module, or module:function).
NOT_THE_LEDGER = {
    "server/journal.py": "the call journal: its own SQLite file per replica, not the ledger",
    "server/console/reads.py": "the console's reads of the journal and the check runs",
    "settlesim/cli.py:_journal_entries": "`settlesim journal show/export` reads the journal",
    "settlesim/cli.py:_run_scenario": "the journal's runs table",
    "scripts/large_ledger.py": "writes a SQLite ledger file in bulk to time SQLite's start-up check",
}


def sqlite_imports(root: Path) -> list[str]:
    """Every `import sqlite3` / `from sqlite3 import` under `root`'s sources outside the
    SQLite store, as 'path' (module level) or 'path:function'."""
    found = []
    for top in SOURCES:
        for path in sorted((root / top).rglob("*.py")):
            name = path.relative_to(root).as_posix()
            if name.startswith(STORE):
                continue
            found += [
                f"{name}{where}" for where in _where_imported(ast.parse(path.read_text(encoding="utf-8")))
            ]
    return found


def _where_imported(tree: ast.AST, where: str = "") -> list[str]:
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found += _where_imported(node, f"{where}:{node.name}" if not where else f"{where}.{node.name}")
        elif _imports_sqlite3(node):
            found.append(where)
        else:
            found += _where_imported(node, where)
    return found


def _imports_sqlite3(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(alias.name.split(".")[0] == "sqlite3" for alias in node.names)
    return isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlite3"


def test_only_the_sqlite_store_imports_sqlite3_for_the_ledger():
    outside = [name for name in sqlite_imports(ROOT) if name not in NOT_THE_LEDGER]
    assert outside == [], f"sqlite3 outside {STORE} (ask the ledger's contract instead): {outside}"


def test_the_boundary_check_sees_sqlite3_at_module_level_and_in_a_function(tmp_path):
    (tmp_path / "server" / "ledger" / "sqlite").mkdir(parents=True)
    (tmp_path / "server" / "ledger" / "sqlite" / "store.py").write_text("import sqlite3\n")  # the store: fine
    (tmp_path / "server" / "service.py").write_text("import os, sqlite3\n")
    (tmp_path / "server" / "national").mkdir()
    (tmp_path / "server" / "national" / "visits.py").write_text(
        "class VisitStore:\n    def once(self):\n        from sqlite3 import Connection\n"
    )
    (tmp_path / "settlesim").mkdir()
    (tmp_path / "settlesim" / "cli.py").write_text("def _journal_entries():\n    import sqlite3\n")
    assert sqlite_imports(tmp_path) == [
        "server/national/visits.py:VisitStore.once",
        "server/service.py",
        "settlesim/cli.py:_journal_entries",
    ]


def test_the_contract_is_what_the_sqlite_store_implements(tmp_path):
    """Every method the contract lists exists on the SQLite store (a Protocol checks
    nothing at run time by itself)."""
    from settlesim.server.ledger.contract import LedgerStore, NationalWrites
    from settlesim.server.ledger.sqlite.national import SqliteNationalWrites

    for contract, store in ((LedgerStore, SqliteLedger), (NationalWrites, SqliteNationalWrites)):
        methods = [n for n, v in vars(contract).items() if callable(v) and not n.startswith("_")]
        assert methods and [n for n in methods if not callable(getattr(store, n, None))] == []
    ledger = open_ledger(tmp_path / "ledger.db")
    try:
        assert isinstance(ledger, SqliteLedger)
        assert [n for n in LedgerStore.__annotations__ if not hasattr(ledger, n)] == []
    finally:
        ledger.close()


@pytest.mark.parametrize(
    "url", ["postgresql://settlesim:secret@127.0.0.1:1/ledger", "postgres://127.0.0.1:1/ledger"]
)
def test_a_postgresql_url_the_factory_cannot_reach_is_one_line_without_its_password(url):
    for call in (open_ledger, check_ledger):
        with pytest.raises(LedgerFileError, match=r"127\.0\.0\.1:1/ledger") as refused:
            call(url)
        assert "secret" not in str(refused.value) and "\n" not in str(refused.value)  # never the password


def _settlesim(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "settlesim", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("serve", "--port", "0", "--db", "postgresql://settlesim:secret@127.0.0.1:1/ledger"), None),
        (("serve", "--port", "0"), {"SETTLESIM_DB": "postgresql://settlesim:secret@127.0.0.1:1/ledger"}),
        (("ledger", "check", "--db", "postgresql://settlesim:secret@127.0.0.1:1/ledger"), None),
    ],
)
def test_the_cli_refuses_an_unreachable_postgresql_ledger_in_one_line(args, env):
    result = _settlesim(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr, result.stderr
    assert "cannot connect to PostgreSQL" in result.stderr or "cannot be checked" in result.stderr
    assert "postgresql://settlesim:***@127.0.0.1:1/ledger" in result.stderr
