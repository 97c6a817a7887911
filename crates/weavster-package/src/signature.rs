//! cosign-compatible keys and signatures ("simple signing", the `.sig` tag
//! format): ECDSA P-256 over SHA-256 of a JSON payload naming the manifest
//! digest; private keys as cosign writes them (`ENCRYPTED SIGSTORE PRIVATE
//! KEY`: scrypt, then NaCl secretbox over PKCS#8 DER), public keys as SPKI
//! `PUBLIC KEY` PEM.
//!
//! In a layout, a package's signatures are a manifest tagged
//! `sha256-<hex>.sig` with one layer per signature (the payload, its
//! signature in an annotation); signing again adds a layer and keeps every
//! other signer's.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use crypto_secretbox::aead::{Aead as _, KeyInit as _};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{
    DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
    LineEnding,
};
use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};

use crate::PackageError;
use crate::oci::{Descriptor, Layout, Manifest};

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE: &str = "dev.cosignproject.cosign/signature";
const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const PRIVATE: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// What cosign before 2.x called its keys.
const PRIVATE_OLD: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// scrypt's N for new keys (cosign's).
const LOG_N: u8 = 16;

#[derive(Serialize, Deserialize)]
struct Encrypted {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: KdfParams,
    salt: String,
}

#[derive(Serialize, Deserialize)]
#[allow(non_snake_case)]
struct KdfParams {
    N: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

fn key_error(m: impl std::fmt::Display) -> PackageError {
    PackageError::Key(m.to_string())
}

fn box_key(
    password: &[u8],
    salt: &[u8],
    log_n: u8,
    r: u32,
    p: u32,
) -> Result<[u8; 32], PackageError> {
    let params = scrypt::Params::new(log_n, r, p, 32).map_err(key_error)?;
    let mut key = [0u8; 32];
    scrypt::scrypt(password, salt, &params, &mut key).map_err(key_error)?;
    Ok(key)
}

/// A new key pair: (private key PEM encrypted with `password`, public key
/// PEM), as `cosign generate-key-pair` writes them.
pub fn generate(password: &[u8]) -> Result<(String, String), PackageError> {
    let key = SigningKey::random(&mut OsRng);
    let der = key.to_pkcs8_der().map_err(key_error)?;
    let mut salt = [0u8; 32];
    OsRng.fill_bytes(&mut salt);
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut nonce);
    let secret = box_key(password, &salt, LOG_N, 8, 1)?;
    let sealed = crypto_secretbox::XSalsa20Poly1305::new(&secret.into())
        .encrypt(&nonce.into(), der.as_bytes())
        .map_err(key_error)?;
    let body = Encrypted {
        kdf: Kdf {
            name: "scrypt".into(),
            params: KdfParams {
                N: 1 << LOG_N,
                r: 8,
                p: 1,
            },
            salt: B64.encode(salt),
        },
        cipher: Cipher {
            name: "nacl/secretbox".into(),
            nonce: B64.encode(nonce),
        },
        ciphertext: B64.encode(sealed),
    };
    let json = serde_json::to_vec(&body).map_err(key_error)?;
    let private = pem(PRIVATE, &json);
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(key_error)?;
    Ok((private, public))
}

fn pem(label: &str, bytes: &[u8]) -> String {
    let b = B64.encode(bytes);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The label and body of the first PEM block of `text`.
fn unpem(text: &str) -> Option<(String, Vec<u8>)> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + 11..];
    let label_end = rest.find("-----")?;
    let label = rest[..label_end].to_string();
    let body_start = label_end + 5;
    let end = rest.find(&format!("-----END {label}-----"))?;
    let body: String = rest[body_start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    Some((label, B64.decode(body).ok()?))
}

