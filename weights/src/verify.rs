//! `cogrs weights verify DIR`: the folder matches its manifest, file by file.

use crate::build::hash_file;
use crate::format::{Manifest, FORMAT_VERSION};
use crate::Error;
use std::path::Path;

/// Checks every file's size and sha256 and that no unlisted file exists. Returns the manifest.
pub fn verify(dir: &Path) -> Result<Manifest, Error> {
    let manifest: Manifest = crate::checkpoint::read_json(&dir.join("manifest.json"))?;
    if manifest.format_version > FORMAT_VERSION {
        return Err(Error::Verify {
            dir: dir.to_path_buf(),
            problems: vec![format!(
                "format_version {} is newer than this tool's {FORMAT_VERSION}",
                manifest.format_version
            )],
        });
    }
    let mut problems = Vec::new();
    for (name, want) in &manifest.files {
        let p = dir.join(name);
        if !p.is_file() {
            problems.push(format!("{name}: missing"));
            continue;
        }
        // Size first: cheap, and catches truncation without hashing gigabytes.
        let size = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?.len();
        if size != want.size {
            problems.push(format!("{name}: size {size}, manifest says {}", want.size));
            continue;
        }
        let got = hash_file(&p)?;
        if got.sha256 != want.sha256 {
            problems.push(format!(
                "{name}: sha256 {}, manifest says {}",
                got.sha256, want.sha256
            ));
        }
    }
    for name in hash_dir_names(dir)? {
        if !manifest.files.contains_key(&name) {
            problems.push(format!("{name}: not in the manifest"));
        }
    }
    if problems.is_empty() {
        Ok(manifest)
    } else {
        Err(Error::Verify {
            dir: dir.to_path_buf(),
            problems,
        })
    }
}

/// Same listing rule as the builder: flat, regular files, not the manifest.
fn hash_dir_names(dir: &Path) -> Result<Vec<String>, Error> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "manifest.json" && entry.path().is_file() {
            names.push(name);
        }
    }
    Ok(names)
}
