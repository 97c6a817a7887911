//! The Weavster package: a project's compiled flows, its manifest and its
//! source files as one OCI artifact, written as an OCI image layout and
//! read back with every digest checked. Reproducible: the same inputs give
//! the same bytes (sorted entries, no absolute paths, `created` given by
//! the caller).
//!
//! The artifact (`docs/packaging.md`):
//! - manifest `artifactType` [`ARTIFACT`];
//! - config [`CONFIG`]: `created`, `architecture: wasm`, `os: wasip1`,
//!   `layerDigests`, Weavster/ABI/guest versions, the flows;
//! - layer [`PROJECT`]: the project manifest (flows with their input,
//!   outputs, transforms, IR fingerprint and module digest; connectors;
//!   lookups);
//! - one [`WASM`] layer per flow (annotated with its title and flow);
//! - layer [`SOURCES`]: a tar of weavster.yaml, connectors/, flows/,
//!   lookups/ and tests/ — never profiles.yaml, never a hidden file;
//!   connector files unrendered (no secret is resolved into a package).

mod oci;
pub mod registry;
pub mod signature;
mod sources;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use oci::{Descriptor, Layout, Manifest, digest};
pub use sources::{SourceFile, project_sources, tar};

pub const ARTIFACT: &str = "application/vnd.weavster.project.v1";
pub const CONFIG: &str = "application/vnd.weavster.project.config.v1+json";
pub const PROJECT: &str = "application/vnd.weavster.project.manifest.v1+json";
pub const WASM: &str = "application/wasm";
pub const SOURCES: &str = "application/vnd.weavster.project.sources.v1.tar";
/// Layer annotation: the flow a module is.
pub const FLOW: &str = "dev.weavster.flow";
const TITLE: &str = "org.opencontainers.image.title";

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("not a Weavster package: {0}")]
    Invalid(String),
    /// A blob or manifest does not match its digest, or a signature by
    /// the key names another manifest.
    #[error("tampered with: {0}")]
    Tampered(String),
    /// No signature covers the manifest.
    #[error("unsigned: {0}")]
    Unsigned(String),
    /// Signatures exist, none by the key given.
    #[error("not signed by this key: {0}")]
    WrongKey(String),
    /// A key cannot be read (format, password).
    #[error("key: {0}")]
    Key(String),
    /// A registry refused or could not be reached.
    #[error("registry: {0}")]
    Registry(String),
}

/// rustls needs a process-wide provider; ring is the one built in.
pub(crate) fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The config blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub created: String,
    pub architecture: String,
    pub os: String,
    pub layer_digests: Vec<String>,
    pub weavster: Versions,
    pub project: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub flows: Vec<String>,
}

/// What built the modules; `run` refuses a package from another ABI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub version: String,
    pub abi: i32,
    pub guest: String,
    /// The build profile of the modules (`release`, `dev`).
    pub profile: String,
    /// The target whose `var()`s were compiled into the flows.
    pub target: String,
}

/// One flow of the project manifest layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowEntry {
    pub name: String,
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub input: String,
    pub outputs: Vec<String>,
    pub transforms: Vec<String>,
    /// The IR fingerprint the module was built from.
    pub fingerprint: String,
    /// The module layer's digest.
    pub module: String,
    /// The module's cache key and its key without the compiler (what a
    /// toolchain-less run checks the flow it renders against).
    pub key: String,
    pub source_key: String,
    pub tests: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectorEntry {
    #[serde(rename = "ref")]
    pub reference: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LookupEntry {
    pub name: String,
    pub file: String,
    pub rows: usize,
}

/// The project manifest layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectManifest {
    pub project: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub flows: Vec<FlowEntry>,
    pub connectors: Vec<ConnectorEntry>,
    pub lookups: Vec<LookupEntry>,
}

/// A compiled flow to package.
pub struct Module {
    pub flow: String,
    pub fingerprint: String,
    pub wasm: Vec<u8>,
}

/// What a package is made of.
pub struct Contents {
    pub project: ProjectManifest,
    pub description: Option<String>,
    pub modules: Vec<Module>,
    pub sources: Vec<SourceFile>,
    pub versions: Versions,
    /// RFC 3339 UTC (`SOURCE_DATE_EPOCH` or the newest input's time).
    pub created: String,
    /// Seconds since the epoch of `created` (the tar entries' time).
    pub created_epoch: u64,
    /// `org.opencontainers.image.source` / `revision`, when known.
    pub source: Option<String>,
    pub revision: Option<String>,
}

/// A package written: its manifest's digest and size.
#[derive(Debug, Clone)]
pub struct Written {
    pub digest: String,
    pub size: u64,
    pub tag: String,
    /// Bytes of every blob and the manifest.
    pub total: u64,
}

