"""A throw-away CA with server and client certificates, made with the openssl CLI at test time.

The `cryptography` package is not a dependency of flexbridge; the openssl binary is on every
Debian system (package openssl).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

MISSING = "the openssl command is not installed: `apt-get install openssl`"


def find_openssl() -> str | None:
    return shutil.which("openssl")


def _run(openssl: str, *args: str, cwd: Path) -> None:
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class TestPki:
    __test__ = False

    directory: Path
    ca_cert: Path
    ca_key: Path
    openssl: str

    def issue(self, name: str, common_name: str, *, server: bool = False) -> tuple[Path, Path]:
        """A key and a certificate signed by the CA (server: SAN for 127.0.0.1/localhost)."""
        key = self.directory / f"{name}.key"
        csr = self.directory / f"{name}.csr"
        cert = self.directory / f"{name}.pem"
        ext = self.directory / f"{name}.ext"
        # Full leaf extensions: strict verifiers (Python 3.13's VERIFY_X509_STRICT) need them.
        common = (
            "basicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid,issuer\n"
            "keyUsage=critical,digitalSignature\n"
        )
        if server:
            ext.write_text(
                common + "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
            )
        else:
            ext.write_text(common + "extendedKeyUsage=clientAuth\n")
        _run(
            self.openssl,
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            f"/CN={common_name}",
            cwd=self.directory,
        )
        _run(
            self.openssl,
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(self.ca_cert),
            "-CAkey",
            str(self.ca_key),
            "-CAcreateserial",
            "-out",
            str(cert),
            "-days",
            "2",
            "-extfile",
            str(ext),
            cwd=self.directory,
        )
        return cert, key

    def client_context(self, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_cert))
        if cert is not None and key is not None:
            context.load_cert_chain(cert, key)
        return context


def make_pki(directory: Path, openssl: str) -> TestPki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = directory / "ca.key"
    ca_cert = directory / "ca.pem"
    _run(
        openssl,
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_cert),
        "-days",
        "2",
        "-subj",
        "/CN=flexbridge test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    return TestPki(directory, ca_cert, ca_key, openssl)


@dataclass(frozen=True)
class Certificates:
    """A CA with one server certificate (127.0.0.1/localhost) and one client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(directory: Path) -> Certificates:
    openssl = find_openssl()
    if openssl is None:
        raise RuntimeError(MISSING)
    pki = make_pki(directory, openssl)
    server_cert, server_key = pki.issue("server", "server", server=True)
    client_cert, client_key = pki.issue("client", "client")
    return Certificates(pki.ca_cert, server_cert, server_key, client_cert, client_key)
