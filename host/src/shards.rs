//! Packed datasets (`ssl-host pack`) as the host sees them: the shard of every sample, for the
//! shard-grouped order (`sample_order = shards`, see [`crate::sampler::Order::Shards`]), and
//! datasets whose root is a URL (`s3://`, `az://`, `gs://`, `https://`).
//!
//! A dataset in object storage is read through a local copy of its indexes, the *mirror*:
//! `<cache_dir>/datasets/<key>/` holds `index.json`, every shard's `*.idx.json` (small: they
//! are fetched when the dataset is opened) and a marker file naming the URL; the key is a hash
//! of the URL and of `index.json`, so a dataset packed again under the same URL gets a new
//! mirror. The dataset plugin opens the mirror as a local packed folder. A shard appears in it
//! (a symbolic link into the node's [`Cache`]) when a loader is about to read one of its
//! samples: [`Shards::ensure`] fetches the whole shard into the cache once per node (the
//! processes of a node share the cache and wait for each other's downloads), checks its
//! SHA-256 against `index.json` before anything reads it, and links it. Retries, credentials
//! and their redaction are the storage module's.
//!
//! With `sample_order = shards` each process reads its own part of the shards, so it fetches
//! about 1/N of them per epoch; with the uniform order every process reads samples of every
//! shard and so fetches them all (once per node, while the cache holds them).

use crate::config::RunConfig;
use crate::storage::{Cache, ObjectUrl, RetryPolicy, Storage, StorageOptions};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use ssl_builtin_datasets::packed_format::{PackIndex, ShardEntry, INDEX_FILE, REMOTE_MARKER};
use ssl_plugin_api::host::DatasetHandle;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Where datasets in object storage are cached and named: from a run's config
/// ([`StoreSettings::from_config`]) or the environment ([`StoreSettings::from_env`]).
#[derive(Clone, Debug, PartialEq)]
pub struct StoreSettings {
    /// The node's cache folder (`cache_dir`).
    pub cache_dir: PathBuf,
    /// Its size limit in bytes (`cache_limit_gb`).
    pub limit_bytes: u64,
    /// The dataset catalogue (`dataset_catalogue`), if any.
    pub catalogue: Option<PathBuf>,
    /// How long a request to object storage is retried (`storage_retry_seconds`).
    pub retry_seconds: f64,
}

impl StoreSettings {
    /// The settings of a run.
    pub fn from_config(config: &RunConfig) -> StoreSettings {
        let env = StoreSettings::from_env();
        StoreSettings {
            cache_dir: config
                .cache_dir
                .as_ref()
                .map(PathBuf::from)
                .unwrap_or(env.cache_dir),
            limit_bytes: (config.cache_limit_gb.max(0.0) * 1e9) as u64,
            catalogue: config
                .dataset_catalogue
                .as_ref()
                .map(PathBuf::from)
                .or(env.catalogue),
            retry_seconds: config.storage_retry_seconds,
        }
    }

    /// The defaults: `$SSL_HOST_CACHE` (else `$XDG_CACHE_HOME/ssl-host`, else
    /// `~/.cache/ssl-host`), 100 GB, `$SSL_HOST_DATASET_CATALOGUE`, retries for 180 s.
    pub fn from_env() -> StoreSettings {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let cache_dir = crate::remote_run::cache_root();
        StoreSettings {
            cache_dir,
            limit_bytes: 100_000_000_000,
            catalogue: var("SSL_HOST_DATASET_CATALOGUE").map(PathBuf::from),
            retry_seconds: 180.0,
        }
    }

    fn storage_options(&self) -> StorageOptions {
        let limit = Duration::from_secs_f64(self.retry_seconds.max(0.0));
        StorageOptions {
            retry: RetryPolicy {
                time_limit: limit,
                max_backoff: RetryPolicy::default()
                    .max_backoff
                    .min(limit.max(Duration::from_millis(100))),
                ..RetryPolicy::default()
            },
            ..StorageOptions::default()
        }
    }
}

/// A dataset root as given (a folder, a URL or a catalogue name), resolved: the local folder the
/// plugin opens, and the shards when the folder is packed.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The folder to give the plugin as `root`.
    pub root: Option<String>,
    /// The packed dataset's shards, when `root` holds an `index.json` of `ssl-host pack`.
    pub shards: Option<Arc<Shards>>,
}

/// Resolves `root` (see [`Resolved`]): a catalogue name becomes what the catalogue names; a
/// URL is opened as a packed dataset in object storage (its mirror is the root); a local packed
/// folder gets its shard map; any other folder is returned as it is.
pub fn resolve(root: Option<&str>, settings: &StoreSettings) -> Result<Resolved> {
    let Some(given) = root else {
        return Ok(Resolved {
            root: None,
            shards: None,
        });
    };
    let root = from_catalogue(given, settings)?;
    if ObjectUrl::is_url(&root) && !root.starts_with("file://") {
        let shards = open_remote(&root, settings)?;
        return Ok(Resolved {
            root: Some(shards.mirror().display().to_string()),
            shards: Some(shards),
        });
    }
    let folder = root.strip_prefix("file://").unwrap_or(&root).to_string();
    let index = Path::new(&folder).join(INDEX_FILE);
    let shards = match std::fs::read_to_string(&index) {
        Ok(text) => match PackIndex::parse(&text, &index.display().to_string()) {
            Ok(parsed) => Some(Arc::new(Shards::new(&parsed, None))),
            // Not ours (another tool's index.json): the plugin reports what it finds.
            Err(_) => None,
        },
        Err(_) => None,
    };
    Ok(Resolved {
        root: Some(folder),
        shards,
    })
}

