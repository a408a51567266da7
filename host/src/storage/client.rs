//! [`Storage`]: the synchronous facade. Each call runs one object_store operation to the end on
//! the module's runtime and turns its failure into an error that names the operation, the URL
//! (never a credential) and, after retries, the retry policy that was followed.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::credentials::{build_store, redact, Env};
use super::location::ObjectUrl;
use super::retry::RetryPolicy;

/// Parts being uploaded, in order, with their lengths.
type InFlight = VecDeque<(JoinHandle<object_store::Result<()>>, u64)>;

/// S3's smallest part (other than the last); a smaller `part_size` is refused.
const MIN_PART_SIZE: usize = 5 << 20;

/// How a [`Storage`] retries, and how it uploads.
#[derive(Clone, Debug)]
pub struct StorageOptions {
    /// Retries and timeouts of every request.
    pub retry: RetryPolicy,
    /// Objects larger than this are uploaded in parts of this size (multipart: the object
    /// appears only when the last part is committed); at most this size, in one request.
    /// At least 5 MiB (S3's smallest part).
    pub part_size: usize,
    /// Parts in flight at once during a multipart upload.
    pub upload_concurrency: usize,
}

impl Default for StorageOptions {
    /// The default retry policy, 16 MiB parts, 4 in flight.
    fn default() -> Self {
        StorageOptions {
            retry: RetryPolicy::default(),
            part_size: 16 << 20,
            upload_concurrency: 4,
        }
    }
}

/// An object found by [`Storage::head`] or [`Storage::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Where it is.
    pub url: ObjectUrl,
    /// Its size in bytes.
    pub size: u64,
}

/// Reads and writes objects by URL. Backends are built on first use of each bucket (container,
/// host) from the environment snapshot given at construction, then reused with their
/// connection pools. Safe to share between threads; every call blocks until done.
pub struct Storage {
    env: Env,
    options: StorageOptions,
    secrets: Vec<String>,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("env", &self.env)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// Storage with credentials and endpoints from this process's environment.
    pub fn from_process_env(options: StorageOptions) -> Storage {
        Storage::with_env(Env::process(), options)
    }

    /// Storage with credentials and endpoints from `env` only.
    pub fn with_env(env: Env, options: StorageOptions) -> Storage {
        let secrets = env.secrets();
        Storage {
            env,
            options,
            secrets,
            stores: Mutex::new(HashMap::new()),
        }
    }

    /// The options this storage was made with.
    pub fn options(&self) -> &StorageOptions {
        &self.options
    }

    /// The whole object.
    pub fn get(&self, url: &ObjectUrl) -> Result<Bytes> {
        let (store, path) = self.open(url)?;
        self.run(
            "read",
            url,
            async move { store.get(&path).await?.bytes().await },
        )
    }

    /// Bytes `range` of the object (one request; the end is exclusive and must not pass the
    /// object's end).
    pub fn get_range(&self, url: &ObjectUrl, range: Range<u64>) -> Result<Bytes> {
        if range.start > range.end {
            bail!("storage: bad byte range {range:?} for {url}");
        }
        let (store, path) = self.open(url)?;
        let what = format!("read bytes {}..{} of", range.start, range.end);
        let bytes = self.run(
            &what,
            url,
            async move { store.get_range(&path, range).await },
        )?;
        Ok(bytes)
    }

