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
//! - Shared by processes: every process using the server holds a shared
//!   lock on `users.lock`; starting and stopping happen under an exclusive
//!   `startup.lock`. A process that finds the server used by another one
//!   connects to it; the last user to stop stops it. A server left running
//!   by killed processes only (nobody holds `users.lock`) is stopped before
//!   starting again.
//! - Nothing is signalled unless it is this data dir's postmaster: the pid
//!   in `postmaster.pid` must be a live `postgres` process whose working
//!   dir or command line is the data dir. A pid file naming anything else
//!   (a reused pid) is stale and removed.
//! - The server keeps one port (`port`, chosen free on first use), so a
//!   server restarted after it died ([`Embedded::ensure_running`]) is found
//!   at the same URL. It runs with `fsync=on`.
//!
//! Knows nothing of the queue or of flows.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgresql_embedded::{PostgreSQL, Settings};

/// The database the queue uses inside the embedded server.
pub const DATABASE: &str = "weavster";

/// How many times a server that died is started again before giving up.
pub const RESTART_ATTEMPTS: u32 = 10;

/// The unprivileged uid/gid root is mapped to inside the user namespace.
const NAMESPACE_ID: u32 = 65534;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "the embedded queue (`queue: embedded`) needs PostgreSQL's server binaries (initdb, \
         pg_ctl, postgres) and none were found; looked in {looked}. In a container or \
         production, use an external queue database instead: set `runtime.queue` (in \
         weavster.yaml or the target) to a postgres:// URL. To run embedded here, install \
         PostgreSQL's server package (scripts/setup.sh does) or set WEAVSTER_PG_BIN to the \
         directory holding them"
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

/// A running embedded server, used by this process. [`Embedded::stop`]
/// stops it if no other process uses it; dropping it without `stop` leaves
/// it running for the next start to deal with (as a killed process does).
pub struct Embedded {
    settings: Settings,
    bin_dir: PathBuf,
    root: PathBuf,
    /// Held shared while this process uses the server.
    users: Arc<Mutex<Option<File>>>,
    /// Whether this process started it (else it joined another's).
    started: bool,
}

/// Stops the server from anywhere (a forced exit), if this process is its
/// last user. Cloneable; see [`Embedded::emergency`].
#[derive(Clone)]
pub struct EmergencyStop {
    pg_ctl: PathBuf,
    data_dir: PathBuf,
    users: Arc<Mutex<Option<File>>>,
}

impl EmergencyStop {
    /// Synchronously: an immediate stop if nobody else uses the server;
    /// releases this process's use either way.
    pub fn stop_now(&self) {
        let Ok(mut guard) = self.users.lock() else {
            return;
        };
        if let Some(f) = guard.take()
            && f.try_lock().is_ok()
            && live_postmaster(&self.data_dir).is_some()
        {
            let _ = Command::new(&self.pg_ctl)
                .args(["stop", "-m", "immediate", "-w", "-t", "10", "-D"])
                .arg(&self.data_dir)
                .output();
        }
    }
}

