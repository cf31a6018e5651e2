"""A throwaway PKI for the TLS tests, made with the openssl command line:
a CA, a server certificate for 127.0.0.1 and a client certificate it signed,
plus an unrelated key and an encrypted copy of the server key."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_key: Path
    encrypted_key: Path


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(cwd: Path, name: str, usage: str, san: str) -> None:
    (cwd / f"{name}.ext").write_text(
        f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
        f"subjectAltName={san}\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    _openssl(cwd, "req", "-new", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN=cntrace-test-{name}")
    _openssl(cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem")


def make_pki(cwd: Path) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command (apt-get install openssl)")
    _openssl(cwd, "req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=cntrace-test-ca")
    _issue(cwd, "server", "serverAuth", "IP:127.0.0.1,DNS:localhost")
    _issue(cwd, "client", "clientAuth", "DNS:prometheus")
    _openssl(cwd, "genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-out", "other.key")
    _openssl(cwd, "pkey", "-in", "server.key", "-aes128", "-passout", "pass:secret",
             "-out", "encrypted.key")
    return Pki(cwd, cwd / "ca.pem", cwd / "server.pem", cwd / "server.key",
               cwd / "client.pem", cwd / "client.key", cwd / "other.key", cwd / "encrypted.key")
