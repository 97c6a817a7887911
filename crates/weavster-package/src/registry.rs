//! OCI transport (oci-client): a layout's package pushed to a registry —
//! blobs, then the manifest bytes as written (their digest is the
//! package's), then its signatures merged with those already there — and
//! pulled back into a layout with every digest checked.

use std::str::FromStr as _;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::PackageError;
use crate::oci::{Descriptor, Layout, MANIFEST, Manifest, digest};
use crate::signature::{SIGNATURE, sig_tag};

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `(user, password)`; else `~/.docker/config.json` (or `DOCKER_CONFIG`)
    /// and its credential helpers; else anonymous.
    pub basic: Option<(String, String)>,
    /// Plain HTTP (else HTTPS; a registry on `localhost`/`127.0.0.1` is
    /// plain HTTP anyway, as with cosign and docker).
    pub insecure: bool,
}

fn remote(what: &str, r: &Reference, e: OciDistributionError) -> PackageError {
    let hint = match &e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => " (credentials: --username with --password-stdin, or `docker login`)",
        OciDistributionError::RequestError(_) => {
            " (is the registry up? a plain-HTTP registry needs --insecure)"
        }
        _ => "",
    };
    PackageError::Registry(format!("{what} {r}: {e}{hint}"))
}

pub fn parse(reference: &str) -> Result<Reference, PackageError> {
    Reference::from_str(reference).map_err(|e| {
        PackageError::Registry(format!(
            "`{reference}` is not an image reference (registry/repository[:tag|@sha256:…]): {e}"
        ))
    })
}

fn client(r: &Reference, access: &Access) -> (Client, RegistryAuth) {
    crate::install_crypto();
    let registry = r.resolve_registry().to_string();
    let host = registry
        .rsplit_once(':')
        .map_or(registry.as_str(), |(h, _)| h);
    let protocol = if access.insecure {
        ClientProtocol::Http
    } else if matches!(host, "localhost" | "127.0.0.1" | "[::1]") {
        // As cosign and docker do: a registry on this machine may be plain HTTP.
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        ..Default::default()
    });
    let auth = match &access.basic {
        Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
        None => match docker_credential::get_credential(r.resolve_registry()) {
            Ok(docker_credential::DockerCredential::UsernamePassword(u, p)) => {
                RegistryAuth::Basic(u, p)
            }
            Ok(docker_credential::DockerCredential::IdentityToken(t)) => RegistryAuth::Bearer(t),
            Err(_) => RegistryAuth::Anonymous,
        },
    };
    (client, auth)
}

fn at(r: &Reference, tag: &str) -> Reference {
    Reference::with_tag(
        r.registry().to_string(),
        r.repository().to_string(),
        tag.to_string(),
    )
}

fn at_digest(r: &Reference, d: &str) -> Reference {
    Reference::with_digest(
        r.registry().to_string(),
        r.repository().to_string(),
        d.to_string(),
    )
}

async fn push_blobs(
    c: &Client,
    r: &Reference,
    layout: &Layout,
    blobs: &[&Descriptor],
) -> Result<(), PackageError> {
    for d in blobs {
        let bytes = layout.get(d)?;
        c.push_blob(r, bytes, &d.digest)
            .await
            .map_err(|e| remote("pushing a blob to", r, e))?;
    }
    Ok(())
}

/// The manifest at `r` if there is one (`None` when the registry says it
/// is not there).
async fn manifest_at(
    c: &Client,
    r: &Reference,
    auth: &RegistryAuth,
) -> Result<Option<(Vec<u8>, String)>, PackageError> {
    match c.pull_manifest_raw(r, auth, &[MANIFEST]).await {
        Ok((bytes, d)) => {
            let computed = digest(&bytes);
            if d != computed {
                return Err(PackageError::Tampered(format!(
                    "{r}: the registry's manifest digest {d} is not its bytes' {computed}"
                )));
            }
            Ok(Some((bytes.to_vec(), computed)))
        }
        Err(OciDistributionError::ImageManifestNotFoundError(_)) => Ok(None),
        Err(OciDistributionError::RegistryError { envelope, .. })
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                )
            }) =>
        {
            Ok(None)
        }
        Err(OciDistributionError::ServerError { code: 404, .. }) => Ok(None),
        Err(e) => Err(remote("reading", r, e)),
    }
}

/// Pushed: the package's `repository@digest` and its signatures there.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub reference: String,
    pub digest: String,
    pub signatures: usize,
}

