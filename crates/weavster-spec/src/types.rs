//! The typed shape of every Weavster file. These types are the single source
//! of the JSON Schemas under `docs/schemas/`.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An expression in the Weavster expression language (Jinja expression
/// syntax), e.g. `upper(trim(name))` or `total > 10 and status != 'test'`.
pub type Expr = String;

/// A record path: `a`, `a.b.c`, `a['key with space']`, `items[0]`.
pub type Path = String;

/// A connector reference `<file stem>.<key>`, e.g. `files.orders_in`, or
/// `bridge.<flow>` for the queue between two flows.
pub type ConnectorRef = String;

// ---------------------------------------------------------------------------
// weavster.yaml
// ---------------------------------------------------------------------------

/// `weavster.yaml`: the project file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectFile {
    /// Project name: lowercase letters, digits and `_`, starting with a letter.
    pub name: String,
    /// Project version (free text, usually semver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Profile name in profiles.yaml (default: the project name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Defaults for `var('...')`; overridden by the target's vars and `--vars`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub vars: IndexMap<String, Value>,
    /// Runtime settings; a target's `runtime` overrides them key by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeConfig>,
    /// Allow `env_var()` in flow files. Off by default: a value rendered
    /// into a flow is compiled into its module, which is meant to be
    /// shipped; use `var()` for per-environment values instead. Secrets
    /// (`WEAVSTER_SECRET_*`) are refused in flows even when this is on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_env_var_in_flows: bool,
    /// `weavster package` / `push` settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<PackageConfig>,
}

/// Where a project's package goes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageConfig {
    /// The OCI repository (`registry.example.com/team/orders`): what a
    /// signature names, and where `push` sends the package by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
}

/// Runtime settings. Every key is optional; see `docs/project.md` for defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `embedded` (a local PostgreSQL under `.weavster/`) or a `postgres://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Maximum records per queue job (default 10000; a job is also cut at
    /// 1 MiB of records, 8 MiB for a JSON-lines file batch queued as its
    /// byte range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// Maximum wait in milliseconds to fill a batch (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger_ms: Option<u64>,
    /// Flow workers per process (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// Attempts per job before its batch is dead-lettered (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// How long the flow may work on one batch, in milliseconds, before it
    /// is stopped and the batch retried record by record (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_timeout_ms: Option<u64>,
    /// The longest record (a line, a CSV row, a JSON array element) an input
    /// takes, in bytes (default 4194304, 4 MiB); a longer one goes to the
    /// dead letters (stage `input`) and reading goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_record_bytes: Option<u64>,
    /// Directories outside the project that file connectors may read or
    /// write (absolute, or relative to the project). Paths outside the
    /// project and these directories are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_paths: Option<Vec<String>>,
    /// Run only signed packages: `run` from sources is refused, and
    /// `run --package` needs `--key` (or `WEAVSTER_VERIFY_KEY`). Set it on
    /// production targets in profiles.yaml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_signature: Option<bool>,
}

// ---------------------------------------------------------------------------
// profiles.yaml
// ---------------------------------------------------------------------------

/// `profiles.yaml`: profile name → profile (dbt-shaped).
pub type ProfilesFile = IndexMap<String, Profile>;

/// One profile: a default target and the targets it offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The target used when neither `--target` nor `WEAVSTER_TARGET` is set.
    pub target: String,
    /// Target name → target.
    pub outputs: IndexMap<String, Target>,
}

/// One target (environment): runtime, vars and connector overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeConfig>,
    /// Override the project's vars.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub vars: IndexMap<String, Value>,
    /// Per-connector overrides (`file.key` → partial connector config), deep-merged.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub connectors: IndexMap<ConnectorRef, Value>,
}

// ---------------------------------------------------------------------------
// connectors/*.yaml
// ---------------------------------------------------------------------------

/// `connectors/<file>.yaml`: key → connector; referenced as `<file>.<key>`.
pub type ConnectorsFile = IndexMap<String, Connector>;

/// A connector config, selected by `type`.
// A few per project, read once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Connector {
    File(FileConnector),
    Stdin(StdinConnector),
    Stdout(StdoutConnector),
    Kafka(KafkaConnector),
    Postgres(PostgresConnector),
    Http(HttpConnector),
}

