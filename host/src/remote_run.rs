//! Run outputs in object storage: `--output_dir=s3://bucket/runs/NAME` (or `az://`, `gs://`,
//! `https://`). The run is written exactly as a local run, into a staging folder on this machine
//! (`<cache>/runs/NAME-<hash of the URL>/`, [`staging_dir`]), and rank 0 uploads what it writes
//! as it is written, in the background ([`Uploader`]): `config.toml` at the start,
//! `metrics.csv` and the TensorBoard event file after each epoch, and every checkpoint under its
//! own name (`checkpoints/epoch-0003-step-000000120.safetensors`: a multipart upload, visible
//! only whole), then the `latest` marker ([`Marker`]) that names it, written last; the
//! checkpoint the marker named before is deleted after that.
//!
//! Readers (`--resume`, `--resume=auto`, `--local_ssl_weights_path`,
//! `pretraining_run_recovery_id`, `embed`, `predict`, `export-encoder`, `inspect-checkpoint`)
//! go through the marker ([`RemoteRun::checkout`]): the checkpoint it names, with the run's
//! other outputs, is downloaded into the same staging folder, unless that folder already holds
//! this checkpoint or a newer one. An upload that failed leaves the newest checkpoint there: a
//! resume on this machine continues from it, and uploads it.
//!
//! An upload that still fails after the storage module's retries (`storage_retry_seconds`)
//! stops the run at its next output, with an error naming the URL and the staging folder;
//! nothing written locally is touched, so `--resume` continues. The run's end waits for every
//! upload.
//!
//! What this module does not do: talk to a cloud itself ([`crate::storage`] does, and keeps
//! credentials out of errors), or decide what a run writes and when (the engine does; this
//! module only mirrors it).

use crate::checkpoint;
use crate::storage::{sha256_file, ObjectUrl, RetryPolicy, Storage, StorageOptions};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The marker object under a run URL, naming its latest checkpoint.
pub const MARKER: &str = "latest";

/// Where an `output_dir` (or a checkpoint parameter) points.
#[derive(Clone, Debug, PartialEq)]
pub enum Location {
    /// A local folder or file (also a `file://` URL).
    Local(PathBuf),
    /// An object-storage URL, without a trailing `/`.
    Remote(ObjectUrl),
}

impl Location {
    /// A path stays a path; a URL is parsed (an unknown scheme or credentials in it are errors).
    pub fn parse(text: &str) -> Result<Location> {
        if !ObjectUrl::is_url(text) {
            return Ok(Location::Local(PathBuf::from(text)));
        }
        let url = ObjectUrl::parse(text.trim_end_matches('/'))?;
        Ok(match url.local_path() {
            Some(path) => Location::Local(path.to_path_buf()),
            None => Location::Remote(url),
        })
    }
}

/// This machine's folder for staging folders and downloaded checkpoints: `$SSL_HOST_CACHE`,
/// else `$XDG_CACHE_HOME/ssl-host`, else `~/.cache/ssl-host` (the dataset cache's folder).
pub fn cache_root() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    var("SSL_HOST_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"))
            .join("ssl-host")
    })
}

/// The staging folder of the run at `url` under `root`: `runs/<last URL segment>-<16 hex digits
/// of the URL's SHA-256>`, one per URL, so a resume on the same machine finds it again.
pub fn staging_dir(root: &Path, url: &ObjectUrl) -> PathBuf {
    let digest = Sha256::digest(url.to_string().as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let name: String = url
        .file_name()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let name = name.trim_start_matches('.');
    root.join("runs").join(if name.is_empty() {
        hash
    } else {
        format!("{name}-{hash}")
    })
}

/// The content of a run's `latest` object (JSON): the checkpoint object it names, relative to
/// the run URL, where that checkpoint is in the run, and its size and SHA-256.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    /// `checkpoints/<name>.safetensors`.
    pub checkpoint: String,
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimizer steps taken.
    pub global_step: u64,
    /// Bytes.
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

impl Marker {
    /// The object name of the checkpoint written after `global_step` steps, `epochs_done`
    /// epochs: `checkpoints/epoch-0003-step-000000120.safetensors`.
    pub fn object_name(epochs_done: usize, global_step: u64) -> String {
        format!("checkpoints/epoch-{epochs_done:04}-step-{global_step:09}.safetensors")
    }

    /// Reads the marker object at `url`, refusing anything else.
    pub fn parse(bytes: &[u8], url: &ObjectUrl) -> Result<Marker> {
        let marker: Marker = serde_json::from_slice(bytes).map_err(|e| {
            anyhow!(
                "{url} is not an ssl-host run marker (JSON naming the run's latest checkpoint, \
                 {{\"checkpoint\": \"checkpoints/....safetensors\", ...}}): {e}"
            )
        })?;
        let plain = marker
            .checkpoint
            .strip_prefix("checkpoints/")
            .is_some_and(|n| {
                n.ends_with(".safetensors") && !n.starts_with('.') && !n.contains('/')
            });
        if !plain {
            bail!(
                "{url} names `{}`, not a checkpoint object under checkpoints/",
                marker.checkpoint
            );
        }
        if marker.sha256.len() != 64 || !marker.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{url}: `sha256` is `{}`, not 64 hex digits", marker.sha256);
        }
        Ok(marker)
    }

    /// The marker object's content.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a marker serialises");
        text.push('\n');
        text
    }

    fn position(&self) -> (usize, u64) {
        (self.epochs_done, self.global_step)
    }
}

