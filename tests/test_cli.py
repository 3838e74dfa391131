"""The command line: help with examples everywhere, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("bench", "--persons", "0"), "--persons must be 1 to 21,367,800"),  # was a traceback
        (("bench", "--persons", "-5"), "--persons must be 1 to 21,367,800"),  # was a traceback
        (("bench", "--persons", "30000000"), "--persons must be 1 to 21,367,800"),
        (("bench", "--processes", "0"), "--processes: must be at least 1, not 0"),  # ran one process
        (("bench", "--warmup", "-1"), "--warmup: must be 0 seconds or more, not -1"),  # ran with none
        (("world", "generate", "--persons", "0", "OUT"), "--persons must be 1 to 21,367,800"),
        (("serve", "--journal-keep", "-1"), "--journal-keep: must be 0 or more, not -1"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else "",
)
def test_a_bad_number_is_one_clear_line_before_anything_runs(args, said, tmp_path):
    """Each refused before a world is generated or a server started (the bench's took a run, or
    a traceback, before session 18)."""
    result = settlesim(*(str(tmp_path / "w") if arg == "OUT" else arg for arg in args), timeout=30)
    assert result.returncode == 2, result.stderr
    assert said in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr


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


# --- arguments checked before anything starts: one line naming the argument and what is wrong --


def _one_line_error(result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "fifty"])
def test_serve_refuses_a_port_outside_0_to_65535(port, tmp_path):
    line = _one_line_error(settlesim("serve", "--port", port, "--db", str(tmp_path / "x.db"), timeout=30))
    assert "--port" in line and "0-65535" in line and port in line, line
    assert not (tmp_path / "x.db").exists()  # refused before the ledger was opened


@pytest.mark.parametrize(
    ("target", "what"),
    [
        ("127.0.0.1", "no port"),
        ("http://127.0.0.1:50051", "no scheme"),
        ("grpc://localhost:50051", "no scheme"),
        ("127.0.0.1:99999", "1-65535"),
        ("127.0.0.1:0", "1-65535"),
        (":50051", "no host"),
        ("127.0.0.1:port", "port"),
        ("::1", "no port"),
        ("[::1]", "no port"),
    ],
)
@pytest.mark.parametrize("command", ["conformance", "replay"])
def test_a_bad_target_says_what_is_wrong_with_the_address(command, target, what):
    args = [command, *(["clients/conformance/cases/seeds"] if command == "replay" else []), "--target", target]
    line = _one_line_error(settlesim(*args, timeout=30))
    assert "--target" in line and target in line and what in line and "cannot reach" not in line, line


@pytest.mark.parametrize("target", ["127.0.0.1:50051", "localhost:1", "[::1]:50051", "his-test.example:443"])
def test_a_good_target_is_taken_as_given(target):
    from settlesim.arguments import target_address

    assert target_address(target) == target


def test_serve_refuses_zero_workers(tmp_path):
    line = _one_line_error(settlesim("serve", "--port", "0", "--workers", "0", "--db", str(tmp_path / "x.db")))
    assert "--workers" in line and "at least 1" in line and "max_workers" not in line, line


@pytest.mark.parametrize("flag", ["--tls-cert", "--tls-key", "--client-ca"])
def test_serve_names_a_missing_tls_file(flag, tmp_path):
    pki = {name: tmp_path / f"{name}.pem" for name in ("cert", "key", "ca")}
    for path in pki.values():
        path.write_text("not checked before the missing one\n")
    missing = tmp_path / "missing.pem"
    files = {"--tls-cert": pki["cert"], "--tls-key": pki["key"], "--client-ca": pki["ca"], flag: missing}
    args = [part for name, path in files.items() for part in (name, str(path))]
    line = _one_line_error(settlesim("serve", "--port", "0", "--db", str(tmp_path / "x.db"), *args))
    assert f"{flag} {missing}" in line and "no such file" in line and "Errno" not in line, line


def _ledger_check_with(env_changes: dict[str, str | None], home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home)}
    for name in ("SETTLESIM_DB", "XDG_DATA_HOME", *env_changes):
        env.pop(name, None)
    env.update({k: v for k, v in env_changes.items() if v is not None})
    return subprocess.run(
        [sys.executable, "-m", "settlesim", "ledger", "check"], capture_output=True, text=True, timeout=60, env=env
    )


def test_ledger_check_defaults_to_the_ledger_serve_uses(server_process, tmp_path):
    """No --db: $SETTLESIM_DB, else serve's default path (~/.local/share/settlesim/settlesim.db)."""
    served = server_process(tmp_path / "by-env.db")
    served.stop()
    by_env = _ledger_check_with({"SETTLESIM_DB": str(tmp_path / "by-env.db")}, tmp_path / "home")
    assert by_env.returncode == 0 and f"ledger {tmp_path / 'by-env.db'}: OK" in by_env.stdout, by_env.stderr
    default = tmp_path / "home" / ".local" / "share" / "settlesim" / "settlesim.db"
    missing = _ledger_check_with({}, tmp_path / "home")
    assert f"no ledger at {default}" in _one_line_error(missing)
    default.parent.mkdir(parents=True)
    (tmp_path / "by-env.db").rename(default)
    found = _ledger_check_with({}, tmp_path / "home")
    assert found.returncode == 0 and f"ledger {default}: OK" in found.stdout, found.stderr
