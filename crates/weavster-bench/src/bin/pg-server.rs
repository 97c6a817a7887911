//! `pg-server DIR`: starts a PostgreSQL server with its data in DIR (Debian's
//! binaries through weavster-queue-server; as root through a user namespace) with
//! `wal_level = logical` (for the CDC benchmark), prints its connection URL
//! on one line, and stops it when standard input ends. For benchmark
//! scripts that need a target database.

use std::io::Read as _;
use std::process::Command;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: pg-server DIR"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let options = weavster_queue_server::Options::new(dir);
    let mut pg = rt.block_on(weavster_queue_server::Embedded::start(&options))?;
    let psql = pg.bin_dir().join("psql");
    let psql = if psql.exists() {
        psql
    } else {
        weavster_queue_server::find_bin_dir(None)?.join("psql")
    };
    let set = Command::new(&psql)
        .arg(pg.url())
        .args(["-qc", "ALTER SYSTEM SET wal_level = logical"])
        .status()
        .with_context(|| format!("running {}", psql.display()))?;
    anyhow::ensure!(set.success(), "ALTER SYSTEM SET wal_level failed");
    rt.block_on(pg.stop())?;
    pg = rt.block_on(weavster_queue_server::Embedded::start(&options))?;
    println!("{}", pg.url());
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    rt.block_on(pg.stop())?;
    Ok(())
}