/// `name` as the catalogue names it, else `name` itself. A name that is neither a URL nor an
/// existing path, with a catalogue that lacks it, is an error listing the catalogue's names.
fn from_catalogue(name: &str, settings: &StoreSettings) -> Result<String> {
    let Some(file) = &settings.catalogue else {
        return Ok(name.to_string());
    };
    if ObjectUrl::is_url(name) || Path::new(name).exists() {
        return Ok(name.to_string());
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the dataset catalogue {}", file.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("the dataset catalogue {} is not valid TOML", file.display()))?;
    let Some(toml::Value::Table(datasets)) = table.get("datasets") else {
        bail!(
            "the dataset catalogue {} has no [datasets] table (expected lines NAME = \"URL or folder\" under [datasets])",
            file.display()
        );
    };
    match datasets.get(name) {
        Some(toml::Value::String(target)) => Ok(target.clone()),
        Some(other) => bail!(
            "the dataset catalogue {}: `{name}` is {other}, expected a URL or folder in quotes",
            file.display()
        ),
        None => bail!(
            "dataset `{name}` is neither a folder nor a URL, and the dataset catalogue {} does not name it (it names: {})",
            file.display(),
            datasets.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The shards of one packed dataset and, for one in object storage, how to fetch them.
#[derive(Debug)]
pub struct Shards {
    shard_of: Arc<[u32]>,
    remote: Option<Remote>,
}

#[derive(Debug)]
struct Remote {
    url: ObjectUrl,
    mirror: PathBuf,
    storage: Storage,
    cache: Cache,
    entries: Vec<ShardEntry>,
    ready: Vec<AtomicBool>,
    locks: Vec<Mutex<()>>,
    stats: FetchStats,
}

/// What a process fetched (or found in the node's cache) so far.
#[derive(Debug, Default)]
pub struct FetchStats {
    /// Shards made ready (fetched, or found in the cache and checked).
    pub shards: AtomicU64,
    /// Their bytes.
    pub bytes: AtomicU64,
    /// Time spent making them ready, in nanoseconds.
    pub nanos: AtomicU64,
}

impl Shards {
    fn new(index: &PackIndex, remote: Option<Remote>) -> Shards {
        let mut shard_of = vec![0u32; index.samples as usize];
        for (n, shard) in index.shards.iter().enumerate() {
            let start = shard.first_sample as usize;
            let end = (start + shard.samples as usize).min(shard_of.len());
            for slot in &mut shard_of[start.min(end)..end] {
                *slot = n as u32;
            }
        }
        Shards {
            shard_of: shard_of.into(),
            remote,
        }
    }

    /// The shard of every sample index.
    pub fn shard_of(&self) -> Arc<[u32]> {
        Arc::clone(&self.shard_of)
    }

    /// The local mirror's folder (a local dataset: empty).
    pub fn mirror(&self) -> &Path {
        self.remote
            .as_ref()
            .map(|r| r.mirror.as_path())
            .unwrap_or(Path::new(""))
    }

    /// Whether the shards come from object storage.
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// (shards, bytes, seconds) this process made ready so far.
    pub fn fetched(&self) -> (u64, u64, f64) {
        match &self.remote {
            Some(r) => (
                r.stats.shards.load(Ordering::Relaxed),
                r.stats.bytes.load(Ordering::Relaxed),
                r.stats.nanos.load(Ordering::Relaxed) as f64 * 1e-9,
            ),
            None => (0, 0, 0.0),
        }
    }

    /// Makes the shard of sample `index` readable in the mirror: fetched into the node's cache
    /// (or found there), its SHA-256 checked, linked. Once per shard and process; a local
    /// dataset needs nothing.
    pub fn ensure(&self, index: usize) -> Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let Some(&n) = self.shard_of.get(index) else {
            return Ok(()); // The plugin names the out-of-range index.
        };
        let n = n as usize;
        if remote.ready[n].load(Ordering::Acquire) {
            return Ok(());
        }
        let _one_at_a_time = remote.locks[n].lock().unwrap_or_else(|e| e.into_inner());
        if remote.ready[n].load(Ordering::Acquire) {
            return Ok(());
        }
        let started = Instant::now();
        let entry = &remote.entries[n];
        let url = remote.url.join(&entry.file)?;
        let object = remote
            .cache
            .fetch(&remote.storage, &url, Some(&entry.sha256))
            .with_context(|| format!("fetching shard {url} of the dataset {}", remote.url))?;
        if object.size() != entry.bytes {
            bail!(
                "shard {url} is {} bytes, its dataset's {INDEX_FILE} lists {}",
                object.size(),
                entry.bytes
            );
        }
        link(object.path(), &remote.mirror.join(&entry.file))?;
        remote.stats.shards.fetch_add(1, Ordering::Relaxed);
        remote.stats.bytes.fetch_add(entry.bytes, Ordering::Relaxed);
        remote
            .stats
            .nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        remote.ready[n].store(true, Ordering::Release);
        Ok(())
    }
}

/// Points `link` at `target` (replacing an older link atomically).
fn link(target: &Path, link: &Path) -> Result<()> {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let name = link.file_name().and_then(|n| n.to_str()).unwrap_or("shard");
    let tmp = link.with_file_name(format!(".{name}.{}.link", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .and_then(|()| std::fs::rename(&tmp, link))
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Datasets in object storage opened by this process, by URL: a run opens one several times
/// (its config's checks, the SSL and linear-head datasets), and fetches its indexes once.
static REMOTE: Mutex<Vec<(String, PathBuf, Arc<Shards>)>> = Mutex::new(Vec::new());

fn open_remote(text: &str, settings: &StoreSettings) -> Result<Arc<Shards>> {
    let mut opened = REMOTE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, shards)) = opened
        .iter()
        .find(|(u, dir, _)| u == text && *dir == settings.cache_dir)
    {
        return Ok(Arc::clone(shards));
    }
    let url = ObjectUrl::parse(text)?;
    let storage = Storage::from_process_env(settings.storage_options());
    let index_url = url.join(INDEX_FILE)?;
    let bytes = storage.get(&index_url).with_context(|| {
        format!(
            "reading {index_url}: a dataset in object storage is a folder written by `ssl-host pack` (index.json, shards and their .idx.json), uploaded whole"
        )
    })?;
    let text_index = String::from_utf8(bytes.to_vec())
        .with_context(|| format!("{index_url} is not UTF-8 text"))?;
    let index = PackIndex::parse(&text_index, &index_url.to_string())
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    let key = sha256_hex(format!("{text}\n{text_index}").as_bytes());
    let mirror = settings.cache_dir.join("datasets").join(&key[..16]);
    std::fs::create_dir_all(&mirror)
        .with_context(|| format!("creating the dataset mirror {}", mirror.display()))?;
    for entry in &index.shards {
        let path = mirror.join(&entry.index);
        if !path.exists() {
            let idx_url = url.join(&entry.index)?;
            let bytes = storage.get(&idx_url)?;
            write_atomic(&path, &bytes)?;
        }
    }
    write_atomic(&mirror.join(REMOTE_MARKER), text.as_bytes())?;
    write_atomic(&mirror.join(INDEX_FILE), text_index.as_bytes())?;
    let cache = Cache::open(&settings.cache_dir, settings.limit_bytes)?;
    let count = index.shards.len();
    let remote = Remote {
        url,
        mirror: mirror.clone(),
        storage,
        cache,
        entries: index.shards.clone(),
        ready: (0..count).map(|_| AtomicBool::new(false)).collect(),
        locks: (0..count).map(|_| Mutex::new(())).collect(),
        stats: FetchStats::default(),
    };
    let shards = Arc::new(Shards::new(&index, Some(remote)));
    opened.push((
        text.to_string(),
        settings.cache_dir.clone(),
        Arc::clone(&shards),
    ));
    Ok(shards)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()))
}

/// Open datasets and their shards: [`crate::loader::Source`] finds a dataset's shards here.
static OPEN: Mutex<Vec<(Weak<DatasetHandle>, Arc<Shards>)>> = Mutex::new(Vec::new());

/// Records that `dataset` reads `shards`.
pub fn register(dataset: &Arc<DatasetHandle>, shards: Arc<Shards>) {
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    open.retain(|(d, _)| d.strong_count() > 0);
    open.push((Arc::downgrade(dataset), shards));
}

/// The shards `dataset` reads, when it is a packed dataset opened by [`crate::datasets`].
pub fn of(dataset: &Arc<DatasetHandle>) -> Option<Arc<Shards>> {
    let open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    open.iter()
        .find(|(d, _)| d.strong_count() > 0 && d.as_ptr() == Arc::as_ptr(dataset))
        .map(|(_, s)| Arc::clone(s))
}

/// One line per dataset in object storage this process opened: how many of its shards it made
/// ready (fetched, or found in the node's cache and checked), their bytes and the time taken.
pub fn fetch_report() -> Vec<String> {
    let opened = REMOTE.lock().unwrap_or_else(|e| e.into_inner());
    let rank = crate::world::current().rank();
    opened
        .iter()
        .map(|(url, _, shards)| {
            let (count, bytes, seconds) = shards.fetched();
            let total = shards.remote.as_ref().map_or(0, |r| r.entries.len());
            format!(
                "process {rank}: read {count} of the {total} shards of {url} ({bytes} bytes, fetched or found in the cache in {seconds:.2} s)"
            )
        })
        .collect()
}
