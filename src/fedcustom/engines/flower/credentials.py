"""TLS certificates and SuperNode keys for a Flower deployment, made with `cryptography`.

`make_certificates` writes a private certificate authority (ca.crt, ca.key) and a SuperLink
certificate it signed (server.pem, server.key) naming the hosts and addresses clients use to reach
the SuperLink. Clients and `flwr run` trust ca.crt. Keep ca.key off the servers.

`make_node_key` writes a SuperNode's key pair in the OpenSSH format Flower reads (NIST P-384): the
private key stays on the SuperNode (`--auth-key`), the public key is registered with the SuperLink
(`fedcustom flower register`), which then admits only registered SuperNodes.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedcustom.core.io import atomic_write


def subject_alternative_names(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_certificates(folder: Path, hosts: list[str], days: int = 365) -> list[Path]:
    """A CA and a SuperLink certificate valid for `hosts` (DNS names or IP addresses)."""
    now = datetime.datetime.now(datetime.UTC)
    validity = {"not_valid_before": now - datetime.timedelta(minutes=5),
                "not_valid_after": now + datetime.timedelta(days=days)}
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedcustom federation CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(validity["not_valid_before"]).not_valid_after(validity["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA384()))
    key = ec.generate_private_key(ec.SECP384R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(validity["not_valid_before"]).not_valid_after(validity["not_valid_after"])
              .add_extension(subject_alternative_names(hosts), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA384()))
    files = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM), "ca.key": pem_key(ca_key),
             "server.pem": server.public_bytes(serialization.Encoding.PEM), "server.key": pem_key(key)}
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write(folder / name, data)
    for name in ("ca.key", "server.key"):
        (folder / name).chmod(0o600)
    return [folder / name for name in files]


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """(private key, public key) of one SuperNode, OpenSSH format."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / name, private)
    (folder / name).chmod(0o600)
    atomic_write(folder / f"{name}.pub", public + b"\n")
    return folder / name, folder / f"{name}.pub"