impl Connector {
    /// Every `type` value, in the order they are documented.
    pub const TYPES: &'static [&'static str] =
        &["file", "stdin", "stdout", "kafka", "postgres", "http"];

    pub fn type_name(&self) -> &'static str {
        match self {
            Connector::File(_) => "file",
            Connector::Stdin(_) => "stdin",
            Connector::Stdout(_) => "stdout",
            Connector::Kafka(_) => "kafka",
            Connector::Postgres(_) => "postgres",
            Connector::Http(_) => "http",
        }
    }

    pub fn can_be_input(&self) -> bool {
        !matches!(self, Connector::Stdout(_))
    }

    pub fn can_be_output(&self) -> bool {
        !matches!(self, Connector::Stdin(_))
    }

    /// The keys set on this connector that apply to one direction only
    /// (dotted for nested ones: `tls.ca_file`), in the schema's order. The
    /// direction of a key is written once, as `x-direction` on
    /// its field (which is also in the JSON Schemas).
    pub fn one_way_keys(&self) -> Vec<&'static OneWayKey> {
        let value = match self {
            Connector::File(c) => serde_json::to_value(c),
            Connector::Stdin(c) => serde_json::to_value(c),
            Connector::Stdout(c) => serde_json::to_value(c),
            Connector::Kafka(c) => serde_json::to_value(c),
            Connector::Postgres(c) => serde_json::to_value(c),
            Connector::Http(c) => serde_json::to_value(c),
        };
        let Ok(value) = value else { return Vec::new() };
        one_way_table(self.type_name())
            .iter()
            .filter(|k| {
                k.key
                    .split('.')
                    .try_fold(&value, |v, seg| v.get(seg))
                    .is_some()
            })
            .collect()
    }
}

/// Which way a connector is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    Input,
    Output,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Input => "input",
            Direction::Output => "output",
        }
    }
}

/// A connector key that applies to one direction only, and what to use
/// instead in the other (when there is an equivalent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneWayKey {
    pub key: String,
    pub direction: Direction,
    pub instead: Option<String>,
}

/// The one-way keys of connector type `type_name`, read once from its
/// JSON Schema's `x-direction` and `x-instead` annotations.
pub fn one_way_table(type_name: &str) -> &'static [OneWayKey] {
    static TABLE: std::sync::OnceLock<BTreeMap<&'static str, Vec<OneWayKey>>> =
        std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let schemas = [
            ("file", schemars::schema_for!(FileConnector)),
            ("stdin", schemars::schema_for!(StdinConnector)),
            ("stdout", schemars::schema_for!(StdoutConnector)),
            ("kafka", schemars::schema_for!(KafkaConnector)),
            ("postgres", schemars::schema_for!(PostgresConnector)),
            ("http", schemars::schema_for!(HttpConnector)),
        ];
        schemas
            .into_iter()
            .map(|(name, schema)| {
                let root = schema.as_value();
                let mut keys = Vec::new();
                one_way_keys_of(root, root, "", &mut keys);
                (name, keys)
            })
            .collect()
    });
    table.get(type_name).map_or(&[], Vec::as_slice)
}

/// The `x-direction` properties of `schema` (an object schema, or a
/// reference to one, possibly in an `anyOf` with null), prefixed.
fn one_way_keys_of(root: &Value, schema: &Value, prefix: &str, out: &mut Vec<OneWayKey>) {
    let resolve = |s: &'_ Value| -> Option<Value> {
        let r = s.get("$ref")?.as_str()?.strip_prefix("#/$defs/")?;
        root.get("$defs")?.get(r).cloned()
    };
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, p) in props {
        let key = format!("{prefix}{name}");
        match p.get("x-direction").and_then(Value::as_str) {
            Some(d) => out.push(OneWayKey {
                key,
                direction: if d == "input" {
                    Direction::Input
                } else {
                    Direction::Output
                },
                instead: p
                    .get("x-instead")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            }),
            None => {
                // A nested struct: its own keys may be one-way.
                let inner =
                    resolve(p).or_else(|| p.get("anyOf")?.as_array()?.iter().find_map(&resolve));
                if let Some(inner) = inner {
                    one_way_keys_of(root, &inner, &format!("{key}."), out);
                }
            }
        }
    }
}

/// Record encoding of a file or stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// One JSON array of objects.
    Json,
    /// CSV with a header row; every value is a string.
    Csv,
}

/// How a file output treats an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Append to the file (default).
    #[default]
    Append,
    /// Truncate the file when the run starts.
    Overwrite,
}

/// Files on the local disk. As input: every file matching `path` (a glob),
/// in name order. As output: one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConnector {
    /// File path relative to the project dir; a glob for inputs.
    pub path: String,
    /// Encoding; default: from the extension (`.jsonl`/`.ndjson`, `.json`, `.csv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// Input only: keep reading lines appended to the files (continuous
    /// `run`; ignored by `run --once`). Default true.
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<bool>,
    /// Output only: `append` (default) or `overwrite`.
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WriteMode>,
    /// CSV field delimiter (one character, default `,`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
}

/// Standard input, one JSON object per line (input only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinConnector {
    /// `jsonl` (default), `csv` (a header line first) or `json` (one array
    /// of objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
}

/// Standard output (output only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutConnector {
    /// `jsonl` (default) or `csv`; `json` is refused (one array cannot be
    /// streamed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
}

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    Earliest,
    Latest,
}

