"""Throwaway certificates for the TLS tests, made with the ``openssl`` commands that
docs/deployment.md ("TLS") gives operators, so the runbook's commands are the ones tested.

EC P-256 keys as in the docs (fast to generate), leaf extensions that also pass OpenSSL's strict
checks (newer Pythons turn ``VERIFY_X509_STRICT`` on by default).
"""

from __future__ import annotations

import os
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

NODE_EXT = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature\n"
    "extendedKeyUsage=serverAuth,clientAuth\n"
    "subjectAltName={san}\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid\n"
)
CLIENT_EXT = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature\n"
    "extendedKeyUsage=clientAuth\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid\n"
)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class Leaf:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CA:
    directory: Path
    name: str

    @property
    def pem(self) -> Path:
        return self.directory / f"{self.name}.pem"

    @property
    def key(self) -> Path:
        return self.directory / f"{self.name}.key"

    @classmethod
    def create(cls, directory: Path, name: str) -> CA:
        directory.mkdir(parents=True, exist_ok=True)
        ca = cls(directory, name)
        _openssl(
            *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
            *("-days", "3650", "-keyout", ca.key.name, "-out", ca.pem.name),
            *("-subj", f"/CN=raftsync {name}"),
            *("-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
            cwd=directory,
        )
        return ca

    def issue(self, name: str, *, san: str | None = "IP:127.0.0.1") -> Leaf:
        """A leaf ``name.pem``/``name.key`` signed by this CA: a node certificate (server and
        client use, naming ``san``) or, with ``san=None``, a client-only certificate."""
        d = self.directory
        (d / f"{name}.ext").write_text(NODE_EXT.format(san=san) if san else CLIENT_EXT)
        _openssl(
            *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
            *("-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}"),
            cwd=d,
        )
        _openssl(
            *("x509", "-req", "-in", f"{name}.csr", "-CA", self.pem.name, "-CAkey", self.key.name),
            *("-CAcreateserial", "-days", "397", "-out", f"{name}.pem"),
            *("-extfile", f"{name}.ext"),
            cwd=d,
        )
        return Leaf(d / f"{name}.pem", d / f"{name}.key")


def install(source: Path, target: Path) -> None:
    """Copy ``source`` over ``target`` atomically (write aside, then rename), as an operator
    should: a node reloading mid-copy must never read half a file."""
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(source.read_bytes())
    os.replace(tmp, target)


def bundle(target: Path, *cas: CA) -> None:
    """``target`` holds exactly these CAs' certificates (a trust bundle), replaced atomically."""
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(b"".join(ca.pem.read_bytes() for ca in cas))
    os.replace(tmp, target)


def client_context(ca_bundle: Path | None, leaf: Leaf | None) -> ssl.SSLContext:
    """A client's context as ``coordination.node.runtime.ssl_contexts`` builds it (trust
    ``ca_bundle``, present ``leaf``), with the strict X.509 checks newer Pythons default to."""
    ctx = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if leaf is not None:
        ctx.load_cert_chain(leaf.cert, leaf.key)
    return ctx
