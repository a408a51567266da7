//! [`Cache`]: a bounded folder of whole objects fetched from object storage, shared by runs and
//! by the processes of a node.
//!
//! Layout: `objects/<key>` (the key is the SHA-256 of the object's URL), `tmp/` (downloads in
//! progress), `locks/<key>.lock` (one download of an object at a time, across processes) and
//! `cache.lock` (shared while a process adds or opens an object, exclusive while one evicts).
//! A download goes to `tmp/` and is renamed into `objects/` only once whole and checked, so an
//! object in `objects/` is always whole, even when processes die mid-download. Eviction removes
//! the least recently used objects (by modification time, which every use refreshes) until the
//! total fits the limit; a process that has an object open keeps reading it after its removal
//! (its file handle stays valid), so [`CachedObject`] hands out the open file.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use rustix::fs::{flock, FlockOperation};
use sha2::{Digest, Sha256};

use super::client::{hex, Storage};
use super::location::ObjectUrl;

/// A bounded local cache of whole objects. See the module documentation.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
    limit: u64,
}

/// An object in the cache (or a local file in place), open for reading.
#[derive(Debug)]
pub struct CachedObject {
    path: PathBuf,
    file: File,
    size: u64,
}

impl CachedObject {
    /// Where the object's bytes are (a cached copy, or the local file itself).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file: read or memory-map this rather than reopening `path`, which eviction by
    /// another process may remove at any time.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The object's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Takes the open file.
    pub fn into_file(self) -> File {
        self.file
    }
}

impl Cache {
    /// The cache in `dir` (created if missing), holding at most `limit_bytes` of objects.
    pub fn open(dir: impl AsRef<Path>, limit_bytes: u64) -> Result<Cache> {
        let dir = dir.as_ref().to_path_buf();
        for sub in ["objects", "tmp", "locks"] {
            fs::create_dir_all(dir.join(sub)).with_context(|| {
                format!(
                    "storage: cannot create the cache folder {}",
                    dir.join(sub).display()
                )
            })?;
        }
        Ok(Cache {
            dir,
            limit: limit_bytes,
        })
    }

    /// The cache's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The object at `url`, whole, checked against `sha256` (hex) when given: from the cache
    /// when there, else downloaded into it (one process of the node downloads; the others wait
    /// and then read the same file). A local path is returned in place, after the same check.
    ///
    /// A digest mismatch is an error naming the URL and both digests; a mismatching cached copy
    /// is removed (the next fetch downloads again), a local file never is. Every call with a
    /// digest reads the whole object to check it.
    pub fn fetch(
        &self,
        storage: &Storage,
        url: &ObjectUrl,
        sha256: Option<&str>,
    ) -> Result<CachedObject> {
        let expected = sha256.map(normalise_digest).transpose()?;
        if let Some(path) = url.local_path() {
            let file = File::open(path)
                .with_context(|| format!("storage: cannot open {}", path.display()))?;
            let size = file.metadata()?.len();
            let object = CachedObject {
                path: path.to_path_buf(),
                file,
                size,
            };
            return check(object, url, expected.as_deref(), false);
        }
        let key = hex(&Sha256::digest(url.to_string().as_bytes()));
        let target = self.dir.join("objects").join(&key);
        if let Some(object) = self.hit(&target)? {
            return check(object, url, expected.as_deref(), true);
        }
        let key_lock = self.lock(&self.dir.join("locks").join(format!("{key}.lock")), true)?;
        if let Some(object) = self.hit(&target)? {
            drop(key_lock);
            return check(object, url, expected.as_deref(), true);
        }
        self.remove_partial_downloads(&key)?;
        let object = self.download(storage, url, &key, &target, expected.as_deref())?;
        drop(key_lock);
        self.evict(&target)?;
        Ok(object)
    }