/// A Kafka-protocol topic. Input: a consumer group; output: an idempotent
/// producer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaConnector {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    pub topic: String,
    /// Input only: consumer group (default: `weavster-<project>-<flow>`).
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Input only: where a partition never read before starts (default `earliest`).
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_from: Option<StartFrom>,
    /// How a message value becomes a record (input) and a record a value
    /// (output): `json` (default: the value is the record, a JSON object),
    /// `string` (`{"value": "<UTF-8 text>"}`) or `bytes` (`{"value": "<base64>"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<KafkaFormat>,
    /// Input only: put the message's coordinates into this record field
    /// (`{topic, partition, offset, timestamp, key, headers}`), e.g. `_kafka`.
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// Output only: record path whose value becomes the message key (a
    /// string as is, any other value as its JSON text; missing or null: no key).
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Path>,
    /// Output only: message headers, each a static text or `{path: a.b}`
    /// (the record value there, stringified like `key`).
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub headers: IndexMap<String, KafkaHeader>,
    /// Output only: `none` (default), `gzip`, `snappy`, `lz4` or `zstd`.
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<KafkaCompression>,
    /// Output only: how long the producer waits to fill a request (default 5).
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger_ms: Option<u64>,
    /// Output only: which partition a keyed message goes to:
    /// `murmur2_random` (default; where Java producers put the same key) or
    /// `consistent_random` (librdkafka's default).
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitioner: Option<KafkaPartitioner>,
    /// Extra librdkafka settings (`security.protocol`, `sasl.password`, …);
    /// they override Weavster's defaults, except the few that its delivery
    /// guarantee needs (a clear error says which).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub options: IndexMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KafkaFormat {
    Json,
    String,
    Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KafkaCompression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl KafkaCompression {
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaCompression::None => "none",
            KafkaCompression::Gzip => "gzip",
            KafkaCompression::Snappy => "snappy",
            KafkaCompression::Lz4 => "lz4",
            KafkaCompression::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KafkaPartitioner {
    Murmur2Random,
    ConsistentRandom,
}

impl KafkaPartitioner {
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaPartitioner::Murmur2Random => "murmur2_random",
            KafkaPartitioner::ConsistentRandom => "consistent_random",
        }
    }
}

/// A message header's value: a static text, or a record path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum KafkaHeader {
    Static(String),
    Path {
        /// Record path whose value becomes the header.
        path: Path,
    },
}

/// A PostgreSQL database. Input: rows of `query` newer than the last
/// `cursor` value seen, or (`mode: cdc`) the changes of a publication's
/// tables by logical replication; output: typed batch inserts (or upserts)
/// into `table`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresConnector {
    /// `postgres://user:password@host:port/db` (the password is never printed).
    pub url: String,
    /// Output: target table (`schema.table` allowed).
    #[schemars(extend("x-direction" = "output", "x-instead" = "an input reads rows with `query` (or changes with `mode: cdc` and `publication`)"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Input: `query` (default: rows of `query` by `cursor`) or `cdc`
    /// (inserts, updates and deletes of `publication`'s tables).
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PostgresMode>,
    /// Input: a SELECT returning one record per row.
    #[schemars(extend("x-direction" = "input", "x-instead" = "an output writes to `table`"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// CDC input: the publication whose tables' changes are read
    /// (`CREATE PUBLICATION … FOR TABLE …`).
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publication: Option<String>,
    /// CDC input: the logical replication slot (created with `pgoutput` if
    /// missing; default `weavster_<publication>`).
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// CDC input: read the tables' rows first (`op: snapshot`), consistently
    /// with the changes that follow (default true).
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<bool>,
    /// Connections to the database (default: 4 for an output, 2 for an input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<u32>,
    /// Input: the column(s) rows are read in order of and resumed after,
    /// with a unique tie-break last (`[updated_at, id]`).
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Cursor>,
    /// Input: how often to poll when caught up, in milliseconds (default 1000).
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval_ms: Option<u64>,
    /// Input: with a timestamp first cursor column, read only rows older
    /// than this many milliseconds, so that a transaction committing late
    /// with an earlier timestamp is not skipped (default 5000).
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Output: upsert on these key columns instead of plain inserts.
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsert_keys: Vec<String>,
    /// Output: column → record path to write it from; only these columns
    /// are written (default: each column from the record field of its name).
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub columns: IndexMap<String, Path>,
    /// Output: a record field that is not a column: `error` (default: the
    /// record is dead-lettered, nothing is silently cut) or `ignore`.
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_fields: Option<UnknownFields>,
    /// Output: write each whole record into this one `jsonb` (or `json`) column.
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonb_column: Option<String>,
    /// Output: record each written batch in `weavster_written` (created in
    /// the target database) in the transaction of its rows, so that a
    /// retried batch is never written twice (default true).
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exactly_once: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// How a PostgreSQL input reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PostgresMode {
    /// Rows of `query`, by keyset on `cursor`.
    #[default]
    Query,
    /// Logical replication (`pgoutput`) of `publication`.
    Cdc,
}

/// One cursor column, or several (the last a unique tie-break).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Cursor {
    One(String),
    Many(Vec<String>),
}

impl Cursor {
    pub fn columns(&self) -> Vec<String> {
        match self {
            Cursor::One(c) => vec![c.clone()],
            Cursor::Many(v) => v.clone(),
        }
    }
}

