"""The server tells which world it serves (settlesim.v1.PlatformService: name, a digest of the
world's files, version), and replay says up front when its cases need another world instead of
reporting "12 passed, 49 failed" with no hint (issue 9 item 14)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import threading
from pathlib import Path

import grpc
import pytest
from conftest import settlesim
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rich.console import Console
from settlesim.clients.replay import reports
from settlesim.clients.replay.cases import load_cases
from settlesim.clients.replay.command import ReplayError, ReplayOptions, conformance_cases_dir, replay
from settlesim.clients.replay.runner import run_cases
from settlesim.server.app import ServerConfig, start
from settlesim.server.ledger.sqlite import SqliteLedger as Ledger
from settlesim.server.service import SettlementService, add_to_server
from settlesim.server.world_loader import default_world_dir, load_world
from settlesim.v1 import platform_pb2, platform_pb2_grpc

from settlesim import __version__

SUITE = conformance_cases_dir()
QINGHAI_SEED = SUITE / "seeds" / "qinghai-breast-cancer-beijing.yaml"


def capture() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, highlight=False, color_system=None), out


def sha256sum_digest(root: Path) -> str:
    """The documented recipe (docs/world-format.md), written out without the loader: SHA-256 of
    the `sha256sum` lines of every world file, sorted by path."""
    data = ("world.yaml", "regions.yaml", "diseases.yaml", "institutions.yaml", "people.yaml")
    folders = ("regions", "diseases", "institutions", "people", "policies", "catalogs")
    files = [p for p in root.iterdir() if p.name in data]
    files += [p for name in folders if (root / name).is_dir() for p in (root / name).iterdir()]
    paths = sorted(p.relative_to(root).as_posix() for p in files)
    lines = "".join(f"{hashlib.sha256((root / path).read_bytes()).hexdigest()}  {path}\n" for path in paths)
    return hashlib.sha256(lines.encode()).hexdigest()


def renamed_world(tmp_path: Path, name: str) -> Path:
    world = Path(shutil.copytree(default_world_dir(), tmp_path / "world"))
    text = (world / "world.yaml").read_text(encoding="utf-8")
    (world / "world.yaml").write_text(text.replace("name: default\n", f"name: {name}\n", 1), encoding="utf-8")
    return world


# --- the digest ----------------------------------------------------------------------------------


def test_the_digest_is_the_documented_recipe_and_does_not_depend_on_the_folder(tmp_path):
    digest = load_world().digest
    assert len(digest) == 64 and digest == sha256sum_digest(default_world_dir())
    copy = Path(shutil.copytree(default_world_dir(), tmp_path / "elsewhere"))
    (copy / "README.md").write_text("not world data\n", encoding="utf-8")
    assert load_world(copy).digest == digest  # another path, another machine: same files, same digest


def test_one_changed_byte_changes_the_digest(tmp_path):
    copy = Path(shutil.copytree(default_world_dir(), tmp_path / "world"))
    policy = copy / "policies" / "630000.yaml"
    policy.write_text(policy.read_text(encoding="utf-8").replace('ratio: "100%"', 'ratio: "90%"', 1))
    assert load_world(copy).digest not in {"", load_world().digest}
    assert load_world(copy).digest == sha256sum_digest(copy)


# --- the service ---------------------------------------------------------------------------------


def test_the_server_describes_its_world_and_reflection_lists_it(server):
    with grpc.insecure_channel(server.target) as channel:
        answer = platform_pb2_grpc.PlatformServiceStub(channel).DescribePlatform(
            platform_pb2.DescribePlatformRequest(), timeout=5
        )
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert (answer.world_name, answer.world_digest, answer.version) == ("default", load_world().digest, __version__)
    assert "settlesim.v1.PlatformService" in names


def test_the_world_needs_no_identity_under_auth_token(tmp_path):
    running = start(ServerConfig(port=0, db_path=tmp_path / "l.db", auth="token", max_workers=2))
    try:
        with grpc.insecure_channel(running.target) as channel:
            answer = platform_pb2_grpc.PlatformServiceStub(channel).DescribePlatform(
                platform_pb2.DescribePlatformRequest(), timeout=5
            )
        assert answer.world_name == "default"
    finally:
        running.stop(grace=0)


# --- replay asks first ---------------------------------------------------------------------------


@pytest.fixture
def other_world_server(tmp_path):
    running = start(
        ServerConfig(port=0, db_path=tmp_path / "o.db", world_dir=renamed_world(tmp_path, "hainan-pilot"),
                     max_workers=4)
    )  # fmt: skip
    yield running
    running.stop(grace=1)


def test_replay_refuses_cases_of_another_world_before_running_any(other_world_server):
    console, out = capture()
    with pytest.raises(ReplayError) as caught:
        replay([SUITE], ReplayOptions(target=other_world_server.target), console)
    message = str(caught.value)
    cases = len(load_cases([SUITE]))
    assert "serves world 'hainan-pilot'" in message and f"need world 'default' ({cases} cases)" in message
    assert "--any-world" in message and "replaying" not in out.getvalue()


def test_any_world_runs_them_with_a_warning(other_world_server):
    console, out = capture()
    assert replay([QINGHAI_SEED], ReplayOptions(target=other_world_server.target, any_world=True), console) == 0
    assert "--any-world:" in out.getvalue() and "hainan-pilot" in out.getvalue()


def test_the_command_exits_2_naming_both_worlds(server_process, tmp_path):
    process = server_process(tmp_path / "o.db", "--world", str(renamed_world(tmp_path, "hainan-pilot")))
    result = settlesim("conformance", "--target", process.target)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "hainan-pilot" in result.stderr and "'default'" in result.stderr and "--any-world" in result.stderr


def test_a_target_that_does_not_say_its_world_is_noted_and_run(tmp_path):
    """Another implementation of the contract without PlatformService: the real settlement
    service on a bare gRPC server."""
    world = load_world()
    ledger = Ledger(tmp_path / "bare.db")
    loop = asyncio.new_event_loop()  # the servicer is asynchronous: a bare grpc.aio server on a loop of its own
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def serve() -> tuple[grpc.aio.Server, int]:
        bare = grpc.aio.server()
        add_to_server(SettlementService(world, ledger), bare)
        bound = bare.add_insecure_port("127.0.0.1:0")
        await bare.start()
        return bare, bound

    bare, port = asyncio.run_coroutine_threadsafe(serve(), loop).result()
    try:
        console, out = capture()
        assert replay([QINGHAI_SEED], ReplayOptions(target=f"127.0.0.1:{port}"), console) == 0
        assert "does not say which world it serves" in out.getvalue()
        run = run_cases(load_cases([QINGHAI_SEED]), f"127.0.0.1:{port}")
        assert run.world is None and run.passed
    finally:
        asyncio.run_coroutine_threadsafe(bare.stop(0), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        ledger.close()


def test_the_reference_world_is_named_in_the_run_and_its_json_report(server, tmp_path):
    run = run_cases(load_cases([QINGHAI_SEED]), server.target)
    assert run.world is not None and run.world.name == "default" and run.world.digest == load_world().digest
    reports.write_json(run, tmp_path / "r.json")
    written = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["target_world"]
    assert written == {"name": "default", "digest": load_world().digest, "version": __version__}
