//! `weavster init [DIR]`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use include_dir::{Dir, include_dir};

use weavster_project::{is_identifier, to_identifier};

use crate::Global;

/// The scaffold, embedded at build time from `templates/project/`.
static TEMPLATE: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../templates/project");

const NAME_PLACEHOLDER: &str = "__PROJECT_NAME__";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory to create the project in (default: the project dir, i.e. `.`).
    dir: Option<PathBuf>,
    /// Write into a non-empty directory (files of the scaffold are overwritten).
    #[arg(long)]
    force: bool,
    /// Project name (default: the directory name, made a valid identifier).
    #[arg(long)]
    name: Option<String>,
}

pub fn run(g: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let dir = args.dir.clone().unwrap_or_else(|| g.project_dir());
    if dir.exists() {
        let non_empty = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some();
        if non_empty && !args.force {
            bail!(
                "{} is not empty; choose another directory or pass --force to write the scaffold into it",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = match &args.name {
        Some(n) => {
            if !is_identifier(n) {
                bail!(
                    "invalid project name `{n}`: use lowercase letters, digits and `_`, starting with a letter"
                );
            }
            n.clone()
        }
        None => {
            let base = dir
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|s| s.to_string_lossy().to_string()))
                .unwrap_or_else(|| "my_project".into());
            to_identifier(&base)
        }
    };
    let written = write_dir(&TEMPLATE, &dir, &name)?;
    crate::write_schemas(&dir);
    println!(
        "Created project `{name}` in {} ({written} files).",
        dir.display()
    );
    println!();
    println!("Next:");
    println!(
        "  weavster -C {} validate    # check every file",
        dir.display()
    );
    println!(
        "  weavster -C {} ls          # flows, connectors, target",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_dir(src: &Dir<'_>, dest: &Path, name: &str) -> anyhow::Result<usize> {
    let mut n = 0;
    for file in src.files() {
        let rel = file.path();
        let file_name = rel
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        // Dotfiles are stored without their dot so they do not act in this repo.
        let out_name = file_name
            .strip_prefix('_')
            .map(|f| format!(".{f}"))
            .unwrap_or(file_name);
        let out = dest.join(rel.with_file_name(out_name));
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let contents = match file.contents_utf8() {
            Some(text) => text.replace(NAME_PLACEHOLDER, name).into_bytes(),
            None => file.contents().to_vec(),
        };
        std::fs::write(&out, contents)
            .with_context(|| format!("cannot write {}", out.display()))?;
        n += 1;
    }
    for sub in src.dirs() {
        n += write_dir(sub, dest, name)?;
    }
    Ok(n)
}