/// Storage options whose retries end after `retry_seconds` (`storage_retry_seconds`).
pub fn storage_options(retry_seconds: f64) -> StorageOptions {
    let limit = Duration::from_secs_f64(retry_seconds.max(0.0));
    let default = RetryPolicy::default();
    StorageOptions {
        retry: RetryPolicy {
            time_limit: limit,
            max_backoff: default
                .max_backoff
                .min(limit.max(Duration::from_millis(100))),
            ..default
        },
        ..StorageOptions::default()
    }
}

/// A run in object storage and its staging folder on this machine.
pub struct RemoteRun {
    url: ObjectUrl,
    staging: PathBuf,
    storage: Storage,
}

impl RemoteRun {
    /// The run at `url` (no request is made yet), staged in [`staging_dir`] under
    /// [`cache_root`]; requests are retried for `retry_seconds`.
    pub fn new(url: ObjectUrl, retry_seconds: f64) -> RemoteRun {
        RemoteRun::staged_in(staging_dir(&cache_root(), &url), url, retry_seconds)
    }

    /// The run at `url`, staged in `staging`.
    pub fn staged_in(staging: PathBuf, url: ObjectUrl, retry_seconds: f64) -> RemoteRun {
        let mut options = storage_options(retry_seconds);
        if url.to_string().starts_with("http") {
            // A plain HTTP(S) server (WebDAV) has no multipart uploads: each object goes in
            // one PUT, which such servers make visible whole.
            options.part_size = usize::MAX >> 1;
        }
        RemoteRun {
            staging,
            storage: Storage::from_process_env(options),
            url,
        }
    }

    /// The run URL.
    pub fn url(&self) -> &ObjectUrl {
        &self.url
    }

    /// The staging folder.
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// The run's `latest` marker, `None` when it has none (no checkpoint uploaded yet).
    pub fn marker(&self) -> Result<Option<Marker>> {
        let at = self.url.join(MARKER)?;
        if self.storage.head(&at)?.is_none() {
            return Ok(None);
        }
        let bytes = self.storage.get(&at)?;
        Marker::parse(&bytes, &at).map(Some)
    }

    /// Makes the staging folder's `checkpoints/last.safetensors` the run's newest checkpoint:
    /// the one the marker names, downloaded with the run's other outputs, unless the folder
    /// holds it or a newer one already. Its path; `None` when neither has a checkpoint.
    pub fn checkout(&self) -> Result<Option<PathBuf>> {
        let local = checkpoint::last_in(&self.staging);
        let here = local
            .exists()
            .then(|| checkpoint::read_info(&local).ok())
            .flatten()
            .map(|info| (info.epochs_done, info.global_step));
        match (self.marker()?, here) {
            (None, None) => Ok(None),
            (None, Some((epochs, step))) => {
                eprintln!(
                    "note: {} has no checkpoint yet; continuing from the staging folder {} \
                     (epoch {epochs}, step {step}), whose uploads had not finished",
                    self.url,
                    self.staging.display()
                );
                Ok(Some(local))
            }
            (Some(marker), Some(here)) if here >= marker.position() => {
                if here > marker.position() {
                    eprintln!(
                        "note: the staging folder {} holds a newer checkpoint (epoch {}, step \
                         {}) than {} (epoch {}, step {}), whose upload had not finished: \
                         continuing from it",
                        self.staging.display(),
                        here.0,
                        here.1,
                        self.url,
                        marker.epochs_done,
                        marker.global_step
                    );
                }
                Ok(Some(local))
            }
            (Some(marker), _) => {
                self.download(&marker)?;
                Ok(Some(local))
            }
        }
    }

