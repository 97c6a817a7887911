//! The embedded server for real: initdb (as root through the user-namespace
//! wrappers when CI runs as root), start, connect, restart on the same data,
//! recovery from a killed process's leftover server and from a stale pid file.

use std::path::Path;

use weavster_queue_server::{Embedded, Options};

async fn query_one(url: &str) -> i32 {
    let pool = sqlx::PgPool::connect(url).await.expect("connects");
    let v: i32 = sqlx::query_scalar("SELECT 41 + 1")
        .fetch_one(&pool)
        .await
        .expect("query");
    pool.close().await;
    v
}

fn check_password_file(root: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(root.join("password")).expect("password file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_restarts_and_recovers() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = Options::new(tmp.path().join(".weavster/postgres"));

    let pg = Embedded::start(&opts).await.expect("first start (initdb)");
    let url = pg.url();
    assert_eq!(query_one(&url).await, 42);
    check_password_file(&opts.root);
    pg.stop().await.expect("stops");
    assert!(!opts.root.join("data/postmaster.pid").exists());

    // Same data dir, same password.
    let pg = Embedded::start(&opts).await.expect("restart");
    let url2 = pg.url();
    assert_eq!(query_one(&url2).await, 42);
    let password = |u: &str| u.split('@').next().map(str::to_string);
    assert_eq!(password(&url), password(&url2));

    // A killed process leaves its server running: the next start stops it.
    pg.abandon();
    assert!(opts.root.join("data/postmaster.pid").exists());
    let pg = Embedded::start(&opts)
        .await
        .expect("start over a leftover server");
    assert_eq!(query_one(&pg.url()).await, 42);
    pg.stop().await.expect("stops");

    // A stale pid file (its process gone) is removed.
    std::fs::write(
        opts.root.join("data/postmaster.pid"),
        "999999\n/nonexistent\n0\n5432\n\n\n",
    )
    .expect("write pid file");
    let pg = Embedded::start(&opts)
        .await
        .expect("start over a stale pid file");
    assert_eq!(query_one(&pg.url()).await, 42);
    pg.stop().await.expect("stops");

    // A pid file naming a live process that is not our postgres (a reused
    // pid): that process is never signalled.
    let mut other = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("sleep");
    std::fs::write(
        opts.root.join("data/postmaster.pid"),
        format!(
            "{}\n{}\n0\n5432\n\n\n",
            other.id(),
            opts.root.join("data").display()
        ),
    )
    .expect("write pid file");
    let pg = Embedded::start(&opts)
        .await
        .expect("start over a reused pid");
    assert_eq!(query_one(&pg.url()).await, 42);
    assert!(
        other.try_wait().expect("wait").is_none(),
        "the unrelated process was signalled"
    );
    let _ = other.kill();
    let _ = other.wait();

    // Killed under a running process: started again on the same port.
    let (pid, _) =
        weavster_queue_server::live_postmaster(&opts.root.join("data")).expect("running");
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    for _ in 0..100 {
        if !pg.is_running() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(pg.ensure_running().await.expect("restarts"));
    assert_eq!(query_one(&pg.url()).await, 42);
    pg.stop().await.expect("stops");
}

/// Two users of one data dir share one server: the second joins the
/// first's, and the server stops only when the last one stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_users_share_the_server() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = Options::new(tmp.path().join(".weavster/postgres"));
    let first = Embedded::start(&opts).await.expect("first");
    let second = Embedded::start(&opts).await.expect("second joins");
    assert!(first.started_here());
    assert!(!second.started_here());
    assert_eq!(first.url(), second.url());
    first.stop().await.expect("first stops");
    assert!(second.is_running(), "stopped under its other user");
    assert_eq!(query_one(&second.url()).await, 42);
    second.stop().await.expect("second stops");
    assert!(!opts.root.join("data/postmaster.pid").exists());
}

#[test]
fn missing_binaries_are_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let err = weavster_queue_server::find_bin_dir(Some(tmp.path())).expect_err("no binaries there");
    let msg = err.to_string();
    assert!(msg.contains("WEAVSTER_PG_BIN"), "{msg}");
    assert!(msg.contains("initdb"), "{msg}");
}