fn json(v: &impl Serialize) -> Result<Vec<u8>, PackageError> {
    serde_json::to_vec(v).map_err(|e| PackageError::Invalid(e.to_string()))
}

/// Writes `c` into the layout `layout`, tagged `tag`.
pub fn write(layout: &Layout, mut c: Contents, tag: &str) -> Result<Written, PackageError> {
    let mut total = 0u64;
    let mut put = |bytes: &[u8]| -> Result<(), PackageError> {
        total += bytes.len() as u64;
        layout.put(bytes).map(|_| ())
    };
    c.modules.sort_by(|a, b| a.flow.cmp(&b.flow));
    let mut layers = Vec::new();
    let mut modules = BTreeMap::new();
    for m in &c.modules {
        put(&m.wasm)?;
        let d = Descriptor::of(WASM, &m.wasm)
            .annotate(TITLE, &format!("{}.wasm", m.flow))
            .annotate(FLOW, &m.flow);
        modules.insert(m.flow.clone(), d.digest.clone());
        layers.push(d);
    }
    for f in &mut c.project.flows {
        f.module = modules
            .get(&f.name)
            .cloned()
            .ok_or_else(|| PackageError::Invalid(format!("flow `{}` has no module", f.name)))?;
    }
    c.project.flows.sort_by(|a, b| a.name.cmp(&b.name));
    let project = json(&c.project)?;
    put(&project)?;
    layers.insert(
        0,
        Descriptor::of(PROJECT, &project).annotate(TITLE, "project.json"),
    );
    let sources = tar(&c.sources, c.created_epoch)?;
    put(&sources)?;
    layers.push(Descriptor::of(SOURCES, &sources).annotate(TITLE, "sources.tar"));
    let config = Config {
        created: c.created.clone(),
        architecture: "wasm".into(),
        os: "wasip1".into(),
        layer_digests: layers.iter().map(|l| l.digest.clone()).collect(),
        weavster: c.versions.clone(),
        project: c.project.project.clone(),
        version: c.project.version.clone(),
        flows: c.project.flows.iter().map(|f| f.name.clone()).collect(),
    };
    let config = json(&config)?;
    put(&config)?;
    let mut annotations = BTreeMap::new();
    annotations.insert("org.opencontainers.image.created".into(), c.created.clone());
    annotations.insert(
        "org.opencontainers.image.title".into(),
        c.project.project.clone(),
    );
    if let Some(v) = &c.project.version {
        annotations.insert("org.opencontainers.image.version".into(), v.clone());
    }
    if let Some(d) = &c.description {
        annotations.insert("org.opencontainers.image.description".into(), d.clone());
    }
    if let Some(s) = &c.source {
        annotations.insert("org.opencontainers.image.source".into(), s.clone());
    }
    if let Some(r) = &c.revision {
        annotations.insert("org.opencontainers.image.revision".into(), r.clone());
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: oci::MANIFEST.into(),
        artifact_type: Some(ARTIFACT.into()),
        config: Descriptor::of(CONFIG, &config),
        layers,
        annotations,
    };
    let bytes = json(&manifest)?;
    total += bytes.len() as u64;
    let desc = layout.tag(&bytes, tag, Some(ARTIFACT))?;
    layout.collect_garbage()?;
    Ok(Written {
        digest: desc.digest,
        size: desc.size,
        tag: tag.into(),
        total,
    })
}

/// A package read back, every digest checked.
#[derive(Debug)]
pub struct Package {
    pub digest: String,
    pub manifest: Manifest,
    pub config: Config,
    pub project: ProjectManifest,
    /// (flow, module bytes), in flow order.
    pub modules: Vec<(String, Vec<u8>)>,
    pub sources: Vec<SourceFile>,
}

