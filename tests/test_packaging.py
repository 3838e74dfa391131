"""What a user installs: one `settlesim` namespace (no top-level `server` or
`clients`), with the bundled world, the protos and the conformance cases; and that
wheel, installed on its own, serves and passes its own conformance suite."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import site
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from settlesim.clients.replay.cases import load_cases
from test_fresh_clone import readme_commands

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "clients" / "conformance" / "cases"
DEFAULT_WORLD = ROOT / "server" / "worlds" / "default"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (built,) = out.glob("settlesim-*.whl")
    return built


def _packaged(names: list[str], prefix: str, source: Path, pattern: str) -> tuple[set[str], set[str]]:
    """(files under `prefix` in the wheel, files the source tree has there), both relative."""
    in_wheel = {name.removeprefix(prefix) for name in names if name.startswith(prefix)}
    in_source = {p.relative_to(source).as_posix() for p in source.rglob(pattern) if p.is_file()}
    return {name for name in in_wheel if Path(name).match(pattern)}, in_source


def test_wheel_installs_only_the_settlesim_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"settlesim"}
    assert "settlesim/server/worlds/default/policies/630000.yaml" in names
    assert "settlesim/v1/settlement_service.proto" in names
    assert "settlesim/v1/settlement_service_pb2.pyi" in names
    assert "settlesim/server/rules/settlement.py" in names


def test_wheel_holds_every_conformance_case_and_default_world_file(wheel):
    """Exactly the source tree's files: none missing (`settlesim conformance` would silently run
    fewer cases) and none stale (a case deleted from the source but left in a build directory)."""
    names = zipfile.ZipFile(wheel).namelist()
    cases, source_cases = _packaged(names, "settlesim/clients/conformance/cases/", CASES, "*.yaml")
    assert len(source_cases) >= 8 and "seeds/qinghai-breast-cancer-beijing.yaml" in source_cases
    assert cases == source_cases
    world, source_world = _packaged(names, "settlesim/server/worlds/default/", DEFAULT_WORLD, "*.yaml")
    assert {"world.yaml", "people/cast.yaml", "catalogs/110000.yaml", "policies/630000.yaml"} <= source_world
    assert world == source_world


@pytest.mark.slow
def test_installed_wheel_serves_and_passes_its_own_conformance_suite(wheel, tmp_path):
    """The wheel alone in a fresh venv (its dependencies seen from this interpreter's
    site-packages, so no download): its `settlesim serve` and its `settlesim conformance
    --target`, with the bundled world and cases read from the installed package, not from this
    checkout. `--system-site-packages` would not do: run from a venv (as scripts/test does), it
    shows the base interpreter's site-packages, not this venv's, where the dependencies are."""
    venv = tmp_path / "venv"
    made = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True, timeout=60
    )
    assert made.returncode == 0, made.stderr
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python, settlesim = bin_dir / "python", bin_dir / "settlesim"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    nested_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert nested_site.returncode == 0, nested_site.stderr
    # A .pth file of plain paths: this interpreter's site-packages come after the venv's own, and
    # their .pth files (this checkout's editable install among them) are not run.
    ours = [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    (Path(nested_site.stdout.strip()) / "dependencies-of-the-running-suite.pth").write_text(
        "\n".join(dict.fromkeys(ours)) + "\n", encoding="utf-8"
    )
    # This interpreter's pip, run by the venv's interpreter, installs into the venv. --ignore-installed:
    # this checkout is itself installed (editable) in the site-packages the venv sees.
    pip = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed"]
    install = subprocess.run(
        [*pip, str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert install.returncode == 0, install.stderr
    found = subprocess.run(
        [str(python), "-c", "import settlesim.clients.replay.command as c; print(c.__file__); "
         "print(c.conformance_cases_dir())"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    where = found.stdout.splitlines()
    assert len(where) == 2, where
    assert all(Path(line).resolve().is_relative_to(venv.resolve()) for line in where), where

    log = tmp_path / "server.log"  # the server logs a line per call to stderr: a file, not a pipe
    with log.open("w", encoding="utf-8") as stderr:
        server = subprocess.Popen(
            [str(settlesim), "serve", "--port", "0", "--db", str(tmp_path / "ledger.db")],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            cwd=tmp_path,
        )
    try:
        assert server.stdout is not None
        for line in iter(server.stdout.readline, ""):  # "settlesim serving on 127.0.0.1:PORT (db ...)"
            if match := re.search(r"serving on [\d.]+:(\d+)", line):
                port = int(match.group(1))
                break
        else:
            pytest.fail(f"server exited with {server.wait()}: {log.read_text(encoding='utf-8')[-2000:]}")
        result = subprocess.run(
            [str(settlesim), "conformance", "--target", f"127.0.0.1:{port}", "--jobs", "2"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
        cases = len(load_cases([CASES]))
        assert f"{cases} cases: {cases} passed, 0 failed, 0 errors" in result.stdout
    finally:
        server.terminate()
        server.wait(20)


def test_serve_with_a_bad_world_fails_with_one_line(tmp_path):
    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "regions.yaml").write_text("- {code: '110000', name: Beijing}\n")
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


def test_ci_runs_exactly_the_readme_commands():
    """The README opens with two commands, the stub and the test suite; CI runs both as written
    (the serve command, output redirected and in the background, then the test command as the
    last command of .ci/run), so the two cannot drift. tests/test_fresh_clone.py runs them."""
    serve_command, test_command = readme_commands()
    ci_commands = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert ci_commands[-1] == test_command
    # `VAR=value ... <serve command> [--port 0] > log 2>&1 &`: the README's command in the background,
    # its ledger a throw-away file; --port 0 only where something else holds the default port.
    serve_line = re.compile(r"(\w+=\S+ )*" + re.escape(serve_command) + r"( --port 0)? > .*&")
    serve_lines = [line for line in ci_commands if serve_line.fullmatch(line)]
    assert len(serve_lines) == 2 and not serve_lines[0].count("--port"), ci_commands


def _distribution(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_installed_module_imports_only_core_dependencies():
    """What `pip install -e .` (no extras) gives must run every subcommand: no module of the
    installed package (settlesim, server, clients, the protos) may import a package that only
    an extra brings (`settlesim bench` once died on psutil, a test extra). Locust stays in
    loadtests/, which is not installed."""
    core = {
        _distribution(re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0])
        for dep in tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    }
    providers = importlib.metadata.packages_distributions()
    outside: set[str] = set()
    for folder in ("settlesim", "server", "clients", "protos/settlesim/v1"):
        for source in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for top in {module.split(".")[0] for module in modules}:
                    if top in sys.stdlib_module_names or top in {"settlesim", "__future__"}:
                        continue
                    if not core & {_distribution(d) for d in providers.get(top, [])}:
                        outside.add(f"{source.relative_to(ROOT)} imports {top} ({providers.get(top, '?')})")
    assert not outside, sorted(outside)
