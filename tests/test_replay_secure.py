"""`settlesim replay` / `settlesim conformance` against a secured server: bearer
tokens per institution (serve --auth token), TLS, and mutual TLS with a client
certificate per institution (docs/cases.md). Wrong or unusable credentials
stop the run in one line, never a traceback.

Tokens come from the world data (institutions.yaml `token`); certificates are
generated for the run (tests/pki.py)."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from conftest import settlesim
from pki import PlatformPki, authority
from rich.console import Console
from settlesim.clients.replay.cases import load_cases
from settlesim.clients.replay.command import ReplayError, ReplayOptions, conformance_cases_dir, replay
from settlesim.clients.workload import institution_tokens
from settlesim.server.app import RunningServer, ServerConfig, start
from settlesim.server.world_loader import load_world

SUITE = conformance_cases_dir()
SEEDS = SUITE / "seeds"
CANCER = "H11010500001"
FUWAI = "H11010200002"
# In the bundled world these institutions have no token (and H99999999999 does
# not exist): with --auth token nobody can act for them, so their cases are skipped.
TOKENLESS_CASES = {
    "malformed-unknown-codes",
    "registration-institution-not-designated",
    "registration-institution-not-connected",
}



def capture() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=400, highlight=False, color_system=None), out


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> PlatformPki:
    return PlatformPki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def make(**settings: object) -> RunningServer:
        db = tmp_path / f"ledger{len(started)}.db"
        settings.setdefault("allow_sessions", True)  # replay needs sandboxes: `serve --auth ... --sessions`
        started.append(start(ServerConfig(port=0, db_path=db, max_workers=8, **settings)))
        return started[-1]

    yield make
    for running in started:
        running.stop(grace=0)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    """institution code -> token, straight from the bundled world's data."""
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump(institution_tokens(None)), encoding="utf-8")
    return path


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    return result.stderr.strip()


# --- passing runs ----------------------------------------------------------------------------


