//! Setup-time check of a compiled folder against its manifest, without re-hashing gigabytes on
//! every start: the first start hashes every file (`cog_weights::verify`) and records each file's
//! size and modification time in `.ort-cache/verified.json`; later starts hash again only when
//! that record no longer matches. `COG_VERIFY_WEIGHTS=full` hashes on every start.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::UNIX_EPOCH;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Stamp {
    manifest_size: u64,
    files: BTreeMap<String, (u64, u128)>,
}

fn stamp_of(dir: &Path) -> Option<Stamp> {
    let manifest = std::fs::read(dir.join("manifest.json")).ok()?;
    let parsed: cog_weights::format::Manifest = serde_json::from_slice(&manifest).ok()?;
    let mut files = BTreeMap::new();
    for name in parsed.files.keys() {
        let meta = std::fs::metadata(dir.join(name)).ok()?;
        let mtime = meta
            .modified()
            .ok()?
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_nanos();
        files.insert(name.clone(), (meta.len(), mtime));
    }
    Some(Stamp {
        manifest_size: manifest.len() as u64,
        files,
    })
}

/// How the folder was checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// Every file hashed against the manifest.
    Hashed,
    /// Unchanged (sizes and times) since an earlier start hashed it.
    UnchangedSinceHashed,
    /// The folder has no manifest (a hand-made folder): nothing to check against.
    NoManifest,
}

pub fn check(dir: &Path) -> Result<Checked, String> {
    if !dir.join("manifest.json").exists() {
        return Ok(Checked::NoManifest);
    }
    let full = std::env::var("COG_VERIFY_WEIGHTS").as_deref() == Ok("full");
    let record = dir.join(".ort-cache/verified.json");
    let current = stamp_of(dir);
    if !full {
        if let (Some(now), Ok(bytes)) = (&current, std::fs::read(&record)) {
            if serde_json::from_slice::<Stamp>(&bytes).ok().as_ref() == Some(now) {
                return Ok(Checked::UnchangedSinceHashed);
            }
        }
    }
    cog_weights::verify::verify(dir).map_err(|e| format!("weights failed verification: {e}"))?;
    if let Some(now) = current {
        // Best effort: a read-only folder is simply hashed again next time.
        let _ = std::fs::create_dir_all(dir.join(".ort-cache"));
        let _ = std::fs::write(&record, serde_json::to_vec(&now).unwrap_or_default());
    }
    Ok(Checked::Hashed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), b"hello").unwrap();
        let sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let manifest = serde_json::json!({
            "format_version": 1, "architecture": "test", "dtype": "fp32", "quantization": {},
            "files": {"a.bin": {"sha256": sha, "size": 5}}, "tool_version": "0", "command": []
        });
        std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
        dir
    }

    #[test]
    fn hashes_once_then_trusts_an_unchanged_folder() {
        let dir = folder();
        assert_eq!(check(dir.path()), Ok(Checked::Hashed));
        assert_eq!(check(dir.path()), Ok(Checked::UnchangedSinceHashed));
    }

    #[test]
    fn a_changed_file_is_hashed_again_and_fails() {
        let dir = folder();
        assert_eq!(check(dir.path()), Ok(Checked::Hashed));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path().join("a.bin"), b"hellO").unwrap();
        let err = check(dir.path()).unwrap_err();
        assert!(err.contains("a.bin"), "{err}");
    }
}
