"""Bundle signatures: ed25519 over the exact bytes of ``manifest.json`` (which holds the sha256 of every file, so
one signature covers the whole bundle). The app pins the publisher's 32-byte public key in its config; a bundle
whose ``manifest.sig`` does not verify is never loaded. Needs ``cryptography`` (the ``[sign]`` extra), imported
only when a key is configured."""

from __future__ import annotations

SIGNATURE_FILE = "manifest.sig"


class SignatureError(RuntimeError):
    """A signature cannot be checked or made (``read_bundle`` turns it into a BundleError of kind bad_signature)."""


def _ed25519():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise SignatureError("signature checks need the [sign] extra: pip install 'edge-rerank[sign]'") from exc
    return ed25519, InvalidSignature


def verify_manifest(manifest: bytes, signature: bytes, public_key: bytes) -> None:
    """Raise BundleError unless `signature` is the publisher's ed25519 signature of `manifest`."""
    ed25519, invalid = _ed25519()
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public_key).verify(signature, manifest)
    except (invalid, ValueError) as exc:
        raise SignatureError("bundle signature does not verify with the pinned key") from exc


def sign_manifest(manifest: bytes, private_key: bytes) -> bytes:
    """The publisher side (cloud / CI): 64-byte signature with a 32-byte ed25519 private key."""
    ed25519, _ = _ed25519()
    return ed25519.Ed25519PrivateKey.from_private_bytes(private_key).sign(manifest)


def generate_keypair() -> tuple[bytes, bytes]:
    """(private, public) raw 32-byte keys."""
    from cryptography.hazmat.primitives import serialization

    ed25519, _ = _ed25519()
    key = ed25519.Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    return (key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()),
            key.public_key().public_bytes(raw, serialization.PublicFormat.Raw))