/// Reads the package tagged `tag` (or the only one) from `layout`.
pub fn open(layout: &Layout, tag: Option<&str>) -> Result<Package, PackageError> {
    let (desc, _, manifest) = layout.manifest(tag)?;
    if manifest.artifact_type.as_deref() != Some(ARTIFACT) || manifest.config.media_type != CONFIG {
        return Err(PackageError::Invalid(format!(
            "manifest {} is not a Weavster project (artifactType {:?})",
            desc.digest, manifest.artifact_type
        )));
    }
    let config_bytes = layout.get(&manifest.config)?;
    let config: Config = serde_json::from_slice(&config_bytes)
        .map_err(|e| PackageError::Invalid(format!("config: {e}")))?;
    let mut project = None;
    let mut modules = Vec::new();
    let mut sources = None;
    for l in &manifest.layers {
        let bytes = layout.get(l)?;
        match l.media_type.as_str() {
            PROJECT => {
                project = Some(
                    serde_json::from_slice::<ProjectManifest>(&bytes)
                        .map_err(|e| PackageError::Invalid(format!("project manifest: {e}")))?,
                );
            }
            WASM => {
                let flow = l.annotations.get(FLOW).cloned().ok_or_else(|| {
                    PackageError::Invalid(format!("module {} names no flow", l.digest))
                })?;
                modules.push((flow, bytes));
            }
            SOURCES => {
                let files = sources::untar(&bytes)?;
                // Targets and secrets stay where a package runs: a package
                // holding them could redirect a run; it is not ours.
                if let Some(f) = files.iter().find(|f| {
                    let name = f.path.rsplit('/').next().unwrap_or(&f.path);
                    name == "profiles.yaml" || name.starts_with('.')
                }) {
                    return Err(PackageError::Invalid(format!(
                        "the sources hold `{}`: a package never holds profiles.yaml or hidden files",
                        f.path
                    )));
                }
                sources = Some(files);
            }
            other => {
                return Err(PackageError::Invalid(format!(
                    "unknown layer type `{other}`"
                )));
            }
        }
    }
    let project =
        project.ok_or_else(|| PackageError::Invalid("no project manifest layer".into()))?;
    for f in &project.flows {
        if !manifest
            .layers
            .iter()
            .any(|l| l.digest == f.module && l.media_type == WASM)
        {
            return Err(PackageError::Invalid(format!(
                "flow `{}`: its module is not in the package",
                f.name
            )));
        }
    }
    Ok(Package {
        digest: desc.digest,
        manifest,
        config,
        project,
        modules,
        sources: sources.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents() -> Contents {
        let flow = |name: &str| FlowEntry {
            name: name.into(),
            file: format!("flows/{name}.yaml"),
            description: None,
            input: "c.in".into(),
            outputs: vec!["c.out".into()],
            transforms: vec!["set".into()],
            fingerprint: format!("fp-{name}"),
            module: String::new(),
            key: format!("k-{name}"),
            source_key: format!("s-{name}"),
            tests: 0,
        };
        Contents {
            project: ProjectManifest {
                project: "shop".into(),
                version: Some("1.2.0".into()),
                flows: vec![flow("b"), flow("a")],
                connectors: vec![],
                lookups: vec![],
            },
            description: None,
            modules: vec![
                Module {
                    flow: "b".into(),
                    fingerprint: "fp-b".into(),
                    wasm: b"\0asm-b".to_vec(),
                },
                Module {
                    flow: "a".into(),
                    fingerprint: "fp-a".into(),
                    wasm: b"\0asm-a".to_vec(),
                },
            ],
            sources: vec![SourceFile {
                path: "weavster.yaml".into(),
                bytes: b"name: shop\n".to_vec(),
            }],
            versions: Versions {
                version: "0.1.0".into(),
                abi: 1,
                guest: "0.1.0".into(),
                profile: "release".into(),
                target: "dev".into(),
            },
            created: "2026-01-01T00:00:00Z".into(),
            created_epoch: 1_767_225_600,
            source: None,
            revision: None,
        }
    }

    #[test]
    fn a_package_reads_back_and_a_flipped_byte_is_found() {
        let a = tempfile::tempdir().expect("tmp");
        let b = tempfile::tempdir().expect("tmp");
        let wa = write(&Layout::new(a.path()), contents(), "1.2.0").expect("write");
        let wb = write(&Layout::new(b.path()), contents(), "1.2.0").expect("write");
        assert_eq!(wa.digest, wb.digest, "reproducible");
        let p = open(&Layout::new(a.path()), None).expect("open");
        assert_eq!(p.digest, wa.digest);
        assert_eq!(p.config.flows, ["a", "b"]);
        assert_eq!(p.modules[0], ("a".to_string(), b"\0asm-a".to_vec()));
        assert_eq!(p.project.flows[1].module, digest(b"\0asm-b"));
        assert_eq!(p.sources.len(), 1);
        // A flipped byte in a module.
        let blob = a.path().join("blobs/sha256").join(&digest(b"\0asm-a")[7..]);
        std::fs::write(&blob, b"\0asm-A").expect("flip");
        let err = open(&Layout::new(a.path()), None).expect_err("tampered");
        assert!(matches!(err, PackageError::Tampered(_)), "{err}");
        assert!(open(&Layout::new(a.path()), Some("other")).is_err());
        // A package whose sources hold profiles.yaml is not one of ours.
        let mut c = contents();
        c.sources.push(SourceFile {
            path: "profiles.yaml".into(),
            bytes: b"x: {}".to_vec(),
        });
        write(&Layout::new(b.path()), c, "evil").expect("write");
        let err = open(&Layout::new(b.path()), Some("evil")).expect_err("refused");
        assert!(err.to_string().contains("profiles.yaml"), "{err}");
    }
}
