#!/usr/bin/python3
"""cosign's key format, implemented independently of Weavster (Python's
hashlib scrypt, PyNaCl's secretbox, `cryptography`), as
`cosign generate-key-pair` writes it (go-securesystemslib `encrypted`):

    cosign_key.py generate PREFIX PASSWORD   writes PREFIX.key and PREFIX.pub
    cosign_key.py decrypt KEY PASSWORD       prints the public key PEM of KEY

The private key is PEM `ENCRYPTED SIGSTORE PRIVATE KEY` around JSON
{"kdf": {"name": "scrypt", "params": {"N", "r", "p"}, "salt"},
 "cipher": {"name": "nacl/secretbox", "nonce"}, "ciphertext"}
(bytes base64), the plaintext the PKCS#8 DER of an ECDSA P-256 key."""
import base64
import hashlib
import json
import os
import sys

import nacl.secret
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

LABEL = "ENCRYPTED SIGSTORE PRIVATE KEY"


def box_key(password, salt, n, r, p):
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=32, maxmem=256 * 1024 * 1024)


def pem(label, data):
    b = base64.b64encode(data).decode()
    lines = [b[i:i + 64] for i in range(0, len(b), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def generate(prefix, password):
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    salt = os.urandom(32)
    nonce = os.urandom(24)
    # cosign's default scrypt cost.
    n, r, p = 32768, 8, 1
    sealed = nacl.secret.SecretBox(box_key(password, salt, n, r, p)).encrypt(der, nonce).ciphertext
    body = {
        "kdf": {"name": "scrypt", "params": {"N": n, "r": r, "p": p},
                "salt": base64.b64encode(salt).decode()},
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(sealed).decode(),
    }
    open(prefix + ".key", "w").write(pem(LABEL, json.dumps(body).encode()))
    open(prefix + ".pub", "wb").write(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def decrypt(path, password):
    text = open(path).read()
    label = text.split("-----BEGIN ", 1)[1].split("-----", 1)[0]
    assert label in (LABEL, "ENCRYPTED COSIGN PRIVATE KEY"), label
    b64 = "".join(text.split("-----")[2].split())
    body = json.loads(base64.b64decode(b64))
    assert body["kdf"]["name"] == "scrypt" and body["cipher"]["name"] == "nacl/secretbox"
    prm = body["kdf"]["params"]
    secret = box_key(password, base64.b64decode(body["kdf"]["salt"]), prm["N"], prm["r"], prm["p"])
    der = nacl.secret.SecretBox(secret).decrypt(base64.b64decode(body["ciphertext"]),
                                                base64.b64decode(body["cipher"]["nonce"]))
    key = serialization.load_der_private_key(der, password=None)
    assert isinstance(key.curve, ec.SECP256R1)
    sys.stdout.write(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())


if __name__ == "__main__":
    cmd, arg, password = sys.argv[1], sys.argv[2], sys.argv[3].encode()
    generate(arg, password) if cmd == "generate" else decrypt(arg, password)