/// A cosign private key (either label), decrypted with `password`.
pub fn read_private(text: &str, password: &[u8]) -> Result<SigningKey, PackageError> {
    let (label, body) = unpem(text).ok_or_else(|| key_error("not a PEM private key"))?;
    if label != PRIVATE && label != PRIVATE_OLD {
        return Err(key_error(format!(
            "a `{label}` PEM block: expected an encrypted cosign key (`{PRIVATE}`), as `weavster keygen` or `cosign generate-key-pair` write"
        )));
    }
    let e: Encrypted =
        serde_json::from_slice(&body).map_err(|e| key_error(format!("key body: {e}")))?;
    if e.kdf.name != "scrypt" || e.cipher.name != "nacl/secretbox" {
        return Err(key_error(format!(
            "unsupported key encryption {} / {}",
            e.kdf.name, e.cipher.name
        )));
    }
    let n = e.kdf.params.N;
    if !n.is_power_of_two() || n < 2 {
        return Err(key_error(format!("scrypt N {n} is not a power of two")));
    }
    let salt = B64.decode(&e.kdf.salt).map_err(key_error)?;
    let nonce = B64.decode(&e.cipher.nonce).map_err(key_error)?;
    let nonce: [u8; 24] = nonce
        .try_into()
        .map_err(|_| key_error("the nonce is not 24 bytes"))?;
    let sealed = B64.decode(&e.ciphertext).map_err(key_error)?;
    let secret = box_key(
        password,
        &salt,
        n.trailing_zeros() as u8,
        e.kdf.params.r,
        e.kdf.params.p,
    )?;
    let der = crypto_secretbox::XSalsa20Poly1305::new(&secret.into())
        .decrypt(&nonce.into(), sealed.as_slice())
        .map_err(|_| key_error("wrong password (COSIGN_PASSWORD) or a damaged key"))?;
    SigningKey::from_pkcs8_der(&der).map_err(|e| key_error(format!("not an ECDSA P-256 key: {e}")))
}

/// A public key (`PUBLIC KEY` PEM, SPKI).
pub fn read_public(text: &str) -> Result<VerifyingKey, PackageError> {
    VerifyingKey::from_public_key_pem(text.trim())
        .map_err(|e| key_error(format!("not an ECDSA P-256 public key PEM: {e}")))
}

/// The simple-signing payload cosign signs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payload {
    pub critical: Critical,
    pub optional: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Critical {
    pub identity: Identity,
    pub image: Image,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    #[serde(rename = "docker-reference")]
    pub docker_reference: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    #[serde(rename = "docker-manifest-digest")]
    pub docker_manifest_digest: String,
}

/// The tag of `digest`'s signatures (`sha256-<hex>.sig`).
pub fn sig_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// The signature manifest (cosign's shape: an image config listing the
/// payloads, one layer per signature).
pub(crate) fn sig_manifest(
    layout: &Layout,
    layers: Vec<Descriptor>,
) -> Result<Vec<u8>, PackageError> {
    let config = serde_json::json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>()},
        "config": {}
    });
    let config = serde_json::to_vec(&config).map_err(key_error)?;
    layout.put(&config)?;
    let m = Manifest {
        schema_version: 2,
        media_type: crate::oci::MANIFEST.into(),
        artifact_type: None,
        config: Descriptor::of(IMAGE_CONFIG, &config),
        layers,
        annotations: BTreeMap::new(),
    };
    serde_json::to_vec(&m).map_err(key_error)
}

