"""The command line: help with examples everywhere, one-line errors."""

from __future__ import annotations

import pytest
from conftest import settlesim

from settlesim.cli import build_parser


def _subcommands(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


@pytest.mark.parametrize("command", list(_subcommands(build_parser())), ids=" ".join)
def test_every_subcommand_has_help_with_examples(command):
    result = settlesim(*command, "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout


@pytest.mark.parametrize("kind", ["not a database", "newer schema"])
def test_serve_on_a_file_that_is_no_ledger_is_one_clear_line(tmp_path, kind):
    import sqlite3

    db = tmp_path / "ledger.db"
    if kind == "not a database":
        db.write_text("a spreadsheet, perhaps\n" * 200)
    else:
        with sqlite3.connect(db) as made:
            made.execute("PRAGMA user_version = 99")
    result = settlesim("serve", "--port", "0", "--db", str(db))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert str(db) in result.stderr and "Traceback" not in result.stderr


def test_bad_world_is_one_clear_line(tmp_path):
    (tmp_path / "regions.yaml").write_text("- {code: '12', name: bad}\n")
    result = settlesim("world", "check", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "regions.yaml" in result.stderr and "6 digits" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_clear_line(server, tmp_path):
    result = settlesim("serve", "--port", str(server.port), "--db", str(tmp_path / "x.db"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "in use" in result.stderr


def test_ledger_check_missing_db(tmp_path):
    result = settlesim("ledger", "check", "--db", str(tmp_path / "none.db"))
    assert result.returncode == 2 and "no ledger" in result.stderr


def test_world_check_bundled():
    result = settlesim("world", "check")
    assert result.returncode == 0 and "is valid" in result.stdout


def test_every_reason_is_documented_with_its_status_code():
    from pathlib import Path

    from google.rpc import code_pb2
    from settlesim.server.rules.reasons import Reason
    from settlesim.server.status import code_for

    table = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    for reason in Reason:
        row = next((line for line in table.splitlines() if line.startswith(f"| `{reason.value}` |")), None)
        assert row is not None, f"{reason} missing from docs/errors.md"
        assert code_pb2.Code.Name(code_for(reason)) in row


def test_world_generate_writes_a_world_that_loads(tmp_path):
    result = settlesim("world", "generate", "--persons", "50", "--seed", "2", str(tmp_path / "w"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote 50 people")
    assert settlesim("world", "check", str(tmp_path / "w")).returncode == 0
    again = settlesim("world", "generate", "--persons", "50", str(tmp_path / "w"))
    assert again.returncode == 2 and "is not empty" in again.stderr


@pytest.mark.parametrize("command", list(_subcommands(build_parser())), ids=" ".join)
def test_help_shows_no_escaped_percent(command):
    assert "%%" not in settlesim(*command, "--help").stdout