    /// The cached object at `target`, opened and marked as just used, if there.
    fn hit(&self, target: &Path) -> Result<Option<CachedObject>> {
        let _shared = self.lock(&self.dir.join("cache.lock"), false)?;
        match File::open(target) {
            Ok(file) => {
                // The use time drives eviction; a failure to record it only ages the object.
                let _ = file.set_modified(SystemTime::now());
                let size = file.metadata()?.len();
                Ok(Some(CachedObject {
                    path: target.to_path_buf(),
                    file,
                    size,
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("storage: cannot open {}", target.display())),
        }
    }

    fn download(
        &self,
        storage: &Storage,
        url: &ObjectUrl,
        key: &str,
        target: &Path,
        expected: Option<&str>,
    ) -> Result<CachedObject> {
        let partial = self.dir.join("tmp").join(format!(
            "{key}.{}.{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let result = (|| -> Result<u64> {
            let file = File::create(&partial).with_context(|| {
                format!("storage: cannot create {} in the cache", partial.display())
            })?;
            let mut sink = BufWriter::with_capacity(1 << 20, file);
            let limit = self.limit;
            let (size, actual) = storage.download(url, &mut sink, &mut |size| {
                if size > limit {
                    bail!(
                        "storage: {url} is {size} bytes, more than the whole cache may hold \
                         ({limit} bytes in {}); raise the cache's size limit",
                        self.dir.display()
                    );
                }
                Ok(())
            })?;
            let file = sink
                .into_inner()
                .map_err(|e| e.into_error())
                .with_context(|| format!("storage: cannot write {}", partial.display()))?;
            file.sync_all()
                .with_context(|| format!("storage: cannot write {}", partial.display()))?;
            if let Some(expected) = expected {
                if actual != expected {
                    bail!(
                        "storage: {url} has SHA-256 {actual}, expected {expected}: the object \
                         differs from the one indexed (corrupted or replaced); it was not kept"
                    );
                }
            }
            Ok(size)
        })();
        let size = match result {
            Ok(size) => size,
            Err(e) => {
                let _ = fs::remove_file(&partial);
                return Err(e);
            }
        };
        let _shared = self.lock(&self.dir.join("cache.lock"), false)?;
        fs::rename(&partial, target).with_context(|| {
            format!(
                "storage: cannot move {} to {}",
                partial.display(),
                target.display()
            )
        })?;
        let file = File::open(target)
            .with_context(|| format!("storage: cannot open {}", target.display()))?;
        Ok(CachedObject {
            path: target.to_path_buf(),
            file,
            size,
        })
    }

    /// Removes what a process that died mid-download of `key` left (the caller holds the key's
    /// lock, so no download of it is running).
    fn remove_partial_downloads(&self, key: &str) -> Result<()> {
        let tmp = self.dir.join("tmp");
        let prefix = format!("{key}.");
        for entry in
            fs::read_dir(&tmp).with_context(|| format!("storage: cannot read {}", tmp.display()))?
        {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Removes the least recently used objects, other than `keep`, until the total fits.
    fn evict(&self, keep: &Path) -> Result<()> {
        let _exclusive = self.lock(&self.dir.join("cache.lock"), true)?;
        let objects = self.dir.join("objects");
        let mut entries = Vec::new();
        for entry in fs::read_dir(&objects)
            .with_context(|| format!("storage: cannot read {}", objects.display()))?
        {
            let entry = entry?;
            let Ok(meta) = entry.metadata() else { continue };
            let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            entries.push((used, meta.len(), entry.path()));
        }
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.limit {
                break;
            }
            if path == keep {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => total -= len,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => total -= len,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("storage: cannot evict {}", path.display()))
                }
            }
        }
        Ok(())
    }

    /// An advisory lock on `path` (created if missing), released when the value is dropped. On
    /// a filesystem without `flock` it is not taken: the rename into `objects/` still keeps
    /// every object whole, at the cost of duplicate downloads.
    fn lock(&self, path: &Path, exclusive: bool) -> Result<Option<File>> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("storage: cannot open the lock file {}", path.display()))?;
        let operation = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        loop {
            match flock(&file, operation) {
                Ok(()) => return Ok(Some(file)),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP) => return Ok(None),
                Err(e) => {
                    return Err(std::io::Error::from(e))
                        .with_context(|| format!("storage: cannot lock {}", path.display()))
                }
            }
        }
    }
}

/// The SHA-256 (hex) of the file's content from its start; leaves the position at the start.
pub fn sha256_file(file: &mut File) -> Result<String> {
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(hex(&hasher.finalize()))
}

fn normalise_digest(text: &str) -> Result<String> {
    let lower = text.trim().to_ascii_lowercase();
    if lower.len() != 64 || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("storage: `{text}` is not a SHA-256 digest (64 hexadecimal digits)");
    }
    Ok(lower)
}

/// Checks `object` against `expected`; a cached copy that fails is removed.
fn check(
    mut object: CachedObject,
    url: &ObjectUrl,
    expected: Option<&str>,
    cached: bool,
) -> Result<CachedObject> {
    let Some(expected) = expected else {
        return Ok(object);
    };
    let actual = sha256_file(&mut object.file)
        .with_context(|| format!("storage: cannot read {}", object.path.display()))?;
    if actual == expected {
        return Ok(object);
    }
    if cached {
        let _ = fs::remove_file(&object.path);
        bail!(
            "storage: the cached copy of {url} ({}) has SHA-256 {actual}, expected {expected}: \
             it was removed, and the next use downloads it again",
            object.path.display()
        );
    }
    bail!("storage: {url} has SHA-256 {actual}, expected {expected}: the file differs from the one indexed")
}

#[cfg(test)]
mod tests {
    use super::super::{Env, StorageOptions};
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    #[test]
    fn a_local_file_is_used_in_place_and_checked_but_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard.tar");
        fs::write(&path, b"local bytes").unwrap();
        let cache = Cache::open(dir.path().join("cache"), 1 << 20).unwrap();
        let storage = Storage::with_env(Env::default(), StorageOptions::default());
        let url = ObjectUrl::local(&path).unwrap();
        let object = cache
            .fetch(&storage, &url, Some(&sha(b"local bytes")))
            .unwrap();
        assert_eq!(object.path(), path);
        assert_eq!(object.size(), 11);
        let err = cache
            .fetch(&storage, &url, Some(&sha(b"other bytes")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&sha(b"local bytes")) && err.contains(&sha(b"other bytes")),
            "{err}"
        );
        assert!(path.exists(), "a local source file is never removed");
    }

    #[test]
    fn a_digest_must_be_64_hex_digits() {
        assert!(normalise_digest("ABC").is_err());
        assert_eq!(normalise_digest(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
    }
}
