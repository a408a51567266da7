//! Writing a file so that a reader (or a crash) sees either the old content or the new one,
//! never a part: run folders, checkpoints, metrics and previews are written this way.

use anyhow::{Context, Result};
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    // A fixed name: a write interrupted by a kill leaves one temp file that the next write
    // replaces (each run has its own folder, so no two processes share it).
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let written = (|| {
        let mut file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))
    })();
    if let Err(e) = written {
        // A full disk or an I/O error: the previous file is untouched; the partial temporary
        // file goes (it would only take space).
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!(
            "{} was not replaced and is as it was",
            path.display()
        )));
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_replaces_leaving_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.txt"]);
        let err = write_atomic(&dir.path().join("no/such/dir/f"), b"x").unwrap_err();
        assert!(format!("{err:#}").contains("creating"), "{err:#}");
    }
}