/// What a PostgreSQL output does with a record field that is not a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFields {
    Error,
    Ignore,
}

/// HTTP. Input: a server accepting POSTed JSON on `listen` + `path`;
/// output: a client sending each batch to `url`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConnector {
    /// Input: address to listen on, e.g. `127.0.0.1:8080`.
    #[schemars(extend("x-direction" = "input", "x-instead" = "an output sends to `url`"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Input: request path (default `/`).
    #[schemars(extend("x-direction" = "input", "x-instead" = "an output sends to `url`"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Output: the URL requests are sent to.
    #[schemars(extend("x-direction" = "output", "x-instead" = "an input listens on `listen` (and `path`)"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Output: HTTP method (default `POST`).
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Output: headers sent with each request (secret-named ones never
    /// printed).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    #[schemars(extend("x-direction" = "output", "x-instead" = "an input copies request headers into records with `metadata_headers`"))]
    pub headers: IndexMap<String, String>,
    /// Output: request timeout in milliseconds (default 10000).
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Output: a bearer token sent with each request (never printed). An
    /// input says who may post with `auth: {bearer: [...]}`.
    #[schemars(extend("x-direction" = "output", "x-instead" = "on an input, who may post is set by `auth: {bearer: [...]}` (or `basic`, `hmac`)"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Input: the largest request body in bytes, as sent and once
    /// decompressed (default 10 MiB; 413 beyond).
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Input: who may post (checked before the body is parsed; 401).
    #[schemars(extend("x-direction" = "input", "x-instead" = "an output sends credentials with `token` or `basic`"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<HttpAuth>,
    /// Input: the answer to a request whose records are stored (default
    /// 200 with `{"accepted": N}`).
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HttpResponse>,
    /// Input: a record field that receives `{method, path, headers, remote}`.
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// Input: the request headers copied into `metadata` (default none).
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata_headers: Vec<String>,
    /// Input: at most this many requests per second (429 with
    /// `Retry-After` beyond).
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_second: Option<u32>,
    /// Input: a header naming each delivery (`X-GitHub-Delivery`): a
    /// delivery stored before is acknowledged and not stored again.
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe_header: Option<String>,
    /// Input: how long a request waits for its records to be stored before
    /// `503` (milliseconds, default 10000).
    #[schemars(extend("x-direction" = "input"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_timeout_ms: Option<u64>,
    /// Output: `json` (an array per request, default), `ndjson`, or
    /// `single` (one request per record).
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<HttpEncoding>,
    /// Output: gzip request bodies.
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gzip: Option<bool>,
    /// Output: a batch is split into requests of at most this many bytes
    /// (default 1 MiB; a single larger record is sent alone).
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u64>,
    /// Output: basic credentials (the password is never printed).
    #[schemars(extend("x-direction" = "output", "x-instead" = "on an input, who may post is set by `auth: {basic: [...]}`"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
    /// Output: requests in flight at once, across workers (default 4).
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Output: connect timeout in milliseconds (default 5000).
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// Output: attempts of a request within one try of the batch (default
    /// 3) before the batch goes back to the queue (backoff there).
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Output: the longest `Retry-After` waited in place, in seconds
    /// (default 30); longer: the batch goes back to the queue.
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retry_after_s: Option<u64>,
    /// Input: serve HTTPS with `cert_file` and `key_file`. Output: also
    /// trust the CA certificates of `ca_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<HttpTls>,
    /// Output: response statuses moved to another class than their default
    /// (e.g. `retry: [409]`, `success: [304]`).
    #[schemars(extend("x-direction" = "output"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statuses: Option<HttpStatuses>,
}

/// TLS of an HTTP connector (PEM files; relative paths are from the
/// project dir).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    /// Input: the server's certificate chain.
    #[schemars(extend("x-direction" = "input", "x-instead" = "an output's `https://` URL uses TLS already"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// Input: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[schemars(extend("x-direction" = "input", "x-instead" = "an output's `https://` URL uses TLS already"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// Output: CA certificates trusted besides the system's.
    #[schemars(extend("x-direction" = "output", "x-instead" = "an input serves with `cert_file` and `key_file`"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// How an HTTP output treats response statuses, beyond its defaults
/// (2xx success; 408, 429 and 5xx but 501 retry; 401, 403, 404, 405, 410
/// and 501 stop the flow; other 4xx dead-letter the refused records).
/// Each entry is a status (`409`), a class (`4xx`) or a range
/// (`500-504`). 401 and 403, and the redirects 301, 302, 303, 307 and
/// 308 (never followed), always stop the flow (a class or range leaves
/// them out; naming one is an error).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpStatuses {
    /// Written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub success: Vec<StatusCodes>,
    /// Tried again (in place, then from the queue with backoff).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry: Vec<StatusCodes>,
    /// The flow stops; the batch stays queued for the run after the fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<StatusCodes>,
    /// The records the server refuses (found by bisection) are
    /// dead-lettered with the status and body; the rest are written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_letter: Vec<StatusCodes>,
}

