//! The resolved project as JSON: `weavster ls --output json` and
//! `.weavster/target/manifest.json`. Secrets are masked.

use serde::Serialize;
use serde_json::Value;
use weavster_spec::types::{Output, Runtime};

use crate::Project;

#[derive(Debug, Serialize)]
pub struct Manifest {
    pub weavster_version: &'static str,
    pub project: String,
    pub profile: String,
    pub target: String,
    pub runtime: Runtime,
    pub vars: Value,
    pub flows: Vec<ManifestFlow>,
    pub connectors: Vec<ManifestConnector>,
    pub lookups: Vec<ManifestLookup>,
}

#[derive(Debug, Serialize)]
pub struct ManifestFlow {
    pub name: String,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub input: String,
    pub transforms: Vec<&'static str>,
    pub outputs: Vec<Output>,
    pub tests: usize,
}

#[derive(Debug, Serialize)]
pub struct ManifestConnector {
    #[serde(rename = "ref")]
    pub reference: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub file: String,
    pub config: Value,
}

#[derive(Debug, Serialize)]
pub struct ManifestLookup {
    pub name: String,
    pub file: String,
    pub columns: Vec<String>,
    pub rows: usize,
}

impl Manifest {
    pub fn new(p: &Project) -> Manifest {
        let secrets = &p.secrets;
        Manifest {
            weavster_version: env!("CARGO_PKG_VERSION"),
            project: p.name.clone(),
            profile: p.profile.clone(),
            target: p.target.clone(),
            runtime: Runtime {
                queue: crate::secrets::mask_url_password(&secrets.mask(&p.runtime.queue)),
                ..p.runtime.clone()
            },
            vars: secrets.mask_value(&serde_json::to_value(&p.vars).unwrap_or(Value::Null)),
            flows: p
                .flows
                .iter()
                .map(|f| ManifestFlow {
                    name: f.name.clone(),
                    file: f.file.clone(),
                    description: f.spec.description.clone(),
                    input: f.spec.input.clone(),
                    transforms: f.spec.transforms.iter().map(|t| t.name()).collect(),
                    outputs: f.spec.outputs.clone(),
                    tests: p.tests.iter().filter(|t| t.flow == f.name).count(),
                })
                .collect(),
            connectors: p
                .connectors
                .values()
                .map(|c| {
                    let mut config = serde_json::to_value(&c.connector).unwrap_or(Value::Null);
                    if let Value::Object(m) = &mut config {
                        m.remove("type");
                    }
                    ManifestConnector {
                        reference: c.reference.clone(),
                        kind: c.connector.type_name(),
                        file: c.file.clone(),
                        config: secrets.mask_value(&config),
                    }
                })
                .collect(),
            lookups: p
                .lookups
                .iter()
                .map(|(name, t)| ManifestLookup {
                    name: name.clone(),
                    file: t.file.clone(),
                    columns: t.data.columns.clone(),
                    rows: t.data.rows.len(),
                })
                .collect(),
        }
    }
}
