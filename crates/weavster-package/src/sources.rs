//! The project's source files: found under the project dir, written as a
//! deterministic tar (sorted, mode 0644, uid/gid 0, one mtime), read back.

use std::io::Read as _;
use std::path::Path;

use crate::PackageError;

/// A file of the project, by its `/`-separated path from the project dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: String,
    pub bytes: Vec<u8>,
}

/// The directories packaged besides `weavster.yaml`.
const DIRS: [&str; 4] = ["connectors", "flows", "lookups", "tests"];

/// `weavster.yaml` and every file under connectors/, flows/, lookups/ and
/// tests/ of `root`, sorted; never `profiles.yaml` (targets and secrets
/// stay where the package runs), hidden files or symlinks leaving the dir.
pub fn project_sources(root: &Path) -> Result<Vec<SourceFile>, PackageError> {
    let mut out = Vec::new();
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| PackageError::Io {
            path: p.display().to_string(),
            message: e.to_string(),
        })
    };
    out.push(SourceFile {
        path: "weavster.yaml".into(),
        bytes: read(&root.join("weavster.yaml"))?,
    });
    for dir in DIRS {
        walk(root, &root.join(dir), &mut out, &read)?;
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut Vec<SourceFile>,
    read: &dyn Fn(&Path) -> Result<Vec<u8>, PackageError>,
) -> Result<(), PackageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(PackageError::Io {
                path: dir.display().to_string(),
                message: e.to_string(),
            });
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || name == "profiles.yaml" {
            continue;
        }
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            walk(root, &path, out, read)?;
        } else if kind.is_file() {
            let rel = path.strip_prefix(root).map_err(|_| {
                PackageError::Invalid(format!("{} is outside the project", path.display()))
            })?;
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().to_string())
                .collect();
            out.push(SourceFile {
                path: rel.join("/"),
                bytes: read(&path)?,
            });
        }
    }
    Ok(())
}

/// A tar of `files` (in the given order) with every entry dated `mtime`.
pub fn tar(files: &[SourceFile], mtime: u64) -> Result<Vec<u8>, PackageError> {
    let mut b = tar::Builder::new(Vec::new());
    for f in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(f.bytes.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &f.path, f.bytes.as_slice())
            .map_err(|e| PackageError::Invalid(format!("{}: {e}", f.path)))?;
    }
    b.into_inner()
        .map_err(|e| PackageError::Invalid(format!("sources: {e}")))
}

/// The files of a sources tar (relative paths only).
pub fn untar(bytes: &[u8]) -> Result<Vec<SourceFile>, PackageError> {
    let bad = |e: std::io::Error| PackageError::Invalid(format!("sources layer: {e}"));
    let mut a = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for entry in a.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path().map_err(bad)?.to_string_lossy().to_string();
        if path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(PackageError::Invalid(format!(
                "sources layer: unsafe path `{path}`"
            )));
        }
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(bad)?;
        out.push(SourceFile { path, bytes: data });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any files round-trip through the tar, and the same files give
        /// the same bytes.
        #[test]
        fn sources_round_trip(files in proptest::collection::btree_map("[a-z]{1,12}(/[a-z0-9_][a-z0-9_.]{0,19}){0,3}", proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 0..8)) {
            let files: Vec<SourceFile> = files.into_iter().map(|(path, bytes)| SourceFile { path, bytes }).collect();
            let a = tar(&files, 1_700_000_000).expect("tar");
            proptest::prop_assert_eq!(&a, &tar(&files, 1_700_000_000).expect("tar"));
            proptest::prop_assert_eq!(untar(&a).expect("untar"), files);
        }
    }
}