/// A status, a class (`5xx`) or a range (`500-504`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StatusCodes {
    Code(u16),
    Text(String),
}

impl StatusCodes {
    /// The statuses (first, last), or what is wrong.
    pub fn range(&self) -> Result<(u16, u16), String> {
        let valid = |c: u16| (100..=599).contains(&c);
        let (a, b) = match self {
            StatusCodes::Code(c) => (*c, *c),
            StatusCodes::Text(t) => {
                let t = t.trim();
                let lower = t.to_ascii_lowercase();
                if let Some(d) = lower.strip_suffix("xx")
                    && let Ok(d) = d.parse::<u16>()
                    && (1..=5).contains(&d)
                {
                    (d * 100, d * 100 + 99)
                } else if let Some((a, b)) = t.split_once('-')
                    && let (Ok(a), Ok(b)) = (a.trim().parse(), b.trim().parse())
                {
                    (a, b)
                } else if let Ok(c) = t.parse() {
                    (c, c)
                } else {
                    return Err(format!(
                        "`{t}` is not a status, a class (`5xx`) or a range (`500-504`)"
                    ));
                }
            }
        };
        if !valid(a) || !valid(b) || a > b {
            let shown = if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            };
            return Err(format!("`{shown}`: statuses are 100 to 599, low to high"));
        }
        Ok((a, b))
    }
}

/// What an HTTP output does with a response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Success,
    Retry,
    Stop,
    DeadLetter,
}

/// The class of every status from 100 to 599 (others: `Stop`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusTable([StatusClass; 500]);

impl Default for StatusTable {
    /// 2xx success; 408, 429 and 5xx but 501 retry; 401, 403, 404, 405,
    /// 410 and 501 stop; other 4xx dead-letter; 1xx and 3xx stop (a
    /// redirect is never followed: a write's body would be dropped or sent
    /// where `url` does not say).
    fn default() -> Self {
        let mut t = [StatusClass::Stop; 500];
        for code in 100u16..=599 {
            t[usize::from(code - 100)] = match code {
                200..=299 => StatusClass::Success,
                401 | 403 | 404 | 405 | 410 | 501 => StatusClass::Stop,
                408 | 429 | 500..=599 => StatusClass::Retry,
                400..=499 => StatusClass::DeadLetter,
                _ => StatusClass::Stop,
            };
        }
        StatusTable(t)
    }
}

/// 301, 302, 303, 307 and 308: the statuses that send a client elsewhere.
/// An HTTP output never follows one and always stops on one.
pub fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

impl StatusTable {
    pub fn class(&self, status: u16) -> StatusClass {
        status
            .checked_sub(100)
            .and_then(|i| self.0.get(usize::from(i)))
            .copied()
            .unwrap_or(StatusClass::Stop)
    }
}

impl HttpStatuses {
    /// The defaults with these lists applied, or every problem (a bad
    /// entry, a status in two lists, 401 or 403 moved) with the list it is
    /// in.
    pub fn table(&self) -> Result<StatusTable, Vec<(&'static str, String)>> {
        let mut table = StatusTable::default();
        let mut set: [Option<&str>; 500] = [None; 500];
        let mut problems = Vec::new();
        for (name, class, list) in [
            ("success", StatusClass::Success, &self.success),
            ("retry", StatusClass::Retry, &self.retry),
            ("stop", StatusClass::Stop, &self.stop),
            ("dead_letter", StatusClass::DeadLetter, &self.dead_letter),
        ] {
            for entry in list {
                let (a, b) = match entry.range() {
                    Ok(r) => r,
                    Err(e) => {
                        problems.push((name, format!("`statuses.{name}`: {e}")));
                        continue;
                    }
                };
                for code in a..=b {
                    let i = usize::from(code - 100);
                    if is_redirect(code) && class != StatusClass::Stop {
                        if a == b {
                            problems.push((name, format!(
                                "`statuses.{name}`: {code} is a redirect, which always stops the flow (a write is never followed to another address: set `url` to it)"
                            )));
                        }
                        continue;
                    }
                    if matches!(code, 401 | 403) && class != StatusClass::Stop {
                        // A class or range leaves them alone; naming one
                        // is a mistake worth saying.
                        if a == b {
                            problems.push((name, format!(
                                "`statuses.{name}`: {code} always stops the flow (credentials are fixed by a person, never retried away or dead-lettered)"
                            )));
                        }
                        continue;
                    }
                    match set[i] {
                        Some(other) if other != name => {
                            problems.push((
                                name,
                                format!("{code} is in `statuses.{other}` and `statuses.{name}`"),
                            ));
                        }
                        _ => {
                            set[i] = Some(name);
                            table.0[i] = class;
                        }
                    }
                }
            }
        }
        problems.dedup();
        if problems.is_empty() {
            Ok(table)
        } else {
            Err(problems)
        }
    }
}

/// How an HTTP output encodes a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HttpEncoding {
    Json,
    Ndjson,
    Single,
}

