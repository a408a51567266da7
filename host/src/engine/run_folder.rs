//! The folder a run writes to: created for a new run (never over another run's checkpoint),
//! reopened with its last checkpoint for `--resume`, removed again when a run fails before
//! writing anything; and its `config.toml`. For a run URL (`--output_dir=s3://...`) it is the
//! run's staging folder ([`crate::remote_run`]), which rank 0 uploads.
//!
//! One run per folder: the process that writes a folder holds an advisory lock (`flock`) on
//! its `run.lock` ([`RunLock`]) for the whole run, so a second process starting or resuming
//! there is refused with the first one's pid and host, before it reads or writes anything.
//! The kernel releases the lock when its process dies, however it dies, so a `run.lock` left
//! behind by a killed run never blocks the next one.

use crate::checkpoint;
use crate::config::RunConfig;
use crate::outputs::utc_timestamp;
use crate::remote_run::{cache_root, staging_dir, Location, RemoteRun};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a run writes: `output_dir`, or a new folder `outputs/<UTC time>_<model>` (with a
/// `_2`, `_3`, ... suffix when runs start in the same second), created here so that no two
/// runs share it.
pub fn output_dir(config: &RunConfig) -> Result<PathBuf> {
    if let Some(d) = &config.output_dir {
        return Ok(match Location::parse(d)? {
            Location::Local(dir) => dir,
            Location::Remote(url) => staging_dir(&cache_root(), &url),
        });
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

    /// Guards `dir`, a folder made for a command that was not given one.
    pub fn made(dir: &Path) -> Self {
        RemoveIfEmpty(Some(dir.to_path_buf()))
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
pub fn new_folder(parent: &Path, base: &str) -> Result<PathBuf> {
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

/// The name of the lock file in a run folder.
pub const LOCK_FILE: &str = "run.lock";

/// The run folder's `run.lock`, locked (`flock`, exclusive) by this process while this value
/// lives; the file names the holder (pid, host, start time) for whoever is refused. Dropping it
/// removes the file and releases the lock; a process that dies releases the lock too.
pub struct RunLock {
    /// Keeps the lock: it belongs to this open file and ends when the file is closed.
    _file: std::fs::File,
    /// Removed on drop; `None` when the filesystem cannot lock (then nothing is held).
    path: Option<PathBuf>,
}

impl RunLock {
    /// Locks `dir/run.lock` (creating `dir` if needed), or fails naming the live process that
    /// holds it. On a filesystem without `flock` support it warns and runs unlocked.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        use rustix::fs::{flock, FlockOperation};
        use rustix::io::Errno;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        loop {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(e) if e == Errno::WOULDBLOCK => bail!(
                    "{} is in use by another ssl-host process ({}): two runs writing one folder \
                     would mix their checkpoints and metrics; wait for that run to end (or stop \
                     it), or choose another --output_dir",
                    dir.display(),
                    describe_holder(&std::fs::read_to_string(&path).unwrap_or_default())
                ),
                Err(e) if e == Errno::NOLCK || e == Errno::OPNOTSUPP => {
                    eprintln!(
                        "warning: cannot lock {} ({e}): this filesystem has no file locks, so \
                         nothing stops a second process from writing this run folder",
                        path.display()
                    );
                    return Ok(RunLock {
                        _file: file,
                        path: None,
                    });
                }
                Err(e) => {
                    return Err(std::io::Error::from(e))
                        .with_context(|| format!("locking {}", path.display()))
                }
            }
            // The previous holder removes the file when it ends: if it did so between our
            // open and our lock, we hold a lock on a file nobody else opens. Start again.
            if !is_same_file(&file, &path) {
                continue;
            }
            write_holder(&file).with_context(|| format!("writing {}", path.display()))?;
            return Ok(RunLock {
                _file: file,
                path: Some(path),
            });
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still locked (the file closes after this), so that an empty run
        // folder can be removed and no process can lock the old file after it is gone.
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Whether `path` still names the open `file` (same device and inode).
fn is_same_file(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Replaces the lock file's content with this process's pid, host and start time.
fn write_holder(mut file: &std::fs::File) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    file.set_len(0)?;
    file.seek(std::io::SeekFrom::Start(0))?;
    write!(
        file,
        "pid={}\nhost={}\nstarted={}\n",
        std::process::id(),
        host_name(),
        utc_timestamp()
    )?;
    file.flush()
}

/// The name of this machine (the kernel's node name).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// "pid 123 on host gpu-7, started 20261130T091500Z" from a lock file's content.
fn describe_holder(content: &str) -> String {
    let field = |key: &str| {
        content.lines().find_map(|line| {
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::trim)
        })
    };
    match (field("pid"), field("host"), field("started")) {
        (Some(pid), Some(host), Some(started)) => {
            format!("pid {pid} on host {host}, started {started}")
        }
        (Some(pid), host, _) => format!("pid {pid} on host {}", host.unwrap_or("unknown")),
        _ => "its run.lock does not name it yet; it is just starting".into(),
    }
}

/// The output folder of a run, locked for this process ([`RunLock`]), and for a run URL the
/// remote run it is the staging folder of; with `resume` it must hold a checkpoint (read by the
/// caller), and a new run never starts over a folder, or a run URL, that holds one.
pub fn run_folder(
    config: &RunConfig,
    resume: bool,
) -> Result<(PathBuf, RunLock, Option<RemoteRun>)> {
    let remote = match config
        .output_dir
        .as_deref()
        .map(Location::parse)
        .transpose()?
    {
        Some(Location::Remote(url)) => Some(RemoteRun::new(url, config.storage_retry_seconds)),
        _ => None,
    };
    let dir = output_dir(config)?;
    let checkpoint_path = checkpoint::last_in(&dir);
    if resume && !dir.exists() {
        bail!("--resume: no checkpoint at {}", checkpoint_path.display());
    }
    let lock = RunLock::acquire(&dir)?;
    if resume {
        if !checkpoint_path.exists() {
            bail!("--resume: no checkpoint at {}", checkpoint_path.display());
        }
        return Ok((dir, lock, remote));
    }
    if let Some(run) = &remote {
        if checkpoint_path.exists() {
            bail!(
                "{} already holds a run: its staging folder {} has a checkpoint, perhaps not \
                 uploaded yet; continue it with --resume or choose another --output_dir",
                run.url(),
                dir.display()
            );
        }
        if let Some(marker) = run.marker()? {
            bail!(
                "{} already holds a run (its `latest` names {}); continue it with --resume or \
                 choose another --output_dir",
                run.url(),
                marker.checkpoint
            );
        }
    }
    if checkpoint_path.exists() {
        bail!(
            "{} already holds a run (checkpoints/last.safetensors); continue it with --resume or choose another --output_dir",
            dir.display()
        );
    }
    Ok((dir, lock, remote))
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

    #[test]
    fn a_second_lock_on_a_folder_is_refused_naming_the_holder_until_it_is_released() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let held = RunLock::acquire(&dir).unwrap();
        let content = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert!(
            content.starts_with(&format!("pid={}\nhost=", std::process::id())),
            "{content}"
        );
        // flock locks belong to open files, so a second open in this process conflicts too.
        let err = format!("{:#}", RunLock::acquire(&dir).err().unwrap());
        assert!(
            err.contains(&format!(
                "{} is in use by another ssl-host process (pid {} on host ",
                dir.display(),
                std::process::id()
            )),
            "{err}"
        );
        drop(held);
        assert!(!dir.join(LOCK_FILE).exists());
        let again = RunLock::acquire(&dir).unwrap();
        drop(again);
    }

    /// Run as a child process by the next test: holds the lock named by the environment
    /// until its standard input closes or it is killed. Does nothing in a normal test run.
    #[test]
    fn child_process_holding_a_run_lock() {
        let Ok(dir) = std::env::var("SSL_HOST_TEST_HOLD_RUN_LOCK") else {
            return;
        };
        let _lock = RunLock::acquire(Path::new(&dir)).unwrap();
        println!("\nrun lock held");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }

    #[test]
    fn a_live_process_blocks_the_folder_and_a_killed_one_does_not() {
        use std::io::BufRead;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "engine::run_folder::tests::child_process_holding_a_run_lock",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SSL_HOST_TEST_HOLD_RUN_LOCK", &dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut lines = stdout.lines();
        assert!(
            lines.any(|l| l.map(|l| l.trim() == "run lock held").unwrap_or(false)),
            "the child never took the lock"
        );
        let err = format!("{:#}", RunLock::acquire(&dir).err().unwrap());
        assert!(
            err.contains(&format!("(pid {} on host ", child.id())),
            "{err}"
        );
        // Killed without a chance to clean up: run.lock stays, but its lock died with it.
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(dir.join(LOCK_FILE).exists());
        let lock = RunLock::acquire(&dir).unwrap();
        let content = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert!(
            content.starts_with(&format!("pid={}\n", std::process::id())),
            "{content}"
        );
        drop(lock);
    }

    #[test]
    fn a_holder_is_described_from_its_lock_file() {
        assert_eq!(
            describe_holder("pid=42\nhost=gpu-7\nstarted=20261130T091500Z\n"),
            "pid 42 on host gpu-7, started 20261130T091500Z"
        );
        assert_eq!(describe_holder("pid=42\n"), "pid 42 on host unknown");
        assert!(describe_holder("").contains("just starting"));
    }
}
