//! `pg-server DIR`: starts a PostgreSQL server with its data in DIR (Debian's
//! binaries through weavster-pg; as root through a user namespace), prints
//! its connection URL on one line, and stops it when standard input ends.
//! For benchmark scripts that need a target database.

use std::io::Read as _;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: pg-server DIR"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pg = rt.block_on(weavster_pg::Embedded::start(&weavster_pg::Options::new(
        dir,
    )))?;
    println!("{}", pg.url());
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    rt.block_on(pg.stop())?;
    Ok(())
}
