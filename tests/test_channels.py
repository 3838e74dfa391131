"""clients/channels.py: what a --target names becomes one gRPC target (a list of
replicas an ipv4:/ipv6: target with round_robin), and the command line takes the
same forms. The calls actually reaching both replicas: tests/test_replicas.py."""

from __future__ import annotations

import argparse
import json

import pytest
from conftest import settlesim
from settlesim.clients.channels import ROUND_ROBIN, GrpcTarget, TargetListError, _options, resolve

from settlesim.arguments import target_address


def test_one_server_is_the_target_as_given():
    assert resolve("his-test.example:443") == GrpcTarget("his-test.example:443", "his-test.example:443", False)


@pytest.mark.parametrize(
    ("given", "uri", "authority"),
    [
        ("127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2", "127.0.0.1:1"),
        ("localhost:1, localhost:2", "ipv4:127.0.0.1:1,127.0.0.1:2", "localhost:1"),
        ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2", "[::1]:1"),
        ("127.0.0.1:1,127.0.0.1:1", "ipv4:127.0.0.1:1", "127.0.0.1:1"),  # one address once
        ("dns:///localhost:50051", "dns:///localhost:50051", "localhost:50051"),
        ("dns:localhost:50051", "dns:localhost:50051", "localhost:50051"),
        ("ipv4:10.0.0.1:5,10.0.0.2:5", "ipv4:10.0.0.1:5,10.0.0.2:5", "10.0.0.1:5"),
    ],
)
def test_replicas_become_one_balanced_target(given, uri, authority):
    assert resolve(given) == GrpcTarget(uri, authority, True)


def test_a_balanced_channel_is_round_robin_and_called_by_one_name():
    options = dict(_options(resolve("127.0.0.1:1,127.0.0.1:2"), tls=True, server_name=None, options=()))
    assert json.loads(options["grpc.service_config"]) == {"loadBalancingConfig": [{"round_robin": {}}]}
    assert options["grpc.service_config"] == ROUND_ROBIN
    assert options["grpc.default_authority"] == "127.0.0.1:1"
    named = dict(_options(resolve("127.0.0.1:1,127.0.0.1:2"), tls=True, server_name="platform.example", options=()))
    assert named["grpc.default_authority"] == "platform.example:1"
    assert named["grpc.ssl_target_name_override"] == "platform.example"
    assert _options(resolve("127.0.0.1:1"), tls=False, server_name=None, options=()) == []


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("127.0.0.1:1,[::1]:2", "no address family in common"),
        ("no-such-host.invalid:1,127.0.0.1:2", "cannot resolve 'no-such-host.invalid'"),
    ],
)
def test_a_list_that_cannot_be_one_target_says_why(given, why):
    with pytest.raises(TargetListError, match=why):
        resolve(given)


@pytest.mark.parametrize(
    "target",
    ["a:1,b:2", "10.0.0.1:50051,10.0.0.2:50051", "dns:///replicas.example:50051", "ipv4:10.0.0.1:1,10.0.0.2:2",
     "ipv6:[::1]:1,[::1]:2"],
)  # fmt: skip
def test_the_command_line_takes_replicas(target):
    assert target_address(target) == target


@pytest.mark.parametrize(
    ("target", "what"),
    [("a:1,", "empty entry"), ("a:1,b", "no port"), ("ipv4:10.0.0.1", "no port"), ("dns:///replicas", "no port"),
     ("a:1,http://b:2", "no scheme")],
)  # fmt: skip
def test_the_command_line_refuses_a_bad_list(target, what):
    with pytest.raises(argparse.ArgumentTypeError, match=what):
        target_address(target)


def test_conformance_names_a_replica_that_does_not_resolve():
    done = settlesim("conformance", "--target", "127.0.0.1:1,no-such-host.invalid:2", timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot resolve 'no-such-host.invalid'" in lines[0], done.stderr


@pytest.mark.parametrize(
    ("target", "refused"),
    [("127.0.0.1:1,localhost:2", False), ("dns:///localhost:1", False), ("ipv4:127.0.0.1:1,127.0.0.2:2", False),
     ("127.0.0.1:1,his-test.example:2", True), ("dns:///his-test.example:1", True)],
)  # fmt: skip
def test_tokens_go_in_clear_text_only_when_every_replica_is_on_this_machine(tmp_path, target, refused):
    from settlesim.clients.replay.command import ReplayError, ReplayOptions, credentials_of

    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("H11010500001: dev-token\n")
    options = ReplayOptions(target=target, tokens=tokens)
    if refused:
        with pytest.raises(ReplayError, match="clear text"):
            credentials_of(options)
    else:
        assert credentials_of(options) is not None


def test_his_check_refuses_a_list_of_replicas():
    """A check run arms faults in one server and grades that server's journal (docs/scaling.md)."""
    done = settlesim("his-check", "finish", "20261201090115-5f32aa40", "--target", "127.0.0.1:1,127.0.0.1:2")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "grades one server" in lines[0] and "127.0.0.1:1,127.0.0.1:2" in lines[0], lines