def test_conformance_against_a_token_server(platform, tokens_file, tmp_path):
    """The command CI would run against `settlesim serve --auth token`: every case
    whose hospitals have a token passes; the others are skipped, by name."""
    running = platform(auth="token")
    junit = tmp_path / "junit.xml"
    result = settlesim(
        "conformance", "--target", running.target, "--tokens", str(tokens_file), "--junit", str(junit)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    ran = len(load_cases([SUITE])) - len(TOKENLESS_CASES)
    assert f"{ran} cases: {ran} passed, 0 failed, 0 errors" in result.stdout
    skipping = next(line for line in result.stdout.splitlines() if line.startswith("skipping"))
    assert "skipping 3 cases" in skipping and "H46020000003, H46020000004, H99999999999" in skipping
    assert all(name in skipping for name in TOKENLESS_CASES)
    # The reports name the skipped cases too: JUnit <skipped/> (valid against the schema).
    import xml.etree.ElementTree as ET

    import xmlschema

    xmlschema.XMLSchema(str(Path(__file__).parent / "data" / "junit-10.xsd")).validate(str(junit))
    root = ET.parse(junit).getroot()
    skipped = {case.get("name") for case in root.iter("testcase") if case.find("skipped") is not None}
    assert skipped == set(TOKENLESS_CASES)
    assert int(root.get("tests")) == ran + len(TOKENLESS_CASES)
    assert sum(int(suite.get("skipped")) for suite in root.iter("testsuite")) == len(TOKENLESS_CASES)


def test_replay_over_tls_with_tokens(platform, certs, tokens_file):
    running = platform(auth="token", tls_cert=certs.server.cert, tls_key=certs.server.key)
    console, out = capture()
    options = ReplayOptions(target=running.target, ca=certs.ca.cert, tokens=tokens_file)
    assert replay([SUITE], options, console) == 0, out.getvalue()[-3000:]
    ran = len(load_cases([SUITE])) - len(TOKENLESS_CASES)
    assert f"{ran} cases: {ran} passed" in out.getvalue()


def test_conformance_over_mutual_tls_with_a_certificate_per_institution(platform, certs):
    """Two (and more) hospitals in one case, each with its own client
    certificate from the credentials file: with mTLS every institution of the
    world can be named by a certificate, so only the unknown institution's case
    is skipped."""
    running = platform(
        tls_cert=certs.server.cert, tls_key=certs.server.key, client_ca=certs.ca.cert, auth="mtls"
    )
    creds = certs.folder / "creds.yaml"  # a relative path is relative to the file; absolute works too
    issued = {code: certs.hospital(code) for code in load_world().institutions}
    entries = {code: {"cert": i.cert.name, "key": str(i.key)} for code, i in issued.items()}
    creds.write_text(yaml.safe_dump(entries), encoding="utf-8")
    console, out = capture()
    options = ReplayOptions(target=running.target, ca=certs.ca.cert, tokens=creds)
    assert replay([SUITE], options, console) == 0, out.getvalue()[-3000:]
    ran = len(load_cases([SUITE])) - 1
    assert f"{ran} cases: {ran} passed" in out.getvalue()
    assert "skipping 1 case: the target does not let this replay act for H99999999999" in out.getvalue()


def test_one_client_certificate_runs_that_institutions_cases(platform, certs):
    """--cert/--key alone: the cases of the institution the certificate names run,
    the others are skipped (the platform would refuse them INSTITUTION_NOT_CALLER)."""
    running = platform(
        tls_cert=certs.server.cert, tls_key=certs.server.key, client_ca=certs.ca.cert, auth="mtls"
    )
    cancer = certs.hospital(CANCER)
    console, out = capture()
    options = ReplayOptions(target=running.target, ca=certs.ca.cert, cert=cancer.cert, key=cancer.key)
    assert replay([SEEDS], options, console) == 0, out.getvalue()[-3000:]
    assert "2 cases: 2 passed" in out.getvalue() and "skipping 2 cases" in out.getvalue()


# --- refused credentials: one line -----------------------------------------------------------


def test_a_wrong_token_is_one_clear_line(platform, tokens_file):
    running = platform(auth="token")
    tokens = yaml.safe_load(tokens_file.read_text())
    tokens[CANCER] = "dev-token-wrong"
    tokens_file.write_text(yaml.safe_dump(tokens))
    error = one_line_error(settlesim("conformance", "--target", running.target, "--tokens", str(tokens_file)))
    assert f"refused the token for {CANCER} in {tokens_file}" in error
    assert "UNAUTHENTICATED CALLER_UNAUTHENTICATED: the bearer token belongs to no institution" in error


def test_another_institutions_token_is_one_clear_line(platform, tokens_file):
    running = platform(auth="token")
    tokens = yaml.safe_load(tokens_file.read_text())
    tokens[CANCER] = tokens[FUWAI]
    tokens_file.write_text(yaml.safe_dump(tokens))
    with pytest.raises(
        ReplayError, match=f"refused the token for {CANCER}.*INSTITUTION_NOT_CALLER"
    ) as caught:
        replay([SEEDS], ReplayOptions(target=running.target, tokens=tokens_file), capture()[0])
    assert "\n" not in str(caught.value)


def test_no_credentials_against_a_token_server_says_what_to_give(platform):
    running = platform(auth="token")
    error = one_line_error(settlesim("replay", str(SEEDS), "--target", running.target))
    assert "requires callers to authenticate" in error and "--tokens FILE" in error


def test_a_client_certificate_the_platform_refuses_is_one_clear_line(platform, certs):
    running = platform(
        tls_cert=certs.server.cert, tls_key=certs.server.key, client_ca=certs.ca.cert, auth="mtls"
    )
    options = ReplayOptions(
        target=running.target, ca=certs.ca.cert, cert=certs.forged.cert, key=certs.forged.key
    )
    with pytest.raises(ReplayError) as caught:
        replay([SEEDS], options, capture()[0])
    message = str(caught.value)
    assert message.startswith(f"cannot reach {running.target}: TLS handshake refused by {running.target}")
    assert "signed by the platform's CA" in message and "\n" not in message


def test_a_server_certificate_the_replay_does_not_trust_is_one_clear_line(platform, certs, tmp_path):
    running = platform(tls_cert=certs.server.cert, tls_key=certs.server.key, auth="token")
    other = authority(tmp_path, "other")
    options = ReplayOptions(target=running.target, ca=other.cert, tokens=None)
    with pytest.raises(
        ReplayError, match=r"CERTIFICATE_VERIFY_FAILED.*check that ca / --ca is the platform's CA"
    ):
        replay([SEEDS], options, capture()[0])


def test_plaintext_against_a_tls_server_hints_at_ca(platform, certs):
    running = platform(tls_cert=certs.server.cert, tls_key=certs.server.key)
    with pytest.raises(ReplayError, match=r"cannot reach .*if it serves TLS, give --ca FILE"):
        replay([SEEDS], ReplayOptions(target=running.target, connect_timeout=1), capture()[0])


# --- unusable files and options: one line, before anything is sent ----------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read credentials file"),
        ("H11010500001: [unclosed", "not valid YAML or JSON"),
        ("- H11010500001\n", "expected a mapping of institution code to token"),
        ('{"H11010500001": 123}', "H11010500001: the token must be text \\(quote it in YAML\\)"),
        ("H11010500001: {cert: a.pem}", "H11010500001: a client certificate needs its key"),
        ("H11010500001: {password: x}", "give a token, or a mapping with token and/or cert and key"),
        ("'H1101 0500001': tok", "is not an institution code"),
        ("H11010500001: {cert: missing.pem, key: missing.key}", "H11010500001: cannot read certificate"),
    ],
)
def test_a_bad_credentials_file_is_one_line(tmp_path, certs, content, expected):
    path = tmp_path / "tokens.yaml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    options = ReplayOptions(target="127.0.0.1:1", ca=certs.ca.cert, tokens=path)
    with pytest.raises(ReplayError, match=expected) as caught:
        replay([SEEDS], options, capture()[0])
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_bad_tls_options_are_one_line(tmp_path, certs, tokens_file):
    cancer = certs.hospital(CANCER)
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello")
    cases = {
        "--cert and --key go together": ReplayOptions(target="x:1", ca=certs.ca.cert, cert=cancer.cert),
        "a client certificate needs TLS: give --ca FILE": ReplayOptions(
            target="x:1", cert=cancer.cert, key=cancer.key
        ),
        f"{not_pem} is not a PEM certificate": ReplayOptions(target="x:1", ca=not_pem),
        f"{cancer.cert} is not a PEM private key": ReplayOptions(
            target="x:1", ca=certs.ca.cert, cert=cancer.cert, key=cancer.cert
        ),
        "--ca/--cert/--key/--tokens are for --target": ReplayOptions(serve=True, tokens=tokens_file),
        "--tokens would send bearer tokens in clear text to his-test:50051": ReplayOptions(
            target="his-test:50051", tokens=tokens_file
        ),
    }
    for expected, options in cases.items():
        with pytest.raises(ReplayError) as caught:
            replay([SEEDS], options, capture()[0])
        assert expected in str(caught.value), (expected, str(caught.value))
    error = one_line_error(
        settlesim("replay", str(SEEDS), "--target", "x:1", "--tokens", str(tmp_path / "none.yaml"))
    )
    assert "cannot read credentials file" in error


def test_help_shows_the_secured_target_options():
    result = settlesim("conformance", "--help")
    assert result.returncode == 0
    for option in ("--ca FILE", "--cert FILE", "--key FILE", "--tokens FILE", "--tokens tokens.yaml"):
        assert option in result.stdout