/// Who may post to an HTTP input: an `Authorization` matching one of
/// `bearer` or `basic` (if either is set), and a valid `hmac` signature
/// (if set).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpAuth {
    /// Accepted bearer tokens (several: rotation). Never printed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bearer: Vec<String>,
    /// Accepted basic credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub basic: Vec<BasicAuth>,
    /// An HMAC-SHA256 signature of the raw body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac: Option<HmacAuth>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub user: String,
    pub password: String,
}

/// An HMAC-SHA256 signature header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacAuth {
    /// The header holding the signature (`X-Hub-Signature-256`).
    pub header: String,
    /// Accepted secrets (several: rotation). Never printed.
    pub secrets: Vec<String>,
    /// Text before the signature in the header (`sha256=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `hex` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<SignatureEncoding>,
    /// A header holding the request's Unix time, signed with the body;
    /// older or newer than `tolerance_s` is refused (replays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_header: Option<String>,
    /// Seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance_s: Option<u64>,
    /// What is signed: a template of `{timestamp}` and `{body}` (default
    /// `{body}`, or `{timestamp}.{body}` with a timestamp header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

/// The answer to an accepted request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpResponse {
    /// A 2xx status (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The body (default `{"accepted": N}`; `""` for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

// ---------------------------------------------------------------------------
// flows/*.yaml
// ---------------------------------------------------------------------------

/// `flows/<name>.yaml`: one input, ordered transforms, N outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowFile {
    /// Flow name (default: the file stem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Connector reference the records come from.
    pub input: ConnectorRef,
    #[serde(default)]
    pub transforms: Vec<Transform>,
    pub outputs: Vec<Output>,
    /// What happens to a record no output takes: `drop` (default, counted
    /// as unrouted) or `error` (a record error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unrouted: Option<Unrouted>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Unrouted {
    Drop,
    Error,
}

/// One output of a flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Connector reference, or `bridge.<flow>`.
    pub to: ConnectorRef,
    /// Only records for which this expression is true (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Expr>,
}

/// One transform step: a map with exactly one key, the transform's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// path → expression, all evaluated against the record as it was at the
    /// start of the step, then assigned.
    Set(IndexMap<Path, Expr>),
    /// path → literal value, assigned (overwrites).
    Add(IndexMap<Path, Value>),
    /// path → literal value, assigned only where missing or null.
    Default(IndexMap<Path, Value>),
    /// from → to; a missing source is a no-op.
    Rename(IndexMap<Path, Path>),
    /// Paths to remove.
    Drop(Vec<Path>),
    /// Keep only these paths (strict reshape).
    Select(Vec<Path>),
    /// path → expressions; the first non-null is assigned.
    Coalesce(IndexMap<Path, Vec<Expr>>),
    /// path → type; a failed conversion is a record error.
    Cast(IndexMap<Path, CastType>),
    /// Keep records for which the expression is true (null counts as false).
    Filter(Expr),
    Regex(RegexStep),
    /// path → MiniJinja template with the record as context.
    Template(IndexMap<Path, String>),
    Lookup(LookupStep),
    When(WhenStep),
    Explode(ExplodeStep),
}

impl Transform {
    /// Every transform name, as written in YAML.
    pub const NAMES: &'static [&'static str] = &[
        "set", "add", "default", "rename", "drop", "select", "coalesce", "cast", "filter", "regex",
        "template", "lookup", "when", "explode",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Transform::Set(_) => "set",
            Transform::Add(_) => "add",
            Transform::Default(_) => "default",
            Transform::Rename(_) => "rename",
            Transform::Drop(_) => "drop",
            Transform::Select(_) => "select",
            Transform::Coalesce(_) => "coalesce",
            Transform::Cast(_) => "cast",
            Transform::Filter(_) => "filter",
            Transform::Regex(_) => "regex",
            Transform::Template(_) => "template",
            Transform::Lookup(_) => "lookup",
            Transform::When(_) => "when",
            Transform::Explode(_) => "explode",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CastType {
    Int,
    Float,
    String,
    Bool,
    Timestamp,
}

/// Named-group extraction (`pattern`) or replacement (`replace` + `with`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegexStep {
    /// The string field to match.
    pub field: Path,
    /// Extraction: a pattern with named groups (`(?P<name>...)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Extraction: object of named groups is written here; without it the
    /// groups merge into the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub into: Option<Path>,
    /// Extraction: what to do when the pattern does not match (default `keep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_no_match: Option<OnNoMatch>,
    /// Replacement: pattern whose every match is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<String>,
    /// Replacement text (`$name`/`${1}` refer to groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnNoMatch {
    /// Leave the record as it is.
    Keep,
    /// Drop the record (counted as filtered).
    Drop,
    /// Set `into` (or each group) to null.
    Null,
    /// A record error.
    Error,
}

