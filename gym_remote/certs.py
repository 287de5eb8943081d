"""``gym-remote certs``: a private CA and the server and client certificates it signs, made to
pass strict verification (Python 3.13's default: SAN, AKI/SKI, key usage). Needs the ``tls``
extra (``cryptography``); serving and connecting with TLS need only Python's ``ssl``."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["CertificateFiles", "make_certificates"]

_VALID_DAYS = 365


@dataclass(frozen=True)
class CertificateFiles:
    """The PEM files :func:`make_certificates` wrote (the keys readable by their owner only)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(
    directory: str | os.PathLike[str], hosts: Sequence[str], days: int = _VALID_DAYS
) -> CertificateFiles:
    """Writes ``ca.pem``, ``server.pem`` / ``server-key.pem`` (valid for ``hosts``: names and IP
    addresses) and ``client.pem`` / ``client-key.pem`` into ``directory``. A CA already there
    (``ca.pem`` with ``ca-key.pem``) signs the new certificates, so that servers added later are
    trusted by the clients that trust it.

    Raises:
        ValueError: no hosts, or ``days`` below 1.
        ImportError: ``cryptography`` is missing; the message names the extra.
    """
    if not hosts:
        raise ValueError("name at least one host the server is reached by (--host), e.g. its DNS name or IP")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise ImportError(
            "gym-remote certs needs cryptography: pip install cryptography (the tls extra)"
        ) from None
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common_name: str) -> Any:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gym-remote"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )

    def write_key(path: Path, key: Any) -> None:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
        os.chmod(path, 0o600)  # a file that was there keeps its mode through O_CREAT

    ca_path, ca_key_path = folder / "ca.pem", folder / "ca-key.pem"
    reused = ca_path.exists() and ca_key_path.exists()
    if reused:
        ca_key: Any = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
    authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())

    def certificate(subject: Any, issuer: Any, public_key: Any, is_ca: bool) -> Any:
        """What every certificate here carries: validity, basic constraints, key usage, SKI, AKI."""
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
            .add_extension(_key_usage(x509, signs_certificates=is_ca), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(authority, critical=False)
        )

    if reused:
        ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    else:
        ca_subject = name("gym-remote CA")
        ca_cert = certificate(ca_subject, ca_subject, ca_key.public_key(), is_ca=True).sign(
            ca_key, hashes.SHA256()
        )
        write_key(ca_key_path, ca_key)
        ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue(common_name: str, usage: Any, alternative_names: list[Any]) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            certificate(name(common_name), ca_cert.subject, key.public_key(), is_ca=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        )
        return builder.sign(ca_key, hashes.SHA256()), key

    files = CertificateFiles(
        ca_path,
        folder / "server.pem",
        folder / "server-key.pem",
        folder / "client.pem",
        folder / "client-key.pem",
    )
    server_names = [_alternative_name(x509, host) for host in hosts]
    for cert_path, key_path, (cert, key) in (
        (files.server_cert, files.server_key, issue(hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, server_names)),
        (
            files.client_cert,
            files.client_key,
            issue("gym-remote client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("gym-remote-client")]),
        ),
    ):
        write_key(key_path, key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def _key_usage(x509: Any, signs_certificates: bool) -> Any:
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _alternative_name(x509: Any, host: str) -> Any:
    """An IP address SAN for an address, else a DNS name SAN."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)
