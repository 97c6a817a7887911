//! OCI image layout on disk (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`): content-addressed blobs, every digest checked
//! when read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::PackageError;

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The annotation naming a manifest in `index.json` (its tag).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What points at a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: digest(bytes),
            size: bytes.len() as u64,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }
    }

    pub fn annotate(mut self, key: &str, value: &str) -> Descriptor {
        self.annotations.insert(key.into(), value.into());
        self
    }
}

/// An image manifest (the fields Weavster writes and reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

/// An image layout directory.
pub struct Layout {
    pub dir: PathBuf,
}

fn io(path: &Path, e: std::io::Error) -> PackageError {
    PackageError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Layout {
        Layout { dir: dir.into() }
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, PackageError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| PackageError::Invalid(format!("`{digest}` is not a sha256 digest")))?;
        Ok(self.dir.join("blobs/sha256").join(hex))
    }

    /// Stores `bytes` under their digest (kept if already there).
    pub fn put(&self, bytes: &[u8]) -> Result<String, PackageError> {
        let d = digest(bytes);
        let path = self.blob_path(&d)?;
        if std::fs::read(&path).ok().is_some_and(|b| digest(&b) == d) {
            return Ok(d);
        }
        let parent = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        // Written whole under another name, then renamed: never a torn blob.
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        Ok(d)
    }

    /// The blob `d` of `size` bytes, its digest checked.
    pub fn get(&self, d: &Descriptor) -> Result<Vec<u8>, PackageError> {
        let path = self.blob_path(&d.digest)?;
        let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
        if bytes.len() as u64 != d.size || digest(&bytes) != d.digest {
            return Err(PackageError::Tampered(format!(
                "blob {} ({}) does not match its digest",
                d.digest, d.media_type
            )));
        }
        Ok(bytes)
    }

    fn index(&self) -> Result<Index, PackageError> {
        let path = self.dir.join("index.json");
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| PackageError::Invalid(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index {
                schema_version: 2,
                media_type: Some(INDEX.into()),
                manifests: Vec::new(),
            }),
            Err(e) => Err(io(&path, e)),
        }
    }

    /// Stores a manifest's bytes (as given: their digest is the
    /// artifact's) and names it `tag` in `index.json`, replacing what had
    /// that name.
    pub fn tag(
        &self,
        manifest: &[u8],
        tag: &str,
        artifact_type: Option<&str>,
    ) -> Result<Descriptor, PackageError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let layout = self.dir.join("oci-layout");
        std::fs::write(&layout, "{\"imageLayoutVersion\":\"1.0.0\"}")
            .map_err(|e| io(&layout, e))?;
        self.put(manifest)?;
        let mut desc = Descriptor::of(MANIFEST, manifest).annotate(REF_NAME, tag);
        desc.artifact_type = artifact_type.map(str::to_string);
        let mut index = self.index()?;
        index
            .manifests
            .retain(|m| m.annotations.get(REF_NAME).map(String::as_str) != Some(tag));
        index.manifests.push(desc.clone());
        index.manifests.sort_by(|a, b| {
            a.annotations
                .get(REF_NAME)
                .cmp(&b.annotations.get(REF_NAME))
        });
        let path = self.dir.join("index.json");
        let text =
            serde_json::to_vec_pretty(&index).map_err(|e| PackageError::Invalid(e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
        Ok(desc)
    }

    /// Removes the blobs no manifest of `index.json` reaches (an older
    /// package's, replaced under its tag); their count.
    pub fn collect_garbage(&self) -> Result<usize, PackageError> {
        let mut index = self.index()?;
        // Signatures of manifests no longer here go with them.
        let present: std::collections::BTreeSet<String> = index
            .manifests
            .iter()
            .map(|m| m.digest.replacen(':', "-", 1))
            .collect();
        let before = index.manifests.len();
        index.manifests.retain(|m| {
            m.annotations
                .get(REF_NAME)
                .and_then(|t| t.strip_suffix(".sig"))
                .is_none_or(|signed| present.contains(signed))
        });
        if index.manifests.len() != before {
            let path = self.dir.join("index.json");
            let text = serde_json::to_vec_pretty(&index)
                .map_err(|e| PackageError::Invalid(e.to_string()))?;
            std::fs::write(&path, text).map_err(|e| io(&path, e))?;
        }
        let mut keep = std::collections::BTreeSet::new();
        for m in &index.manifests {
            keep.insert(m.digest.clone());
            let bytes = self.get(m)?;
            let manifest: Manifest = serde_json::from_slice(&bytes)
                .map_err(|e| PackageError::Invalid(format!("manifest {}: {e}", m.digest)))?;
            keep.insert(manifest.config.digest.clone());
            keep.extend(manifest.layers.iter().map(|l| l.digest.clone()));
        }
        let dir = self.dir.join("blobs/sha256");
        let mut removed = 0;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(&dir, e)),
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !keep.contains(&format!("sha256:{name}")) {
                std::fs::remove_file(e.path()).map_err(|err| io(&e.path(), err))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The tags of `index.json`.
    pub fn tags(&self) -> Result<Vec<String>, PackageError> {
        Ok(self
            .index()?
            .manifests
            .iter()
            .filter_map(|m| m.annotations.get(REF_NAME).cloned())
            .collect())
    }

    pub fn has_tag(&self, tag: &str) -> Result<bool, PackageError> {
        Ok(self.tags()?.iter().any(|t| t == tag))
    }

    /// The manifest named `tag` (or the only one besides signatures), its
    /// bytes checked against the index's digest.
    pub fn manifest(
        &self,
        tag: Option<&str>,
    ) -> Result<(Descriptor, Vec<u8>, Manifest), PackageError> {
        let index = self.index()?;
        let found: Vec<&Descriptor> = index
            .manifests
            .iter()
            .filter(|m| m.media_type == MANIFEST)
            .filter(|m| {
                let name = m.annotations.get(REF_NAME).map(String::as_str);
                match tag {
                    Some(t) => name == Some(t),
                    None => !name.is_some_and(|n| n.ends_with(".sig")),
                }
            })
            .collect();
        let desc = match (found.as_slice(), tag) {
            ([one], _) => (*one).clone(),
            ([], Some(t)) => {
                return Err(PackageError::Invalid(format!(
                    "{}: no manifest tagged `{t}`",
                    self.dir.display()
                )));
            }
            ([], None) => {
                return Err(PackageError::Invalid(format!(
                    "{}: not an OCI image layout with a manifest",
                    self.dir.display()
                )));
            }
            (many, _) => {
                let tags: Vec<&str> = many
                    .iter()
                    .filter_map(|m| m.annotations.get(REF_NAME).map(String::as_str))
                    .collect();
                return Err(PackageError::Invalid(format!(
                    "{}: several manifests ({}): name one",
                    self.dir.display(),
                    tags.join(", ")
                )));
            }
        };
        let bytes = self.get(&desc)?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| PackageError::Invalid(format!("manifest {}: {e}", desc.digest)))?;
        Ok((desc, bytes, manifest))
    }
}
