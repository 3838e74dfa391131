"""The README's two commands on a fresh clone, as a newcomer runs them: with Debian's own
Python (which refuses `pip install` outside a venv: PEP 668's externally-managed marker) and
with a plain venv activated. CI runs the same commands (`.ci/run`), so CI cannot be green while
a newcomer's run is red."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_PYTHON = Path("/usr/bin/python3")


def readme_commands() -> tuple[str, str]:
    """(the serve command, the test command): the README's first code block, comments dropped."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert block and readme.index("```sh") < readme.index("\n## "), "the two commands open the README"
    serve, test = (line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip())
    return serve, test


def _python_ok(python: Path) -> bool:
    if not python.exists():
        return False
    check = subprocess.run([str(python), "-c", "import sys; sys.exit(sys.version_info < (3, 11))"])
    return check.returncode == 0


SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def _newcomer_path(python: Path, only: bool) -> str:
    """A PATH whose first `python3` is `python`: its own directory (a venv's `bin`, as activation
    puts it first), then the system's directories; with `only`, none of these may hold another
    python3 (no /usr/local/bin/python3 beside Debian's)."""
    others = {
        str(Path(d) / "python3")
        for d in SYSTEM_DIRS
        if (Path(d) / "python3").exists() and (Path(d) / "python3").resolve() != python.resolve()
    }
    if only and others:
        pytest.skip(f"another python3 is on the system PATH: {sorted(others)}")
    return os.pathsep.join(dict.fromkeys([str(python.parent), *SYSTEM_DIRS]))


def _fresh_clone(tmp_path: Path) -> Path:
    """A `git clone` of this working tree's HEAD (committed work only)."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    clone = tmp_path / "clone"
    for command in (["git", "clone", "-q", "--no-checkout", str(ROOT), str(clone)],
                    ["git", "-C", str(clone), "checkout", "-q", "--detach", head]):  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    return clone


def _serve_and_check_health(clone: Path, env: dict[str, str], serve: str, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"  # pip and the server write to stderr: a file, not a pipe that may fill
    command = f"{serve} --port 0 --db {shlex.quote(str(tmp_path / 'ledger.db'))}"
    with log.open("w", encoding="utf-8") as stderr:
        server = subprocess.Popen(
            ["bash", "-c", command], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    try:
        assert server.stdout is not None
        deadline = time.monotonic() + 240
        port = None
        for line in iter(server.stdout.readline, ""):
            if match := re.search(r"serving on [\d.]+:(\d+)", line):
                port = int(match.group(1))
                break
            if time.monotonic() > deadline:
                break
        if port is None:
            server.kill()
            pytest.fail(
                f"`{command}` exited with {server.wait()} before serving:\n"
                + log.read_text(encoding="utf-8")[-3000:]
            )
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=20, wait_for_ready=True
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(30)


@pytest.mark.slow
@pytest.mark.timeout(900)  # two installs and a pytest run: a minute each here, more on a busy machine
@pytest.mark.parametrize("python", ["debian", "venv"])
def test_readme_commands_work_on_a_fresh_clone(python, tmp_path):
    """A fresh `git clone` of HEAD, a PATH whose only python3 is Debian's /usr/bin/python3
    (externally managed) or a plain venv's (as if activated); then the README's serve command,
    with `--port 0 --db TMP` added so it runs beside other servers, must answer health SERVING,
    and the README's test command must bootstrap and pass. Running the whole suite from inside the
    suite is not sensible, so the test command gets a small selection passed through to pytest:
    a test that needs the installed package and a server, and the README/CI check. pip's download
    cache (HOME unchanged) keeps both installs to seconds."""
    if python == "debian":
        if not _python_ok(DEBIAN_PYTHON):
            pytest.skip(f"{DEBIAN_PYTHON} is missing or older than 3.11 on this machine")
        base = DEBIAN_PYTHON
    else:
        venv = tmp_path / "plain-venv"
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        base = venv / "bin" / "python3"
    clone = _fresh_clone(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "PYENV"))}
    env["PATH"] = _newcomer_path(base, only=python == "debian")
    if python == "venv":
        env["VIRTUAL_ENV"] = str(tmp_path / "plain-venv")
    serve, test = readme_commands()

    _serve_and_check_health(clone, env, serve, tmp_path)

    selection = [
        "tests/test_cli.py::test_port_in_use_is_one_clear_line",
        "tests/test_packaging.py::test_ci_runs_exactly_the_readme_commands",
    ]
    result = subprocess.run(
        ["bash", "-c", f"{test} -q -p no:cacheprovider {' '.join(selection)}"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout, result.stdout[-3000:]


FAKE_PYTHON_WITHOUT_ENSUREPIP = """#!/bin/sh
# Debian's python3 without the python3-venv package: no ensurepip, so `-m venv` fails.
if [ "$1" = "-c" ] && [ "$2" = "import ensurepip" ]; then exit 1; fi
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  echo "The virtual environment was not created successfully because ensurepip is not available." >&2
  exit 1
fi
exec {python} "$@"
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
@pytest.mark.skipif(not _python_ok(DEBIAN_PYTHON), reason=f"{DEBIAN_PYTHON} is missing or older than 3.11")
def test_without_python3_venv_the_scripts_say_in_one_line_what_to_install():
    """A Python that cannot make a venv (Debian without python3-venv), run by a user who is not
    root (so apt-get is not tried): scripts/serve and scripts/test stop at once with one line
    naming the package. As root they apt-get it, as CI does."""
    nobody = 65534
    work = Path(tempfile.mkdtemp(prefix="settlesim-no-venv-"))
    try:
        (work / "bin").mkdir()
        (work / "bin" / "python3").write_text(FAKE_PYTHON_WITHOUT_ENSUREPIP.format(python=DEBIAN_PYTHON))
        (work / "bin" / "python3").chmod(0o755)
        for script in ("venv.sh", "serve", "test"):
            (work / "scripts").mkdir(exist_ok=True)
            shutil.copy2(ROOT / "scripts" / script, work / "scripts" / script)
        shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")
        os.chmod(work, 0o755)
        subprocess.run(["chown", "-R", f"{nobody}:{nobody}", str(work)], check=True)
        env = {"HOME": str(work), "PATH": os.pathsep.join([str(work / "bin"), *SYSTEM_DIRS])}
        version = subprocess.run(
            [str(DEBIAN_PYTHON), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        for script in ("scripts/serve", "scripts/test"):
            result = subprocess.run(
                ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups", script],
                cwd=work, env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert result.returncode == 1, result.stdout + result.stderr
            last = result.stderr.strip().splitlines()[-1]
            assert last == (
                f"{script}: {work / 'bin' / 'python3'} cannot make a venv: install python{version}-venv "
                f"(apt-get install python{version}-venv) and run again"
            ), result.stderr
            assert not (work / ".venv").exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)