/// Takes `path`'s exclusive lock, waiting for it (start and stop decisions
/// of processes sharing a server are serialized).
async fn exclusive(path: &Path) -> Result<File, PgError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    let mut waited = Duration::ZERO;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => {
                if waited >= Duration::from_secs(300) {
                    return Err(PgError::Server {
                        data_dir: path.to_path_buf(),
                        action: "locked",
                        message: "another weavster has held the start lock for 5 minutes".into(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                waited += Duration::from_millis(50);
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(path)(e)),
        }
    }
}

impl Embedded {
    /// Initializes the cluster on first use, starts the server (or joins
    /// the one another process runs) and makes sure the [`DATABASE`]
    /// exists.
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
        settings.username = postgresql_embedded::BOOTSTRAP_SUPERUSER.into();
        settings.password = password;
        settings.temporary = false;
        settings.timeout = Some(opts.timeout);
        settings.socket_dir = Some(socket_dir);
        // The crate starts the server with `-F` (no fsync): the queue must
        // survive a power cut.
        settings.configuration.insert("fsync".into(), "on".into());
        let binaries = settings.binary_dir();

        let startup = exclusive(&root.join("startup.lock")).await?;
        let users_path = root.join("users.lock");
        let users = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&users_path)
            .map_err(io(&users_path))?;
        let alone = match users.try_lock() {
            Ok(()) => true,
            Err(std::fs::TryLockError::WouldBlock) => false,
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&users_path)(e)),
        };
        let mut server = Embedded {
            settings,
            bin_dir: binaries,
            root: root.clone(),
            users: Arc::new(Mutex::new(None)),
            started: false,
        };
        if alone {
            // Nobody uses a server on this data dir: one still running was
            // left by killed processes.
            stop_leftover(&server.bin_dir, &data_dir)?;
            server.settings.port = port(&root, true)?;
            server.boot(true).await?;
            server.started = true;
        } else if let Some((_, port)) = live_postmaster(&data_dir) {
            tracing::info!(data_dir = %data_dir.display(), "joining the embedded PostgreSQL of a running weavster");
            server.settings.port = port;
        } else {
            // Used, but not running (it died): start it where its users
            // look for it.
            server.settings.port = port(&root, false)?;
            server.boot(false).await?;
            server.started = true;
        }
        users.lock_shared().map_err(io(&users_path))?;
        if let Ok(mut u) = server.users.lock() {
            *u = Some(users);
        }
        drop(startup);
        tracing::debug!(url = %server.settings.url(DATABASE), "embedded PostgreSQL ready");
        Ok(server)
    }

    /// Runs initdb (first use), starts the server and creates [`DATABASE`].
    async fn boot(&self, setup: bool) -> Result<(), PgError> {
        let data_dir = self.settings.data_dir.clone();
        let err = |action: &'static str| {
            let data_dir = data_dir.clone();
            move |e: postgresql_embedded::Error| PgError::Server {
                data_dir,
                action,
                message: e.to_string(),
            }
        };
        let mut pg = PostgreSQL::new(self.settings.clone());
        let result = async {
            if setup {
                pg.setup().await.map_err(err("initialized"))?;
            }
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
            Ok(())
        }
        .await;
        // Its Drop would stop the server: who stops it is decided here.
        std::mem::forget(pg);
        result
    }

    /// The connection URL of the queue's database (with the password).
    pub fn url(&self) -> String {
        self.settings.url(DATABASE)
    }

    pub fn data_dir(&self) -> &Path {
        &self.settings.data_dir
    }

    /// The directory of the `pg_ctl`/`initdb` this server is run with (the
    /// root wrappers, when running as root).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Whether this process started the server (rather than joined it).
    pub fn started_here(&self) -> bool {
        self.started
    }

    /// Whether the server runs (its postmaster is alive).
    pub fn is_running(&self) -> bool {
        live_postmaster(&self.settings.data_dir).is_some()
    }

    /// Starts the server again if it died (killed, crashed), on the same
    /// port. `Ok(true)`: it was restarted.
    pub async fn ensure_running(&self) -> Result<bool, PgError> {
        if self.is_running() {
            return Ok(false);
        }
        let _startup = exclusive(&self.root.join("startup.lock")).await?;
        if self.is_running() {
            // Another user restarted it.
            return Ok(false);
        }
        tracing::warn!(data_dir = %self.settings.data_dir.display(), "the embedded PostgreSQL is not running; starting it again");
        // A killed postmaster's children take a moment to go, and hold its
        // shared memory until then: a few attempts, then the error.
        let mut attempt = 1;
        loop {
            stop_leftover(&self.bin_dir, &self.settings.data_dir)?;
            match self.boot(false).await {
                Ok(()) => return Ok(true),
                Err(e) if attempt >= RESTART_ATTEMPTS => return Err(e),
                Err(e) => tracing::debug!("restart attempt {attempt}: {e}"),
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// A handle that stops the server at once from anywhere (a forced
    /// exit), if this process is its last user.
    pub fn emergency(&self) -> EmergencyStop {
        EmergencyStop {
            pg_ctl: self.bin_dir.join("pg_ctl"),
            data_dir: self.settings.data_dir.clone(),
            users: self.users.clone(),
        }
    }

    /// Stops using the server; stops it (fast shutdown: open sessions are
    /// ended) if no other process uses it.
    pub async fn stop(self) -> Result<(), PgError> {
        let _startup = exclusive(&self.root.join("startup.lock")).await?;
        let users = self.users.lock().ok().and_then(|mut u| u.take());
        let Some(users) = users else {
            return Ok(());
        };
        // Upgrading to exclusive succeeds only if nobody else holds it.
        if users.try_lock().is_err() {
            tracing::debug!(
                "the embedded PostgreSQL is still used by another weavster; leaving it running"
            );
            return Ok(());
        }
        if live_postmaster(&self.settings.data_dir).is_none() {
            return Ok(());
        }
        self.stop_fast().await
    }

    /// A fast shutdown, waited for here: `pg_ctl stop -W` signals the
    /// postmaster, then the server is gone when its `postmaster.pid`
    /// names no live postmaster — what `pg_ctl stop -w` waits for, but
    /// checked every 5 ms instead of every 100 ms (a tenth of a second off
    /// every `run --once`, docs/dev/benchmarks.md).
    async fn stop_fast(&self) -> Result<(), PgError> {
        let data_dir = &self.settings.data_dir;
        let failed = |message: String| PgError::Server {
            data_dir: data_dir.clone(),
            action: "stopped",
            message,
        };
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let out = tokio::process::Command::new(&pg_ctl)
            .args(["stop", "-m", "fast", "-W", "-D"])
            .arg(data_dir)
            .output()
            .await
            .map_err(io(&pg_ctl))?;
        if !out.status.success() && live_postmaster(data_dir).is_some() {
            return Err(failed(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let timeout = self.settings.timeout.unwrap_or(Duration::from_secs(60));
        let started = std::time::Instant::now();
        while live_postmaster(data_dir).is_some() {
            if started.elapsed() > timeout {
                return Err(failed(format!(
                    "the server was still running {}s after a fast shutdown was asked",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Leaves the server running and stops using it, as a killed process
    /// would (tests of crash recovery).
    pub fn abandon(self) {
        if let Ok(mut u) = self.users.lock() {
            u.take();
        }
    }
}

/// The port the server listens on: the project's (kept in `port`), or a new
/// free one when `may_change` and it is taken (or there is none yet).
fn port(root: &Path, may_change: bool) -> Result<u16, PgError> {
    let path = root.join("port");
    let stored: Option<u16> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    if let Some(p) = stored
        && (free(p) || !may_change)
    {
        return Ok(p);
    }
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(io(&path))?;
    let p = listener.local_addr().map_err(io(&path))?.port();
    drop(listener);
    std::fs::write(&path, format!("{p}\n")).map_err(io(&path))?;
    Ok(p)
}

/// The pid and port of `data_dir`'s running postmaster: the pid in its
/// `postmaster.pid` is a live `postgres` process working in that data dir
/// (a pid reused by another process does not count).
pub fn live_postmaster(data_dir: &Path) -> Option<(u32, u16)> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid: u32 = lines.next()?.trim().parse().ok()?;
    let port: u16 = lines.nth(2)?.trim().parse().ok()?;
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let cmdline = std::fs::read(proc_dir.join("cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_postgres = args
        .first()
        .and_then(|a| a.rsplit(|b| *b == b'/').next())
        .is_some_and(|name| name == b"postgres");
    if !is_postgres {
        return None;
    }
    let want = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let cwd_matches = std::fs::read_link(proc_dir.join("cwd")).is_ok_and(|c| c == want);
    let args_match = args.iter().any(|a| {
        let p = Path::new(std::ffi::OsStr::from_bytes(a));
        p == want || p == data_dir
    });
    (cwd_matches || args_match).then_some((pid, port))
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
    std::env::temp_dir().join(format!("weavster-queue-server-{h:016x}"))
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

/// A server still running on `data_dir` (its processes were killed) is
/// stopped; a `postmaster.pid` naming no live postmaster of this data dir
/// (its process is gone, or the pid was reused) is removed, and nothing is
/// signalled.
fn stop_leftover(bin: &Path, data_dir: &Path) -> Result<(), PgError> {
    let pid_file = data_dir.join("postmaster.pid");
    if !pid_file.exists() {
        return Ok(());
    }
    if live_postmaster(data_dir).is_some() {
        tracing::info!(data_dir = %data_dir.display(), "stopping a PostgreSQL left running by an earlier run");
        let pg_ctl = bin.join("pg_ctl");
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
    } else {
        tracing::info!(data_dir = %data_dir.display(), "removing a stale postmaster.pid");
        std::fs::remove_file(&pid_file).map_err(io(&pid_file))?;
    }
    Ok(())
}