/// Pushes the package tagged `tag` in `layout` (or its only one) to
/// `reference` (`registry/repository:tag`), then its signatures, merged
/// with those the registry already has for that digest.
pub async fn push(
    layout: &Layout,
    tag: Option<&str>,
    reference: &str,
    access: &Access,
) -> Result<Pushed, PackageError> {
    let r = parse(reference)?;
    let (c, auth) = client(&r, access);
    let (desc, bytes, manifest) = layout.manifest(tag)?;
    c.auth(&r, &auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(|e| remote("signing in to", &r, e))?;
    let mut blobs: Vec<&Descriptor> = vec![&manifest.config];
    blobs.extend(manifest.layers.iter());
    push_blobs(&c, &r, layout, &blobs).await?;
    let content_type = reqwest::header::HeaderValue::from_static(MANIFEST);
    let target = if r.tag().is_some() || r.digest().is_none() {
        at(&r, r.tag().unwrap_or("latest"))
    } else {
        at_digest(&r, &desc.digest)
    };
    c.push_manifest_raw(&target, bytes.clone(), content_type.clone())
        .await
        .map_err(|e| remote("pushing the manifest to", &target, e))?;
    // Signatures: ours added to the registry's, none dropped.
    let mut signatures = 0;
    let st = sig_tag(&desc.digest);
    if layout.has_tag(&st)? {
        let (_, _, local) = layout.manifest(Some(&st))?;
        let sig_ref = at(&r, &st);
        let mut layers: Vec<Descriptor> = Vec::new();
        if let Some((remote_bytes, _)) = manifest_at(&c, &sig_ref, &auth).await? {
            let m: Manifest = serde_json::from_slice(&remote_bytes)
                .map_err(|e| PackageError::Invalid(format!("{sig_ref}: {e}")))?;
            layers = m.layers;
        }
        let same = |a: &Descriptor, b: &Descriptor| {
            a.digest == b.digest && a.annotations.get(SIGNATURE) == b.annotations.get(SIGNATURE)
        };
        let mut added = Vec::new();
        for l in &local.layers {
            if !layers.iter().any(|x| same(x, l)) {
                added.push(l);
                layers.push(l.clone());
            }
        }
        signatures = layers.len();
        if !added.is_empty() {
            push_blobs(&c, &r, layout, &added).await?;
            let merged = crate::signature::sig_manifest(layout, layers)?;
            let m: Manifest = serde_json::from_slice(&merged)
                .map_err(|e| PackageError::Invalid(e.to_string()))?;
            push_blobs(&c, &r, layout, &[&m.config]).await?;
            c.push_manifest_raw(&sig_ref, merged, content_type)
                .await
                .map_err(|e| remote("pushing the signatures to", &sig_ref, e))?;
        }
    }
    Ok(Pushed {
        reference: format!("{}/{}@{}", r.registry(), r.repository(), desc.digest),
        digest: desc.digest,
        signatures,
    })
}

/// Pulled: the digest and the tag it has in the layout.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub digest: String,
    pub tag: String,
    pub signatures: usize,
}

async fn pull_blob(
    c: &Client,
    r: &Reference,
    d: &Descriptor,
    layout: &Layout,
) -> Result<(), PackageError> {
    let mut out: Vec<u8> = Vec::new();
    let layer = oci_client::manifest::OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size as i64,
        ..Default::default()
    };
    c.pull_blob(r, &layer, &mut out)
        .await
        .map_err(|e| remote("pulling a blob of", r, e))?;
    if digest(&out) != d.digest || out.len() as u64 != d.size {
        return Err(PackageError::Tampered(format!(
            "{r}: blob {} does not match its digest",
            d.digest
        )));
    }
    layout.put(&out)?;
    Ok(())
}

/// Pulls `reference` (a tag or a digest) and its signatures into `layout`,
/// every digest checked; tagged there with the reference's tag (or
/// `latest` for a digest).
pub async fn pull(
    reference: &str,
    layout: &Layout,
    access: &Access,
) -> Result<Pulled, PackageError> {
    let r = parse(reference)?;
    let (c, auth) = client(&r, access);
    let (bytes, d) = manifest_at(&c, &r, &auth)
        .await?
        .ok_or_else(|| PackageError::Registry(format!("{r}: no such package")))?;
    if let Some(want) = r.digest()
        && want != d
    {
        return Err(PackageError::Tampered(format!("{r}: got manifest {d}")));
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| PackageError::Invalid(format!("{r}: {e}")))?;
    pull_blob(&c, &r, &manifest.config, layout).await?;
    for l in &manifest.layers {
        pull_blob(&c, &r, l, layout).await?;
    }
    let tag = r.tag().unwrap_or("latest").to_string();
    let artifact = manifest.artifact_type.clone();
    layout.tag(&bytes, &tag, artifact.as_deref())?;
    let mut signatures = 0;
    let sig_ref = at(&r, &sig_tag(&d));
    if let Some((sig_bytes, _)) = manifest_at(&c, &sig_ref, &auth).await? {
        let m: Manifest = serde_json::from_slice(&sig_bytes)
            .map_err(|e| PackageError::Invalid(format!("{sig_ref}: {e}")))?;
        pull_blob(&c, &r, &m.config, layout).await?;
        for l in &m.layers {
            pull_blob(&c, &r, l, layout).await?;
        }
        signatures = m.layers.len();
        layout.tag(&sig_bytes, &sig_tag(&d), None)?;
    }
    // What an earlier pull under this tag left behind.
    layout.collect_garbage()?;
    Ok(Pulled {
        digest: d,
        tag,
        signatures,
    })
}
