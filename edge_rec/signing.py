"""Optional bundle signatures: Ed25519 over the exact bytes of ``manifest.json``.

Checksums prove that a bundle's files match its manifest; anyone who can write the bundle can rewrite
both. A signature proves the manifest (and through its sha256 list, every file) came from the holder of
a private key. The signature lives beside the manifest in ``manifest.sig`` (JSON: algorithm, the
public key's sha256 fingerprint, base64 signature); like the manifest it is not among the files the
manifest lists. Ed25519 comes from ``cryptography`` (``pip install edge-rec[sign]``); nothing here is
a hand-written scheme.

    edge-rec sign --generate-key keys/release          # keys/release.pem (private) + keys/release.pub.pem
    edge-rec export ... --sign-key keys/release.pem    # or: edge-rec sign BUNDLE --key keys/release.pem
    edge-rec verify BUNDLE --public-key keys/release.pub.pem
    Reranker.open(BUNDLE, public_key="keys/release.pub.pem")
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from edge_rec._requires import requires
from edge_rec.errors import BundleError, ConfigError

SIGNATURE = "manifest.sig"
ALGORITHM = "ed25519"


def _serialization() -> Any:
    return requires("cryptography.hazmat.primitives.serialization")


def generate_key(stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``STEM.pem`` (private, PKCS#8, owner-only) and ``STEM.pub.pem``."""
    ed = requires("cryptography.hazmat.primitives.asymmetric.ed25519")
    ser = _serialization()
    stem = Path(stem)
    priv_path, pub_path = stem.with_name(stem.name + ".pem"), stem.with_name(stem.name + ".pub.pem")
    for p in (priv_path, pub_path):
        if p.exists():
            raise ConfigError(f"{p} exists; choose another name (a key is never overwritten).")
    stem.parent.mkdir(parents=True, exist_ok=True)
    key = ed.Ed25519PrivateKey.generate()
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    return priv_path, pub_path


def _load_private(path: str | os.PathLike[str]) -> Any:
    ed = requires("cryptography.hazmat.primitives.asymmetric.ed25519")
    try:
        key = _serialization().load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a readable unencrypted PEM private key ({exc}).") from exc
    if not isinstance(key, ed.Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}; bundles are signed with Ed25519 keys "
                          "(`edge-rec sign --generate-key STEM`).")
    return key


def load_public_key(key: Any) -> Any:
    """An Ed25519 public key from a PEM file path, PEM bytes, or a key object."""
    ed = requires("cryptography.hazmat.primitives.asymmetric.ed25519")
    if isinstance(key, ed.Ed25519PublicKey):
        return key
    try:
        pem = key if isinstance(key, bytes) else Path(key).read_bytes()
        pub = _serialization().load_pem_public_key(pem)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"public key {key!r} is not a readable PEM public key ({exc}).") from exc
    if not isinstance(pub, ed.Ed25519PublicKey):
        raise ConfigError(f"public key {key!r} is a {type(pub).__name__}, not Ed25519.")
    return pub


def fingerprint(pub: Any) -> str:
    """sha256 of the raw 32-byte public key, hex."""
    ser = _serialization()
    return hashlib.sha256(pub.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)).hexdigest()


def sign_bundle(root: str | os.PathLike[str], private_key: str | os.PathLike[str]) -> Path:
    """Sign ``root/manifest.json`` and write ``root/manifest.sig``; returns its path."""
    root = Path(root)
    key = _load_private(private_key)
    manifest = (root / "manifest.json").read_bytes()
    sig = {"algorithm": ALGORITHM, "signed_file": "manifest.json", "public_key_sha256": fingerprint(key.public_key()),
           "signature": base64.b64encode(key.sign(manifest)).decode()}
    out = root / SIGNATURE
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(sig, indent=2) + "\n")
    os.replace(tmp, out)
    return out


def verify_signature(root: str | os.PathLike[str], public_key: Any) -> dict[str, Any]:
    """Check ``manifest.sig`` against ``public_key``; a missing, malformed or wrong signature is a
    :class:`BundleError`. Returns {algorithm, public_key_sha256}."""
    root = Path(root)
    pub = load_public_key(public_key)
    path = root / SIGNATURE
    if not path.is_file():
        raise BundleError(f"{root} is not signed (no {SIGNATURE}) and a public key was given: refusing it. "
                          "Sign it with `edge-rec sign BUNDLE --key PRIVATE.pem`.")
    try:
        sig = json.loads(path.read_bytes()[:1 << 16])
        raw = base64.b64decode(sig["signature"], validate=True)
        algo = sig["algorithm"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path} is not a valid signature file ({exc}).") from exc
    if algo != ALGORITHM:
        raise BundleError(f"{path}: algorithm {algo!r} is not {ALGORITHM!r}.")
    invalid = requires("cryptography.exceptions").InvalidSignature
    try:
        pub.verify(raw, (root / "manifest.json").read_bytes())
    except invalid as exc:
        who = "another key" if sig.get("public_key_sha256") != fingerprint(pub) else "this key, but the manifest changed since"
        raise BundleError(f"{root}: the signature does not verify with the given public key (signed with {who}); "
                          "the bundle was altered or is not from the expected publisher.") from exc
    return {"algorithm": ALGORITHM, "public_key_sha256": fingerprint(pub)}