/// Translate a field through a CSV table in `lookups/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupStep {
    /// The field holding the key.
    pub field: Path,
    /// Table name: `lookups/<table>.csv`; its first column is the key.
    pub table: String,
    /// Value column (default: the second column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Where the value goes (default: overwrite `field`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub into: Option<Path>,
    /// On a missing key: `default` (the default), `keep`, `drop` or `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_miss: Option<OnMiss>,
    /// Value used by `on_miss: default` (default null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnMiss {
    Default,
    Keep,
    Drop,
    Error,
}

/// A conditional block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhenStep {
    #[serde(rename = "if")]
    pub condition: Expr,
    #[serde(default)]
    pub then: Vec<Transform>,
    #[serde(rename = "else", default, skip_serializing_if = "Vec::is_empty")]
    pub otherwise: Vec<Transform>,
}

/// One record per element of an array field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplodeStep {
    pub field: Path,
    /// Where each element goes (default: replaces `field`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub into: Option<Path>,
}

// ---------------------------------------------------------------------------
// tests/<flow>/<case>.yaml
// ---------------------------------------------------------------------------

/// A fixture test: input records and the expected records per output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Pins `now()` (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now: Option<String>,
    /// Overrides vars for this case.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub vars: IndexMap<String, Value>,
    pub input: Vec<Value>,
    /// Output ref → expected records; the key `errors` lists expected record
    /// errors (`{stage, message}`, message matched as a substring).
    pub expect: IndexMap<String, Vec<Value>>,
    /// Also require that outputs not listed receive nothing.
    #[serde(default)]
    pub strict: bool,
}

/// Resolved runtime settings with defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Runtime {
    pub queue: String,
    pub batch_size: u32,
    pub linger_ms: u64,
    pub workers: u32,
    pub max_attempts: u32,
    pub batch_timeout_ms: u64,
    pub max_record_bytes: u64,
    pub allowed_paths: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_signature: bool,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            queue: "embedded".into(),
            batch_size: 10_000,
            linger_ms: 50,
            workers: 2,
            max_attempts: 5,
            batch_timeout_ms: 10_000,
            max_record_bytes: 4 << 20,
            allowed_paths: Vec::new(),
            require_signature: false,
        }
    }
}

impl Runtime {
    /// Applies the keys set in `cfg` over `self`.
    pub fn apply(&mut self, cfg: &RuntimeConfig) {
        if let Some(q) = &cfg.queue {
            self.queue = q.clone();
        }
        if let Some(v) = cfg.batch_size {
            self.batch_size = v;
        }
        if let Some(v) = cfg.linger_ms {
            self.linger_ms = v;
        }
        if let Some(v) = cfg.workers {
            self.workers = v;
        }
        if let Some(v) = cfg.max_attempts {
            self.max_attempts = v;
        }
        if let Some(v) = cfg.batch_timeout_ms {
            self.batch_timeout_ms = v;
        }
        if let Some(v) = cfg.max_record_bytes {
            self.max_record_bytes = v;
        }
        if let Some(v) = &cfg.allowed_paths {
            self.allowed_paths = v.clone();
        }
        if let Some(v) = cfg.require_signature {
            self.require_signature = v;
        }
    }
}

/// A lookup table as loaded from `lookups/<name>.csv`: header and rows (the
/// first column is the key).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LookupData {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// The JSON Schemas of every file kind, by schema file name.
pub fn schemas() -> BTreeMap<&'static str, schemars::Schema> {
    let mut out = BTreeMap::new();
    out.insert("weavster.schema.json", schemars::schema_for!(ProjectFile));
    out.insert("profiles.schema.json", schemars::schema_for!(ProfilesFile));
    out.insert(
        "connectors.schema.json",
        schemars::schema_for!(ConnectorsFile),
    );
    out.insert("flow.schema.json", schemars::schema_for!(FlowFile));
    out.insert("test.schema.json", schemars::schema_for!(TestCase));
    out
}

#[cfg(test)]
mod status_tests {
    use super::*;

    fn check(yaml: &str) -> Result<Vec<(u16, StatusClass)>, Vec<String>> {
        let s: HttpStatuses = crate::yaml::from_str(yaml).expect("parses");
        let t = s
            .table()
            .map_err(|p| p.into_iter().map(|(_, m)| m).collect::<Vec<_>>())?;
        Ok([200, 304, 400, 401, 403, 404, 409, 429, 500, 501, 503]
            .into_iter()
            .map(|c| (c, t.class(c)))
            .collect())
    }

