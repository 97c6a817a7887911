#!/usr/bin/env python3
"""An independent check of a cosign "simple signing" signature in an OCI
image layout, with the `cryptography` package (not Weavster's code):

    verify_cosign.py LAYOUT_DIR TAG PUBLIC_KEY_PEM

Reads the manifest tagged TAG, computes its digest, reads the manifest
tagged sha256-<hex>.sig, and for each signature layer checks the layer's
digest, that the payload names exactly that manifest digest, and the
ECDSA P-256 / SHA-256 signature (DER, base64 in the annotation
dev.cosignproject.cosign/signature) against the key. Exit 0 if one
verifies; prints what it checked."""
import base64
import hashlib
import json
import os
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def blob(layout, digest):
    algo, hexd = digest.split(":", 1)
    assert algo == "sha256", digest
    data = open(os.path.join(layout, "blobs", "sha256", hexd), "rb").read()
    if hashlib.sha256(data).hexdigest() != hexd:
        sys.exit(f"blob {digest} does not match its digest")
    return data


def by_tag(layout, tag):
    index = json.load(open(os.path.join(layout, "index.json")))
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return m["digest"], blob(layout, m["digest"])
    return None, None


def main():
    layout, tag, key_path = sys.argv[1:4]
    key = serialization.load_pem_public_key(open(key_path, "rb").read())
    assert isinstance(key.curve, ec.SECP256R1), "not a P-256 key"
    digest, _ = by_tag(layout, tag)
    if digest is None:
        sys.exit(f"no manifest tagged {tag}")
    _, sig_manifest = by_tag(layout, digest.replace(":", "-") + ".sig")
    if sig_manifest is None:
        sys.exit(f"{digest}: no signature manifest")
    for layer in json.loads(sig_manifest)["layers"]:
        if layer["mediaType"] != "application/vnd.dev.cosign.simplesigning.v1+json":
            continue
        payload = blob(layout, layer["digest"])
        claims = json.loads(payload)
        if claims["critical"]["image"]["docker-manifest-digest"] != digest:
            continue
        if claims["critical"]["type"] != "cosign container image signature":
            continue
        sig = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
        try:
            key.verify(sig, payload, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        print(f"verified {digest} for {claims['critical']['identity']['docker-reference']}")
        return 0
    sys.exit(f"{digest}: no signature by this key")


if __name__ == "__main__":
    sys.exit(main())