/// The signature layers already in `layout` for `digest`.
pub fn signatures(layout: &Layout, digest: &str) -> Result<Vec<Descriptor>, PackageError> {
    match layout.manifest(Some(&sig_tag(digest))) {
        Ok((_, _, m)) => Ok(m.layers),
        Err(PackageError::Invalid(_)) if !layout.has_tag(&sig_tag(digest))? => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Signs the manifest `digest` in `layout` as pushed to `reference`
/// (`registry/repository`), adding to its signatures; `optional` goes in
/// the payload's `optional`. Returns how many signatures it now has.
pub fn sign(
    layout: &Layout,
    digest: &str,
    reference: &str,
    key: &SigningKey,
    optional: BTreeMap<String, serde_json::Value>,
) -> Result<usize, PackageError> {
    let payload = Payload {
        critical: Critical {
            identity: Identity {
                docker_reference: reference.into(),
            },
            image: Image {
                docker_manifest_digest: digest.into(),
            },
            kind: "cosign container image signature".into(),
        },
        optional: (!optional.is_empty()).then_some(optional),
    };
    let bytes = serde_json::to_vec(&payload).map_err(key_error)?;
    let signature: Signature = key.sign(&bytes);
    let encoded = B64.encode(signature.to_der().as_bytes());
    let mut layers = signatures(layout, digest)?;
    let me = key.verifying_key();
    // One signature per key and payload: signing twice changes nothing.
    let mut kept = Vec::new();
    for l in layers.drain(..) {
        let same = layout.get(&l).ok().is_some_and(|p| p == bytes)
            && l.annotations
                .get(SIGNATURE)
                .is_some_and(|s| verifies(me, &bytes, s));
        if !same {
            kept.push(l);
        }
    }
    layout.put(&bytes)?;
    kept.push(Descriptor::of(SIMPLE_SIGNING, &bytes).annotate(SIGNATURE, &encoded));
    let n = kept.len();
    let manifest = sig_manifest(layout, kept)?;
    layout.tag(&manifest, &sig_tag(digest), None)?;
    Ok(n)
}

fn verifies(key: &VerifyingKey, payload: &[u8], signature_b64: &str) -> bool {
    let Ok(der) = B64.decode(signature_b64.trim()) else {
        return false;
    };
    let Ok(sig) = Signature::from_der(&der) else {
        return false;
    };
    key.verify(payload, &sig).is_ok()
}

/// A verified signature.
#[derive(Debug, Clone)]
pub struct Verified {
    pub reference: String,
    pub optional: Option<BTreeMap<String, serde_json::Value>>,
    /// Signatures present (by any key).
    pub signatures: usize,
}

/// Checks that a signature by `key` covers exactly the manifest `digest`
/// (its blobs are checked by [`crate::open`]): [`PackageError::Unsigned`]
/// when there is no signature for this digest, [`PackageError::WrongKey`]
/// when none of them is by `key`, [`PackageError::Tampered`] when one by
/// `key` names another digest or a payload does not match its digest.
pub fn verify(layout: &Layout, digest: &str, key: &VerifyingKey) -> Result<Verified, PackageError> {
    let layers = signatures(layout, digest)?;
    if layers.is_empty() {
        let others: Vec<String> = layout
            .tags()?
            .into_iter()
            .filter(|t| t.ends_with(".sig"))
            .collect();
        return Err(PackageError::Unsigned(if others.is_empty() {
            format!("{digest} has no signature")
        } else {
            format!(
                "{digest} has no signature; the layout holds signatures of other manifests ({}): was the manifest changed after signing?",
                others.join(", ")
            )
        }));
    }
    let mut by_key_elsewhere = None;
    for l in &layers {
        let payload = layout.get(l)?;
        let Some(sig) = l.annotations.get(SIGNATURE) else {
            continue;
        };
        if !verifies(key, &payload, sig) {
            continue;
        }
        let p: Payload = serde_json::from_slice(&payload)
            .map_err(|e| PackageError::Tampered(format!("signature payload: {e}")))?;
        if p.critical.image.docker_manifest_digest == digest {
            return Ok(Verified {
                reference: p.critical.identity.docker_reference,
                optional: p.optional,
                signatures: layers.len(),
            });
        }
        by_key_elsewhere = Some(p.critical.image.docker_manifest_digest);
    }
    Err(match by_key_elsewhere {
        Some(other) => PackageError::Tampered(format!(
            "the signature by this key is for {other}, not {digest}"
        )),
        None => PackageError::WrongKey(format!(
            "{} signature{} of {digest}, none by this key",
            layers.len(),
            if layers.len() == 1 { "" } else { "s" }
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_a_wrong_password_is_refused() {
        let (private, public) = generate(b"pw").expect("generate");
        assert!(private.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
        let key = read_private(&private, b"pw").expect("read");
        let public = read_public(&public).expect("public");
        assert_eq!(key.verifying_key(), &public);
        let err = read_private(&private, b"nope").expect_err("wrong password");
        assert!(err.to_string().contains("wrong password"), "{err}");
    }
}