    #[test]
    fn lists_move_statuses_from_their_defaults() {
        use StatusClass::*;
        assert_eq!(
            check("{}").expect("ok"),
            [
                (200, Success),
                (304, Stop),
                (400, DeadLetter),
                (401, Stop),
                (403, Stop),
                (404, Stop),
                (409, DeadLetter),
                (429, Retry),
                (500, Retry),
                (501, Stop),
                (503, Retry)
            ]
        );
        let moved =
            check("{success: [304], retry: ['409', 4xx], dead_letter: [500-502]}").expect("ok");
        assert_eq!(
            moved,
            [
                (200, Success),
                (304, Success),
                (400, Retry),
                (401, Stop),
                (403, Stop),
                (404, Retry),
                (409, Retry),
                (429, Retry),
                (500, DeadLetter),
                (501, DeadLetter),
                (503, Retry)
            ]
        );
        let wrong = check("{retry: [401, 6xx, 'x', 503-500], stop: [5xx], dead_letter: [503]}")
            .expect_err("refused");
        assert_eq!(
            wrong,
            [
                "`statuses.retry`: 401 always stops the flow (credentials are fixed by a person, never retried away or dead-lettered)",
                "`statuses.retry`: `6xx` is not a status, a class (`5xx`) or a range (`500-504`)",
                "`statuses.retry`: `x` is not a status, a class (`5xx`) or a range (`500-504`)",
                "`statuses.retry`: `503-500`: statuses are 100 to 599, low to high",
                "503 is in `statuses.stop` and `statuses.dead_letter`"
            ]
        );
        // A redirect never counts as written, nor is it dead-lettered: it
        // is named when listed alone, left alone inside a class.
        let redirect = check("{success: [302, 3xx], dead_letter: [308]}").expect_err("refused");
        assert_eq!(
            redirect,
            [
                "`statuses.success`: 302 is a redirect, which always stops the flow (a write is never followed to another address: set `url` to it)",
                "`statuses.dead_letter`: 308 is a redirect, which always stops the flow (a write is never followed to another address: set `url` to it)"
            ]
        );
        let t = HttpStatuses {
            success: vec![StatusCodes::Text("3xx".into())],
            ..HttpStatuses::default()
        }
        .table()
        .expect("a class is fine");
        assert_eq!(t.class(301), StatusClass::Stop);
        assert_eq!(t.class(304), StatusClass::Success);
    }
}

#[cfg(test)]
mod direction_tests {
    use super::*;

    /// Every field whose documentation starts "Input:" / "Output:" (or
    /// "… only:", "CDC input:") carries that `x-direction`, and every
    /// `x-direction` is documented so: the docs and the check agree.
    #[test]
    fn directions_agree_with_the_field_docs() {
        for ty in Connector::TYPES {
            let keys = one_way_table(ty);
            let schema = match *ty {
                "file" => schemars::schema_for!(FileConnector),
                "stdin" => schemars::schema_for!(StdinConnector),
                "stdout" => schemars::schema_for!(StdoutConnector),
                "kafka" => schemars::schema_for!(KafkaConnector),
                "postgres" => schemars::schema_for!(PostgresConnector),
                _ => schemars::schema_for!(HttpConnector),
            };
            let root = schema.as_value();
            let mut documented = Vec::new();
            let mut walk = vec![(String::new(), root.clone())];
            while let Some((prefix, s)) = walk.pop() {
                let Some(props) = s.get("properties").and_then(Value::as_object) else {
                    continue;
                };
                for (name, p) in props {
                    let doc = p.get("description").and_then(Value::as_str).unwrap_or("");
                    let d = if doc.starts_with("Input:")
                        || doc.starts_with("Input only:")
                        || doc.starts_with("CDC input:")
                    {
                        Some(Direction::Input)
                    } else if doc.starts_with("Output:") || doc.starts_with("Output only:") {
                        Some(Direction::Output)
                    } else {
                        None
                    };
                    if let (Some(d), false) = (d, doc.contains(". Output: also")) {
                        documented.push((format!("{prefix}{name}"), d));
                    }
                    let r = p
                        .get("anyOf")
                        .and_then(|a| a.as_array()?.iter().find_map(|x| x.get("$ref")))
                        .or_else(|| p.get("$ref"))
                        .and_then(Value::as_str)
                        .and_then(|r| r.strip_prefix("#/$defs/"));
                    if let Some(inner) = r.and_then(|r| root.get("$defs")?.get(r)) {
                        walk.push((format!("{prefix}{name}."), inner.clone()));
                    }
                }
            }
            let mut have: Vec<(String, Direction)> =
                keys.iter().map(|k| (k.key.clone(), k.direction)).collect();
            have.sort();
            documented.sort();
            assert_eq!(have, documented, "connector type `{ty}`");
        }
        // The one reported: `token` on an HTTP input.
        let http = one_way_table("http");
        let token = http.iter().find(|k| k.key == "token").expect("token");
        assert_eq!(token.direction, Direction::Output);
        assert!(token.instead.as_deref().is_some_and(|i| i.contains("auth")));
        assert!(
            http.iter()
                .any(|k| k.key == "tls.ca_file" && k.direction == Direction::Output)
        );
        assert!(!http.iter().any(|k| k.key == "tls"), "tls serves both ways");
    }

    #[test]
    fn one_way_keys_are_those_set() {
        let c: Connector = crate::yaml::from_str(
            "type: http\nlisten: 127.0.0.1:1\ntoken: x\ntls: {ca_file: a.pem}\n",
        )
        .expect("parses");
        let keys: Vec<&str> = c.one_way_keys().iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["listen", "token", "tls.ca_file"]);
    }
}