    /// The object's size, or `None` when there is no such object.
    pub fn head(&self, url: &ObjectUrl) -> Result<Option<ObjectInfo>> {
        let (store, path) = self.open(url)?;
        let found = self.run("look up", url, async move {
            match store.head(&path).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        Ok(found.map(|size| ObjectInfo {
            url: url.clone(),
            size,
        }))
    }

    /// Every object whose path starts with `prefix`'s path followed by `/` (its "folder",
    /// recursively), sorted by URL.
    pub fn list(&self, prefix: &ObjectUrl) -> Result<Vec<ObjectInfo>> {
        let (store, path) = self.open(prefix)?;
        let metas = self.run("list", prefix, async move {
            let mut stream = store.list(Some(&path));
            let mut metas = Vec::new();
            while let Some(meta) = stream.next().await {
                metas.push(meta?);
            }
            Ok(metas)
        })?;
        let mut found: Vec<ObjectInfo> = metas
            .into_iter()
            .map(|meta| ObjectInfo {
                url: prefix.sibling_at(&meta.location),
                size: meta.size,
            })
            .collect();
        found.sort_by_key(|o| o.url.to_string());
        Ok(found)
    }

    /// Writes `data` as the object, replacing any: in one request up to `part_size`, as a
    /// multipart upload above (visible only once whole).
    pub fn put(&self, url: &ObjectUrl, data: Bytes) -> Result<()> {
        let len = data.len() as u64;
        self.upload(url, &mut std::io::Cursor::new(data), len, &mut |_| {})
    }

    /// Uploads the file at `source` as the object, like [`put`](Self::put), reading it part by
    /// part; `progress` is called with the bytes sent so far after each part.
    pub fn put_file(
        &self,
        url: &ObjectUrl,
        source: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let mut file = std::fs::File::open(source)
            .with_context(|| format!("storage: cannot open {} to upload it", source.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("storage: cannot read the size of {}", source.display()))?
            .len();
        self.upload(url, &mut file, len, progress)
    }

    /// Removes the object; removing one that is not there is not an error.
    pub fn delete(&self, url: &ObjectUrl) -> Result<()> {
        let (store, path) = self.open(url)?;
        self.run("delete", url, async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    /// Streams the whole object into `sink`, returning its size and SHA-256 (hex). The size is
    /// known from the answer's headers before the body: `check_size` may refuse it then.
    pub fn download(
        &self,
        url: &ObjectUrl,
        sink: &mut dyn Write,
        check_size: &mut dyn FnMut(u64) -> Result<()>,
    ) -> Result<(u64, String)> {
        let (store, path) = self.open(url)?;
        let rt = runtime()?;
        let result = rt
            .block_on(store.get(&path))
            .map_err(|e| self.error("read", url, e))?;
        check_size(result.meta.size)?;
        let mut stream = result.into_stream();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = rt.block_on(stream.next()) {
            let chunk = chunk.map_err(|e| self.error("read", url, e))?;
            hasher.update(&chunk);
            sink.write_all(&chunk)
                .with_context(|| format!("storage: cannot write what was read from {url}"))?;
            size += chunk.len() as u64;
        }
        Ok((size, hex(&hasher.finalize())))
    }

    fn upload(
        &self,
        url: &ObjectUrl,
        source: &mut dyn Read,
        len: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let part_size = self.options.part_size;
        if part_size < MIN_PART_SIZE {
            bail!("storage: part_size {part_size} is below the 5 MiB that S3 requires");
        }
        let (store, path) = self.open(url)?;
        if len <= part_size as u64 {
            let data = read_part(source, len as usize, url)?;
            self.run("write", url, async move {
                store.put(&path, PutPayload::from(data)).await.map(|_| ())
            })?;
            progress(len);
            return Ok(());
        }
        let rt = runtime()?;
        let mut upload = rt
            .block_on(store.put_multipart(&path))
            .map_err(|e| self.error("start a multipart upload of", url, e))?;
        let sent = self.send_parts(rt, upload.as_mut(), source, len, url, progress);
        match sent {
            Ok(()) => {
                rt.block_on(upload.complete())
                    .map_err(|e| self.error("complete the multipart upload of", url, e))?;
                Ok(())
            }
            Err(e) => {
                // Nothing partial is ever visible; this only frees the stored parts.
                let _ = rt.block_on(upload.abort());
                Err(e)
            }
        }
    }

    fn send_parts(
        &self,
        rt: &Runtime,
        upload: &mut dyn object_store::MultipartUpload,
        source: &mut dyn Read,
        len: u64,
        url: &ObjectUrl,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let part_size = self.options.part_size as u64;
        let concurrency = self.options.upload_concurrency.max(1);
        let mut in_flight: InFlight = VecDeque::new();
        let (mut read, mut sent) = (0u64, 0u64);
        let mut wait_one = |in_flight: &mut InFlight| -> Result<()> {
            let Some((task, part_len)) = in_flight.pop_front() else {
                return Ok(());
            };
            rt.block_on(task)
                .map_err(|e| anyhow!("storage: an upload task of {url} ended abnormally: {e}"))?
                .map_err(|e| self.error("upload a part of", url, e))?;
            sent += part_len;
            progress(sent);
            Ok(())
        };
        while read < len {
            let this = part_size.min(len - read);
            let data = read_part(source, this as usize, url)?;
            read += this;
            in_flight.push_back((rt.spawn(upload.put_part(PutPayload::from(data))), this));
            if in_flight.len() >= concurrency {
                wait_one(&mut in_flight)?;
            }
        }
        while !in_flight.is_empty() {
            wait_one(&mut in_flight)?;
        }
        Ok(())
    }

    /// The backend for `url` (built once per bucket) and the object's path in it.
    fn open(&self, url: &ObjectUrl) -> Result<(Arc<dyn ObjectStore>, object_store::path::Path)> {
        let path = url.object_path()?;
        let key = url.store_key();
        let mut stores = self
            .stores
            .lock()
            .map_err(|_| anyhow!("storage: a thread panicked while opening a backend"))?;
        if let Some(store) = stores.get(&key) {
            return Ok((store.clone(), path));
        }
        let store = build_store(url, &self.env, &self.options.retry)
            .map_err(|e| anyhow!("{}", redact(&format!("{e:#}"), &self.secrets)))?;
        stores.insert(key, store.clone());
        Ok((store, path))
    }

    fn run<T>(
        &self,
        what: &str,
        url: &ObjectUrl,
        work: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T> {
        runtime()?
            .block_on(work)
            .map_err(|e| self.error(what, url, e))
    }

    /// The error for a failed operation: what, on which URL, why (redacted), and, when the
    /// failure came after retries, the policy that was followed.
    fn error(&self, what: &str, url: &ObjectUrl, error: object_store::Error) -> anyhow::Error {
        use object_store::Error as E;
        // One line: a server's XML error body otherwise spreads over several.
        let cause = redact(&chain(&error), &self.secrets)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let hint = match &error {
            E::NotFound { .. } => "no such object".to_string(),
            E::Unauthenticated { .. } | E::PermissionDenied { .. } => format!(
                "the server refused the credentials; check the environment variables of {}",
                url.store_key()
            ),
            _ if cause.contains("retries") || cause.contains("timed out") => {
                format!("gave up after retrying ({})", self.options.retry.describe())
            }
            _ => "failed".to_string(),
        };
        anyhow!("storage: could not {what} {url}: {hint}: {cause}")
    }
}

/// The module's one runtime, started on first use, with two worker threads: object storage is
/// I/O, and the host's own threads do the computing.
fn runtime() -> Result<&'static Runtime> {
    static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("ssl-host-storage")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| anyhow!("storage: cannot start its I/O runtime: {e}"))
}

fn read_part(source: &mut dyn Read, len: usize, url: &ObjectUrl) -> Result<Bytes> {
    let mut buf = vec![0u8; len];
    source
        .read_exact(&mut buf)
        .with_context(|| format!("storage: cannot read the data to upload to {url}"))?;
    Ok(Bytes::from(buf))
}

/// An error and its sources, one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// Lower-case hexadecimal.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
