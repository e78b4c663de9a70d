"""Certificates for TLS tests, made with openssl for the test only (the `pki` fixture in conftest.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(cwd: Path, name: str, subject_alt_name: str | None) -> None:
    """<name>.key/.crt signed by the test CA in cwd."""
    openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=cwd,
    )
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
        "-days",
        "2",
        *extra,
        cwd=cwd,
    )


def make_pki(cwd: Path) -> Path:
    """In `cwd`: two CAs (ca, other-ca) and, signed by ca, a server certificate for 127.0.0.1 and localhost,
    one for another host name (wrong-name) and a client certificate; each as <name>.crt and <name>.key."""
    cwd.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        openssl(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.crt",
            "-days",
            "2",
            "-subj",
            f"/CN={ca}",
            cwd=cwd,
        )
    issue(cwd, "server", "IP:127.0.0.1,DNS:localhost")
    issue(cwd, "wrong-name", "DNS:elsewhere.invalid")
    issue(cwd, "client", None)
    return cwd
