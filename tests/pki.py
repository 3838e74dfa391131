"""Throw-away certificate authorities and certificates for the TLS tests,
generated with `cryptography` into a temporary directory (never committed)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    name: str
    cert: Path
    key_obj: ec.EllipticCurvePrivateKey
    cert_obj: x509.Certificate
    folder: Path

    def issue(self, common_name: str, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (),
              server: bool = False) -> Issued:  # fmt: skip
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            _base(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), self.cert_obj.subject)
            .public_key(key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            # Python 3.13's default TLS context verifies strictly (VERIFY_X509_STRICT): a
            # certificate a CA issued must name the CA's key, as openssl's own do.
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key_obj.public_key()), critical=False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key_obj, hashes.SHA256())
        stem = self.folder / f"{self.name}-{common_name}"
        return Issued(_write_cert(stem.with_suffix(".pem"), cert), _write_key(stem.with_suffix(".key"), key))


def authority(folder: Path, name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"settlesim test CA {name}")])
    cert = (
        _base(subject, subject)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    return Authority(name, _write_cert(folder / f"{name}-ca.pem", cert), key, cert, folder)


class PlatformPki:
    """The platform's CA with a server certificate for 127.0.0.1/localhost, the
    Cancer Hospital's client certificate, and a rogue CA with a server
    certificate and a Cancer Hospital certificate of its own (right names, wrong
    CA). `hospital(code)` issues any institution's certificate once."""

    CANCER_HOSPITAL = "H11010500001"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = authority(folder, "national")
        self.rogue = authority(folder, "rogue")
        self.server = self.ca.issue("localhost", dns=("localhost",), ips=("127.0.0.1",), server=True)
        self.rogue_server = self.rogue.issue("localhost", dns=("localhost",), ips=("127.0.0.1",), server=True)
        self.forged = self.rogue.issue(self.CANCER_HOSPITAL)
        self._hospitals: dict[str, Issued] = {}

    def hospital(self, code: str) -> Issued:
        if code not in self._hospitals:
            self._hospitals[code] = self.ca.issue(code)
        return self._hospitals[code]

    @property
    def cancer(self) -> Issued:
        return self.hospital(self.CANCER_HOSPITAL)


def _base(subject: x509.Name, issuer: x509.Name) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path
