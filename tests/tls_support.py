"""Certificates for TLS tests, made with openssl for the test only (the `pki` fixture in conftest.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

# A new P-256 key, unencrypted, for each certificate; valid two days (a test run is shorter).
NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
DAYS = ("-days", "2")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(cwd: Path, name: str) -> None:
    """<name>.key/.crt: a self-signed certificate authority."""
    openssl(
        "req",
        "-x509",
        *NEW_KEY,
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        *DAYS,
        "-subj",
        f"/CN={name}",
        cwd=cwd,
    )


def issue(cwd: Path, name: str, subject_alt_name: str | None) -> None:
    """<name>.key/.crt signed by the test CA in cwd (ca.crt, ca.key)."""
    openssl("req", *NEW_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=cwd)
    extra = []
    if subject_alt_name:
        (cwd / f"{name}.ext").write_text(f"subjectAltName={subject_alt_name}\n")
        extra = ["-extfile", f"{name}.ext"]
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}.crt",
        *DAYS,
        *extra,
        cwd=cwd,
    )


def make_pki(cwd: Path) -> Path:
    """In `cwd`: two CAs (ca, other-ca) and, signed by ca, a server certificate for 127.0.0.1 and localhost,
    one for another host name (wrong-name) and a client certificate; each as <name>.crt and <name>.key."""
    cwd.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        make_ca(cwd, ca)
    issue(cwd, "server", "IP:127.0.0.1,DNS:localhost")
    issue(cwd, "wrong-name", "DNS:elsewhere.invalid")
    issue(cwd, "client", None)
    return cwd
