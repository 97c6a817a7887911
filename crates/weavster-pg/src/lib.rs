//! The queue's PostgreSQL in local mode (`queue: embedded`): a server run
//! from the PostgreSQL binaries installed on the machine, with its data under
//! the project (`.weavster/postgres`).
//!
//! - Binaries: an explicit directory (the CLI passes `WEAVSTER_PG_BIN`),
//!   `pg_config --bindir`, or the newest `/usr/lib/postgresql/*/bin`. Nothing
//!   is downloaded: `postgresql_embedded` is built without its archive
//!   repositories and told to trust the installation dir.
//! - Layout: `data/` (the cluster), `password` (generated once, mode 0600, so
//!   the URL is stable across runs), `run/` (the Unix socket dir; a short dir
//!   under the system temp dir when the project path is too long for a socket
//!   path), `as-root/bin/` (see below), `data/start.log` (the server's log).
//! - As root, `initdb` refuses to run. The server binaries are then run
//!   through wrappers that `exec unshare --user --map-user=65534
//!   --map-group=65534 <binary>`: inside that user namespace the process is
//!   an unprivileged user that owns the (root-owned) data dir. Where user
//!   namespaces are not available, starting fails with a message saying so.
//! - A server left running by a killed process is stopped before starting;
//!   a stale `postmaster.pid` (its process is gone) is removed.
//!
//! Knows nothing of the queue or of flows.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use postgresql_embedded::{PostgreSQL, Settings};

/// The database the queue uses inside the embedded server.
pub const DATABASE: &str = "weavster";

/// The unprivileged uid/gid root is mapped to inside the user namespace.
const NAMESPACE_ID: u32 = 65534;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found; looked in {looked}. \
         Install PostgreSQL's server package (scripts/setup.sh does) or set WEAVSTER_PG_BIN \
         to the directory holding them"
    )]
    NoBinaries { looked: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "PostgreSQL's initdb refuses to run as root, and running it in a user namespace \
         failed ({detail}). Run weavster as an unprivileged user, or use an external \
         database (`queue: postgres://…` in the profile)"
    )]
    RootWithoutUserNamespace { detail: String },
    #[error("the embedded PostgreSQL in {data_dir} could not be {action}: {message}")]
    Server {
        data_dir: PathBuf,
        action: &'static str,
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PgError + '_ {
    move |source| PgError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn has_server(d: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| d.join(b).is_file())
}

/// Where the PostgreSQL server binaries are: `explicit` (which must hold
/// them), `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir(explicit: Option<&Path>) -> Result<PathBuf, PgError> {
    if let Some(d) = explicit {
        return if has_server(d) {
            Ok(d.to_path_buf())
        } else {
            Err(PgError::NoBinaries {
                looked: format!("{} (WEAVSTER_PG_BIN)", d.display()),
            })
        };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&d) {
            return Ok(d);
        }
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has_server(d))
        .collect();
    dirs.sort();
    dirs.pop()
        .map(|(_, d)| d)
        .ok_or_else(|| PgError::NoBinaries {
            looked: "`pg_config --bindir` and /usr/lib/postgresql/*/bin".into(),
        })
}

/// Whether this process runs as root (the owner of `/proc/self` is the
/// effective uid).
pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// How to start the embedded server.
#[derive(Debug, Clone)]
pub struct Options {
    /// `.weavster/postgres` of the project.
    pub root: PathBuf,
    /// The server binaries; `None`: [`find_bin_dir`].
    pub bin_dir: Option<PathBuf>,
    /// For initdb, start and stop each (initdb takes ~5 s here).
    pub timeout: Duration,
}

impl Options {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Options {
            root: root.into(),
            bin_dir: None,
            timeout: Duration::from_secs(120),
        }
    }
}

/// A running embedded server. Stop it with [`Embedded::stop`]; dropping it
/// also stops it (synchronously).
pub struct Embedded {
    pg: PostgreSQL,
    bin_dir: PathBuf,
}

impl Embedded {
    /// Initializes the cluster on first use, starts the server and makes
    /// sure the [`DATABASE`] exists.
    pub async fn start(opts: &Options) -> Result<Self, PgError> {
        let bin_dir = find_bin_dir(opts.bin_dir.as_deref())?;
        let root = std::path::absolute(&opts.root).map_err(io(&opts.root))?;
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        let installation = if running_as_root() {
            as_root_wrappers(&root, &bin_dir)?
        } else {
            bin_dir
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| bin_dir.clone())
        };
        let data_dir = root.join("data");
        let password_file = root.join("password");
        let password = password(&password_file)?;
        let socket_dir = socket_dir(&root);
        std::fs::create_dir_all(&socket_dir).map_err(io(&socket_dir))?;

        let mut settings = Settings::default();
        // The defaults made temp dirs (data, password file) we do not use.
        let _ = std::fs::remove_dir_all(&settings.data_dir);
        if let Some(d) = settings.password_file.parent() {
            let _ = std::fs::remove_dir_all(d);
        }
        settings.releases_url = String::new();
        settings.installation_dir = installation;
        settings.trust_installation_dir = true;
        settings.password_file = password_file;
        settings.data_dir = data_dir.clone();
        settings.host = "localhost".into();
        settings.port = 0;
        settings.username = postgresql_embedded::BOOTSTRAP_SUPERUSER.into();
        settings.password = password;
        settings.temporary = false;
        settings.timeout = Some(opts.timeout);
        settings.socket_dir = Some(socket_dir);

