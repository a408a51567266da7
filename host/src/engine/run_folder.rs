//! The folder a run writes to: created for a new run (never over another run's checkpoint),
//! reopened with its last checkpoint for `--resume`, removed again when a run fails before
//! writing anything; and its `config.toml`.

use crate::checkpoint;
use crate::config::RunConfig;
use crate::outputs::utc_timestamp;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a run writes: `output_dir`, or a new folder `outputs/<UTC time>_<model>` (with a
/// `_2`, `_3`, ... suffix when runs start in the same second), created here so that no two
/// runs share it.
pub fn output_dir(config: &RunConfig) -> Result<PathBuf> {
    if let Some(d) = &config.output_dir {
        return Ok(PathBuf::from(d));
    }
    new_folder(
        Path::new("outputs"),
        &format!("{}_{}", utc_timestamp(), config.model),
    )
}

/// Removes, when dropped, a run folder that [`output_dir`] created if it is still empty
/// (the run failed before writing anything), so failed starts leave no empty folders.
pub struct RemoveIfEmpty(Option<PathBuf>);

impl RemoveIfEmpty {
    /// Guards `dir` when the run did not name its folder (`output_dir` unset).
    pub fn new(config: &RunConfig, dir: &Path) -> Self {
        RemoveIfEmpty(config.output_dir.is_none().then(|| dir.to_path_buf()))
    }
}

impl Drop for RemoveIfEmpty {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            // `remove_dir` removes empty folders only.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Creates and returns `parent/base`, or `parent/base_2`, `_3`, ... when taken.
fn new_folder(parent: &Path, base: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    for n in 1.. {
        let dir = parent.join(if n == 1 {
            base.to_string()
        } else {
            format!("{base}_{n}")
        });
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    unreachable!("the suffixes are unbounded")
}

/// The output folder of a run and, with `resume`, its last checkpoint; a new run never
/// starts over a folder that holds one.
pub fn run_folder(
    config: &RunConfig,
    resume: bool,
) -> Result<(PathBuf, Option<checkpoint::Checkpoint>)> {
    let dir = output_dir(config)?;
    let checkpoint_path = dir.join("checkpoints").join("last.safetensors");
    if resume {
        if !checkpoint_path.exists() {
            bail!("--resume: no checkpoint at {}", checkpoint_path.display());
        }
        let stored = checkpoint::load(&checkpoint_path)?;
        return Ok((dir, Some(stored)));
    }
    if checkpoint_path.exists() {
        bail!(
            "{} already holds a run (checkpoints/last.safetensors); continue it with --resume or choose another --output_dir",
            dir.display()
        );
    }
    Ok((dir, None))
}

/// `config.toml`: the resolved config, then the plugins used as comments.
pub fn write_config_file(
    dir: &Path,
    config: &RunConfig,
    plugins: &BTreeMap<String, String>,
) -> Result<()> {
    let mut text = config.to_toml();
    text.push_str("\n# plugins used:\n");
    for (what, provenance) in plugins {
        text.push_str(&format!("#   {what}: {provenance}\n"));
    }
    crate::atomic_file::write_atomic(&dir.join("config.toml"), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_run_folder_is_removed_only_while_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let config = crate::config::RunConfig::resolve(
            "ShapesBYOL",
            &[],
            &crate::registry::Registry::load(&[]).unwrap(),
        )
        .unwrap();
        assert!(config.output_dir.is_none());
        let empty = new_folder(tmp.path(), "failed").unwrap();
        drop(RemoveIfEmpty::new(&config, &empty));
        assert!(!empty.exists());
        let used = new_folder(tmp.path(), "used").unwrap();
        std::fs::write(used.join("metrics.csv"), "epoch,name,value\n").unwrap();
        drop(RemoveIfEmpty::new(&config, &used));
        assert!(used.join("metrics.csv").exists());
        // A folder the user named is left alone, empty or not.
        let mut named = config.clone();
        named.output_dir = Some("x".into());
        let mine = new_folder(tmp.path(), "mine").unwrap();
        drop(RemoveIfEmpty::new(&named, &mine));
        assert!(mine.exists());
    }

    #[test]
    fn runs_started_in_the_same_second_get_their_own_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("outputs");
        let first = new_folder(&parent, "20261128T101500Z_ShapesBYOL").unwrap();
        let second = new_folder(&parent, "20261128T101500Z_ShapesBYOL").unwrap();
        let third = new_folder(&parent, "20261128T101500Z_ShapesBYOL").unwrap();
        assert_eq!(first, parent.join("20261128T101500Z_ShapesBYOL"));
        assert_eq!(second, parent.join("20261128T101500Z_ShapesBYOL_2"));
        assert_eq!(third, parent.join("20261128T101500Z_ShapesBYOL_3"));
        assert!(first.is_dir() && second.is_dir() && third.is_dir());
    }
}