    /// Downloads the run's outputs, then the checkpoint `marker` names, into the staging folder.
    fn download(&self, marker: &Marker) -> Result<()> {
        let source = self.url.join(&marker.checkpoint)?;
        eprintln!("downloading {source} into {}", self.staging.display());
        let prefix = format!("{}/", self.url);
        for object in self.storage.list(&self.url)? {
            let text = object.url.to_string();
            let Some(relative) = text.strip_prefix(&prefix) else {
                continue;
            };
            let plain = relative
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != "..");
            if relative == MARKER || relative.starts_with("checkpoints/") || !plain {
                continue;
            }
            download_to(
                &self.storage,
                &object.url,
                &self.staging.join(relative),
                None,
            )?;
        }
        // Last: a checkpoint in the staging folder says its other outputs are there too.
        download_to(
            &self.storage,
            &source,
            &checkpoint::last_in(&self.staging),
            Some((marker.size, &marker.sha256)),
        )
    }
}

/// Downloads `url` to `dest` through a temporary file renamed into place once whole (and, with
/// `expect`, of that size and SHA-256), so a reader never sees part of it.
fn download_to(
    storage: &Storage,
    url: &ObjectUrl,
    dest: &Path,
    expect: Option<(u64, &str)>,
) -> Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // One temporary name per process: two processes of a node may download the same run.
    let tmp = dir.join(format!(".{name}.{}.download", std::process::id()));
    let result = (|| {
        let file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut sink = std::io::BufWriter::new(file);
        let (_, sha) = storage.download(url, &mut sink, &mut |size| match expect {
            Some((want, _)) if size != want => bail!(
                "{url} is {size} bytes, but the run's `latest` marker says {want}: it changed \
                 while being read, or the marker is stale; try again"
            ),
            _ => Ok(()),
        })?;
        if let Some((_, want)) = expect {
            if sha != want {
                bail!(
                    "{url}: SHA-256 {sha} differs from {want}, which the run's `latest` marker \
                     records: the object is not the checkpoint that was uploaded"
                );
            }
        }
        let file = sink
            .into_inner()
            .map_err(|e| anyhow!("writing {}: {}", tmp.display(), e.error()))?;
        file.sync_all()
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, dest)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The local checkpoint file that `given`, a URL given for a checkpoint (`--checkpoint`,
/// `local_ssl_weights_path`), stands for: a run URL's latest checkpoint ([`RemoteRun::checkout`])
/// or a checkpoint object (`....safetensors`) downloaded into this machine's cache; a `file://`
/// URL is its path.
pub fn local_checkpoint(given: &str) -> Result<PathBuf> {
    let url = match Location::parse(given)? {
        Location::Local(path) => return Ok(path),
        Location::Remote(url) => url,
    };
    let retry = RetryPolicy::default().time_limit.as_secs_f64();
    if url.file_name().is_some_and(|n| n.ends_with(".safetensors")) {
        let storage = Storage::from_process_env(storage_options(retry));
        let digest = Sha256::digest(url.to_string().as_bytes());
        let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let dest = cache_root()
            .join("checkpoints")
            .join(format!("{hash}-{}", url.file_name().unwrap_or_default()));
        let info = storage
            .head(&url)?
            .with_context(|| format!("{url}: no such checkpoint object"))?;
        let cached = std::fs::metadata(&dest).is_ok_and(|m| m.len() == info.size);
        if !cached {
            eprintln!("downloading {url} into {}", dest.display());
            download_to(&storage, &url, &dest, None)?;
        }
        return Ok(dest);
    }
    let run = RemoteRun::new(url, retry);
    run.checkout()?.with_context(|| {
        format!(
            "{} holds no ssl-host run: it has no `{MARKER}` marker (not a run written with \
             --output_dir={}, or its first checkpoint was never uploaded)",
            run.url(),
            run.url()
        )
    })
}

/// What `pretraining_run_recovery_id` names: a URL or an existing local path as given, else a
/// run name under `runs_location` (a URL or a folder).
pub fn recovery_location(id: &str, runs_location: Option<&str>) -> Result<String> {
    if ObjectUrl::is_url(id) || Path::new(id).exists() {
        return Ok(id.to_string());
    }
    let Some(root) = runs_location.filter(|r| !r.is_empty()) else {
        bail!(
            "pretraining_run_recovery_id={id}: not a URL or an existing folder, so it names a run \
             under runs_location, which is not set: give --runs_location=URL_OR_FOLDER (or set \
             SSL_HOST_RUNS), or the run's URL"
        );
    };
    if id.is_empty() || id.contains('/') || id == "." || id == ".." {
        bail!("pretraining_run_recovery_id={id}: a run name is one path segment (or give a URL)");
    }
    Ok(match Location::parse(root).context("runs_location")? {
        Location::Remote(url) => url.join(id)?.to_string(),
        Location::Local(path) => path.join(id).display().to_string(),
    })
}

/// Uploads a run's outputs from its staging folder, in order, on a background thread: one
/// upload at a time, a newer version of a file replacing one still waiting. After a failure
/// (the storage module's retries exhausted) nothing more is uploaded, and every later call,
/// like [`Uploader::finish`], returns the error.
pub struct Uploader {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
    url: ObjectUrl,
    staging: PathBuf,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Whether a job is being uploaded.
    busy: bool,
    closed: bool,
    failed: Option<String>,
}

enum Job {
    /// A small file's content, as it was when queued.
    File { name: String, bytes: Vec<u8> },
    /// A checkpoint: a hard link to (or copy of) the file written, which a later checkpoint
    /// cannot replace; removed once uploaded.
    Checkpoint {
        snapshot: PathBuf,
        epochs_done: usize,
        global_step: u64,
    },
}

impl Job {
    fn same_target(&self, other: &Job) -> bool {
        match (self, other) {
            (Job::File { name: a, .. }, Job::File { name: b, .. }) => a == b,
            (Job::Checkpoint { .. }, Job::Checkpoint { .. }) => true,
            _ => false,
        }
    }

    fn discard(self) {
        if let Job::Checkpoint { snapshot, .. } = self {
            let _ = std::fs::remove_file(snapshot);
        }
    }
}

/// The prefix of checkpoint snapshots waiting for upload in `checkpoints/`.
const SNAPSHOT_PREFIX: &str = ".upload-";

impl Uploader {
    /// Starts uploading for `run`, whose marker (if any) names the checkpoint uploaded last. A
    /// checkpoint in the staging folder that the marker does not name (a resumed run whose
    /// uploads had not finished) is queued first.
    pub fn start(run: RemoteRun) -> Result<Uploader> {
        let previous = run.marker()?;
        let local = checkpoint::last_in(&run.staging);
        let pending = local
            .exists()
            .then(|| checkpoint::read_info(&local))
            .transpose()?
            .map(|info| (info.epochs_done, info.global_step))
            .filter(|here| previous.as_ref().map(Marker::position) != Some(*here));
        // Snapshots left by a process that was killed: the checkpoint itself is intact.
        if let Ok(entries) = std::fs::read_dir(run.staging.join("checkpoints")) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(SNAPSHOT_PREFIX)
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let (url, staging) = (run.url.clone(), run.staging.clone());
        let worker = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("ssl-host-upload".into())
                .spawn(move || work(run, previous, &shared))
                .context("starting the upload thread")?
        };
        let uploader = Uploader {
            shared,
            worker: Some(worker),
            url,
            staging,
        };
        if let Some((epochs_done, global_step)) = pending {
            uploader.checkpoint(epochs_done, global_step)?;
        }
        Ok(uploader)
    }

    /// Queues the staging folder's file `name` (`/`-separated) as it is now.
    pub fn file(&self, name: &str) -> Result<()> {
        let path = self.staging.join(name);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        self.push(Job::File {
            name: name.to_string(),
            bytes,
        })
    }

    /// Queues every file of the staging folder's `logs/` (TensorBoard's event files).
    pub fn logs(&self) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(self.staging.join("logs")) else {
            return Ok(());
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        for name in names {
            self.file(&format!("logs/{name}"))?;
        }
        Ok(())
    }

    /// Queues the checkpoint just written (`checkpoints/last.safetensors`), after `epochs_done`
    /// epochs and `global_step` steps; the marker follows its upload.
    pub fn checkpoint(&self, epochs_done: usize, global_step: u64) -> Result<()> {
        self.check()?;
        let written = checkpoint::last_in(&self.staging);
        let snapshot = written.with_file_name(format!(
            "{SNAPSHOT_PREFIX}{epochs_done}-{global_step}.safetensors"
        ));
        let _ = std::fs::remove_file(&snapshot);
        if std::fs::hard_link(&written, &snapshot).is_err() {
            std::fs::copy(&written, &snapshot).with_context(|| {
                format!(
                    "copying {} to {} for its upload",
                    written.display(),
                    snapshot.display()
                )
            })?;
        }
        self.push(Job::Checkpoint {
            snapshot,
            epochs_done,
            global_step,
        })
    }

    /// The error of a failed upload, if one failed.
    pub fn check(&self) -> Result<()> {
        match &self.lock().failed {
            Some(cause) => Err(self.failure(cause)),
            None => Ok(()),
        }
    }

    /// Waits for every queued upload; the error of the first that failed.
    pub fn finish(mut self) -> Result<()> {
        let waiting = {
            let state = self.lock();
            state.queue.len() + usize::from(state.busy)
        };
        if waiting > 0 {
            eprintln!("waiting for {waiting} upload(s) to {}", self.url);
        }
        self.close();
        self.check()
    }

    fn push(&self, job: Job) -> Result<()> {
        let mut state = self.lock();
        if let Some(cause) = &state.failed {
            let error = self.failure(cause);
            drop(state);
            job.discard();
            return Err(error);
        }
        if let Some(at) = state.queue.iter().position(|j| j.same_target(&job)) {
            if let Some(old) = state.queue.remove(at) {
                old.discard();
            }
        }
        state.queue.push_back(job);
        self.shared.wake.notify_all();
        Ok(())
    }

    fn close(&mut self) {
        self.lock().closed = true;
        self.shared.wake.notify_all();
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                self.lock().failed = Some("the upload thread panicked".into());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn failure(&self, cause: &str) -> anyhow::Error {
        anyhow!(
            "uploading the run's outputs to {url} failed, so the run stopped: {cause}\n\
             everything it wrote is in its staging folder {staging}, the last checkpoint \
             included; once {url} can be reached, `ssl-host --output_dir={url} --resume` \
             continues from there and uploads what is missing",
            url = self.url,
            staging = self.staging.display()
        )
    }
}

impl Drop for Uploader {
    /// A run that ends early (an error, a signal) still uploads what it queued.
    fn drop(&mut self) {
        if self.worker.is_some() {
            self.close();
            if let Some(cause) = &self.lock().failed {
                eprintln!("warning: {:#}", self.failure(cause));
            }
        }
    }
}

/// The upload thread: takes jobs in order until closed and drained, or until one fails.
fn work(run: RemoteRun, mut previous: Option<Marker>, shared: &Shared) {
    loop {
        let job = {
            let mut state = shared
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            while state.queue.is_empty() && !state.closed {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            match state.queue.pop_front() {
                Some(job) => {
                    state.busy = true;
                    job
                }
                None => return,
            }
        };
        let result = upload(&run, &job, &mut previous);
        job.discard();
        let mut state = shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.busy = false;
        if let Err(e) = result {
            state.failed = Some(format!("{e:#}"));
            for job in state.queue.drain(..) {
                job.discard();
            }
            return;
        }
    }
}

/// One upload: a file; or a checkpoint, then the marker naming it, then (no longer named) the
/// checkpoint the marker named before.
fn upload(run: &RemoteRun, job: &Job, previous: &mut Option<Marker>) -> Result<()> {
    match job {
        Job::File { name, bytes } => run
            .storage
            .put(&run.url.join(name)?, Bytes::from(bytes.clone())),
        Job::Checkpoint {
            snapshot,
            epochs_done,
            global_step,
        } => {
            let mut file = std::fs::File::open(snapshot)
                .with_context(|| format!("opening {}", snapshot.display()))?;
            let size = file.metadata()?.len();
            let sha256 = sha256_file(&mut file)?;
            let name = Marker::object_name(*epochs_done, *global_step);
            run.storage
                .put_file(&run.url.join(&name)?, snapshot, &mut |_| {})?;
            let marker = Marker {
                checkpoint: name,
                epochs_done: *epochs_done,
                global_step: *global_step,
                size,
                sha256,
            };
            run.storage
                .put(&run.url.join(MARKER)?, Bytes::from(marker.to_json()))?;
            if let Some(old) = previous.replace(marker) {
                if previous
                    .as_ref()
                    .is_some_and(|m| m.checkpoint != old.checkpoint)
                {
                    if let Err(e) = run.storage.delete(&run.url.join(&old.checkpoint)?) {
                        eprintln!("warning: the previous checkpoint stays: {e:#}");
                    }
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_url_has_one_staging_folder_named_for_it() {
        let root = Path::new("/cache");
        let url = |t: &str| match Location::parse(t).unwrap() {
            Location::Remote(u) => u,
            other => panic!("{other:?}"),
        };
        let a = staging_dir(root, &url("s3://bucket/runs/a"));
        assert!(a.starts_with("/cache/runs"), "{}", a.display());
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("a-") && name.len() == 2 + 16, "{name}");
        // A trailing slash is the same run; another bucket or cloud is another.
        assert_eq!(staging_dir(root, &url("s3://bucket/runs/a/")), a);
        assert_ne!(staging_dir(root, &url("az://bucket/runs/a")), a);
        assert_ne!(staging_dir(root, &url("s3://other/runs/a")), a);
        // Odd characters do not make odd folder names.
        let odd = staging_dir(root, &url("gs://b/runs/x%20y..z"));
        let odd = odd.file_name().unwrap().to_str().unwrap();
        assert!(
            odd.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "{odd}"
        );
        assert_eq!(
            Location::parse("runs/local").unwrap(),
            Location::Local("runs/local".into())
        );
        assert_eq!(
            Location::parse("file:///tmp/run").unwrap(),
            Location::Local("/tmp/run".into())
        );
        assert!(Location::parse("ftp://host/run").is_err());
    }

    #[test]
    fn a_marker_round_trips_and_anything_else_is_refused() {
        let at = ObjectUrl::parse("s3://b/runs/a/latest").unwrap();
        let marker = Marker {
            checkpoint: Marker::object_name(3, 120),
            epochs_done: 3,
            global_step: 120,
            size: 1234,
            sha256: "ab".repeat(32),
        };
        assert_eq!(
            marker.checkpoint,
            "checkpoints/epoch-0003-step-000000120.safetensors"
        );
        assert_eq!(
            Marker::parse(marker.to_json().as_bytes(), &at).unwrap(),
            marker
        );
        let with = |field: &str, value: serde_json::Value| {
            let mut json = serde_json::to_value(&marker).unwrap();
            json[field] = value;
            json.to_string()
        };
        for (bad, needle) in [
            ("not json".to_string(), "not an ssl-host run marker"),
            (
                with("checkpoint", "../../elsewhere.safetensors".into()),
                "not a checkpoint object",
            ),
            (
                with("checkpoint", "checkpoints/sub/x.safetensors".into()),
                "not a checkpoint object",
            ),
            (with("sha256", "xyz".into()), "not 64 hex digits"),
            (with("extra", 1.into()), "unknown field"),
        ] {
            let e = format!("{:#}", Marker::parse(bad.as_bytes(), &at).unwrap_err());
            assert!(
                e.contains(needle) && e.contains("s3://b/runs/a/latest"),
                "{e}"
            );
        }
    }

    #[test]
    fn uploads_end_with_the_marker_naming_the_last_checkpoint_which_a_checkout_fetches() {
        let tmp = tempfile::tempdir().unwrap();
        // A local "bucket": the storage module serves paths through the same calls.
        let url = ObjectUrl::local(&tmp.path().join("bucket/runs/a")).unwrap();
        let staging = tmp.path().join("staging");
        let uploader =
            Uploader::start(RemoteRun::staged_in(staging.clone(), url.clone(), 1.0)).unwrap();
        let written = checkpoint::last_in(&staging);
        std::fs::create_dir_all(written.parent().unwrap()).unwrap();
        crate::atomic_file::write_atomic(&written, b"first checkpoint").unwrap();
        uploader.checkpoint(1, 10).unwrap();
        // Replaced at once, as the next epoch's checkpoint: the queued one keeps its content.
        crate::atomic_file::write_atomic(&written, b"second checkpoint").unwrap();
        std::fs::write(staging.join("metrics.csv"), "epoch,name,value\n0,a,1\n").unwrap();
        uploader.file("metrics.csv").unwrap();
        uploader.checkpoint(2, 20).unwrap();
        uploader.finish().unwrap();

        let bucket = url.local_path().unwrap();
        let marker = Marker::parse(
            &std::fs::read(bucket.join(MARKER)).unwrap(),
            &url.join(MARKER).unwrap(),
        )
        .unwrap();
        assert_eq!(marker.checkpoint, Marker::object_name(2, 20));
        assert_eq!(
            (marker.epochs_done, marker.global_step, marker.size),
            (2, 20, 17)
        );
        assert_eq!(
            std::fs::read(bucket.join(&marker.checkpoint)).unwrap(),
            b"second checkpoint"
        );
        // One checkpoint object: the first was replaced in the queue or deleted after.
        let objects: Vec<_> = std::fs::read_dir(bucket.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(objects.len(), 1, "{objects:?}");
        // No snapshot is left in the staging folder.
        let staged: Vec<_> = std::fs::read_dir(written.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(staged, ["last.safetensors"]);

        // Another machine's staging folder gets the run: outputs and checkpoint.
        let elsewhere = tmp.path().join("elsewhere");
        let run = RemoteRun::staged_in(elsewhere.clone(), url.clone(), 1.0);
        run.download(&run.marker().unwrap().unwrap()).unwrap();
        assert_eq!(
            std::fs::read(checkpoint::last_in(&elsewhere)).unwrap(),
            b"second checkpoint"
        );
        assert_eq!(
            std::fs::read_to_string(elsewhere.join("metrics.csv")).unwrap(),
            "epoch,name,value\n0,a,1\n"
        );
        // A checkpoint object that is not what the marker says is refused, and not installed.
        std::fs::write(bucket.join(&marker.checkpoint), b"SECOND checkpoint").unwrap();
        std::fs::remove_file(checkpoint::last_in(&elsewhere)).unwrap();
        let e = format!("{:#}", run.download(&marker).unwrap_err());
        assert!(
            e.contains("SHA-256") && e.contains(&marker.checkpoint),
            "{e}"
        );
        assert!(!checkpoint::last_in(&elsewhere).exists());
    }

    #[test]
    fn a_failed_upload_is_an_error_naming_the_url_and_the_staging_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let url = ObjectUrl::local(&tmp.path().join("bucket/runs/a")).unwrap();
        let staging = tmp.path().join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("config.toml"), "x = 1\n").unwrap();
        let uploader =
            Uploader::start(RemoteRun::staged_in(staging.clone(), url.clone(), 0.5)).unwrap();
        // The bucket becomes a file: nothing can be written under it.
        std::fs::write(tmp.path().join("bucket"), "").unwrap();
        uploader.file("config.toml").unwrap();
        let e = format!("{:#}", uploader.finish().unwrap_err());
        for needle in [
            format!("uploading the run's outputs to {url} failed"),
            staging.display().to_string(),
            format!("--output_dir={url} --resume"),
        ] {
            assert!(e.contains(&needle), "lacks {needle}: {e}");
        }
        assert!(staging.join("config.toml").exists());
    }

    #[test]
    fn a_recovery_id_is_a_url_a_folder_or_a_run_name_under_runs_location() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().display().to_string();
        assert_eq!(
            recovery_location("s3://b/runs/a", None).unwrap(),
            "s3://b/runs/a"
        );
        assert_eq!(recovery_location(&folder, None).unwrap(), folder);
        assert_eq!(
            recovery_location("byol_1", Some("az://models/runs/")).unwrap(),
            "az://models/runs/byol_1"
        );
        assert_eq!(
            recovery_location("byol_1", Some(&folder)).unwrap(),
            tmp.path().join("byol_1").display().to_string()
        );
        let e = format!("{:#}", recovery_location("byol_1", None).unwrap_err());
        assert!(
            e.contains("runs_location") && e.contains("SSL_HOST_RUNS"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            recovery_location("../x", Some("s3://b/runs")).unwrap_err()
        );
        assert!(e.contains("one path segment"), "{e}");
    }
}
