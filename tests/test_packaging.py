"""What a user installs: one `settlesim` namespace (no top-level `server` or
`clients`), with the bundled world, the protos and the conformance cases."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_only_the_settlesim_namespace(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("settlesim-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"settlesim"}
    assert "settlesim/server/worlds/default/policies/630000.yaml" in names
    assert "settlesim/v1/settlement_service.proto" in names
    assert "settlesim/v1/settlement_service_pb2.pyi" in names
    assert "settlesim/server/rules/settlement.py" in names


def test_serve_with_a_bad_world_fails_with_one_line(tmp_path):
    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "diseases.yaml").write_text("- {code: M1}\n")
    result = subprocess.run(
        [sys.executable, "-m", "settlesim", "serve", "--port", "0", "--world", str(tmp_path / "world"),
         "--db", str(tmp_path / "x.db")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "settlesim: error: diseases.yaml: [0]: missing required key 'name'"
    ]