        let binaries = settings.binary_dir();
        stop_leftover(&binaries, &data_dir)?;
        let err = |action: &'static str| {
            let data_dir = data_dir.clone();
            move |e: postgresql_embedded::Error| PgError::Server {
                data_dir,
                action,
                message: e.to_string(),
            }
        };
        let mut pg = PostgreSQL::new(settings);
        pg.setup().await.map_err(err("initialized"))?;
        pg.start().await.map_err(|e| PgError::Server {
            data_dir: data_dir.clone(),
            action: "started",
            message: format!("{e} (server log: {})", data_dir.join("start.log").display()),
        })?;
        if !pg.database_exists(DATABASE).await.map_err(err("queried"))? {
            pg.create_database(DATABASE)
                .await
                .map_err(err("given its database"))?;
        }
        tracing::debug!(url = %pg.settings().url(DATABASE), "embedded PostgreSQL started");
        Ok(Embedded {
            pg,
            bin_dir: binaries,
        })
    }

    /// The connection URL of the queue's database (with the password).
    pub fn url(&self) -> String {
        self.pg.settings().url(DATABASE)
    }

    pub fn data_dir(&self) -> &Path {
        &self.pg.settings().data_dir
    }

    /// The directory of the `pg_ctl`/`initdb` this server is run with (the
    /// root wrappers, when running as root).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Stops the server (fast shutdown: open sessions are ended).
    pub async fn stop(self) -> Result<(), PgError> {
        self.pg.stop().await.map_err(|e| PgError::Server {
            data_dir: self.pg.settings().data_dir.clone(),
            action: "stopped",
            message: e.to_string(),
        })
    }
}

/// The stable password of the embedded server, created on first use.
fn password(path: &Path) -> Result<String, PgError> {
    if let Ok(p) = std::fs::read_to_string(path) {
        let p = p.trim().to_string();
        if !p.is_empty() {
            return Ok(p);
        }
    }
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io(Path::new("/dev/urandom")))?;
    let p: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(p.as_bytes()).map_err(io(path))?;
    Ok(p)
}

/// `root/run`, or a short dir under the temp dir when a socket path in
/// `root/run` would exceed the 107 bytes Unix allows.
fn socket_dir(root: &Path) -> PathBuf {
    let dir = root.join("run");
    if dir.as_os_str().len() + "/.s.PGSQL.65535".len() < 100 {
        return dir;
    }
    // FNV-1a of the root: stable per project.
    let h = root
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
    std::env::temp_dir().join(format!("weavster-pg-{h:016x}"))
}

/// Wrappers for `initdb` and `pg_ctl` that run the real binaries (and so
/// the server, which `pg_ctl` starts from its own directory) in a user
/// namespace where root is an unprivileged user. Returns the installation
/// dir (holding `bin/`).
fn as_root_wrappers(root: &Path, bin_dir: &Path) -> Result<PathBuf, PgError> {
    let probe = Command::new("unshare")
        .args(user_namespace_args())
        .arg("true")
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Err(PgError::RootWithoutUserNamespace {
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Err(e) => {
            return Err(PgError::RootWithoutUserNamespace {
                detail: format!("cannot run `unshare`: {e}"),
            });
        }
    }
    let install = root.join("as-root");
    let bin = install.join("bin");
    std::fs::create_dir_all(&bin).map_err(io(&bin))?;
    for name in ["initdb", "pg_ctl", "postgres"] {
        let path = bin.join(name);
        let script = format!(
            "#!/bin/sh\n# Written by weavster: {name} refuses to run as root.\nexec unshare {} {} \"$@\"\n",
            user_namespace_args().join(" "),
            shell_quote(&bin_dir.join(name))
        );
        if std::fs::read_to_string(&path).ok().as_deref() != Some(&script) {
            std::fs::write(&path, &script).map_err(io(&path))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(io(&path))?;
        }
    }
    Ok(install)
}

fn user_namespace_args() -> [String; 3] {
    [
        "--user".into(),
        format!("--map-user={NAMESPACE_ID}"),
        format!("--map-group={NAMESPACE_ID}"),
    ]
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// A server still running on `data_dir` (its process was killed) is
/// stopped; a `postmaster.pid` whose process is gone is removed.
fn stop_leftover(bin: &Path, data_dir: &Path) -> Result<(), PgError> {
    let pid_file = data_dir.join("postmaster.pid");
    if !pid_file.exists() {
        return Ok(());
    }
    let pg_ctl = bin.join("pg_ctl");
    let status = Command::new(&pg_ctl)
        .arg("status")
        .arg("-D")
        .arg(data_dir)
        .output()
        .map_err(io(&pg_ctl))?;
    if status.status.success() {
        tracing::info!(data_dir = %data_dir.display(), "stopping a PostgreSQL left running by an earlier run");
        let out = Command::new(&pg_ctl)
            .args(["stop", "-m", "fast", "-w", "-D"])
            .arg(data_dir)
            .output()
            .map_err(io(&pg_ctl))?;
        if !out.status.success() {
            return Err(PgError::Server {
                data_dir: data_dir.to_path_buf(),
                action: "stopped (left running by an earlier run)",
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    } else if pid_file.exists() {
        tracing::info!(data_dir = %data_dir.display(), "removing a stale postmaster.pid");
        std::fs::remove_file(&pid_file).map_err(io(&pid_file))?;
    }
    Ok(())
}
