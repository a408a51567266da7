//! Object storage: read and write objects named by a URL (`s3://bucket/key`,
//! `az://container/key`, `gs://bucket/key`, `https://host/path`) or a local path, through one
//! small synchronous API, and keep fetched objects in a bounded local cache.
//!
//! This module owns the only place where ssl-host talks to a cloud: which backend a URL picks
//! (once, from its scheme, as `object_store`'s `parse_url_opts` does), where credentials come
//! from (each cloud's usual environment variables, nothing else: never a config file, and never
//! written to logs, configs or errors), how requests are retried (one [`RetryPolicy`] for every
//! request: exponential back-off within a total time limit), and how an upload becomes visible
//! (whole or not at all: multipart above one part). It owns one small tokio runtime, so callers
//! stay synchronous like the rest of the host.
//!
//! What it deliberately does not do: it knows nothing of datasets, shards, checkpoints or runs.
//! Those callers (a dataset reading packed shards from a bucket, a run folder uploading its
//! checkpoints) build on three things:
//!
//! ```no_run
//! use ssl_host::storage::{Cache, ObjectUrl, Storage, StorageOptions};
//! # fn main() -> anyhow::Result<()> {
//! let storage = Storage::from_process_env(StorageOptions::default());
//! let root = ObjectUrl::parse("s3://bucket/nih-512")?;
//! // Small objects: read whole, or a byte range of a large one.
//! let index = storage.get(&root.join("index.json")?)?;
//! let header = storage.get_range(&root.join("train-000000.tar")?, 0..512)?;
//! // Large objects: fetched whole into the node's cache once, checked against their SHA-256.
//! let cache = Cache::open("/scratch/ssl-host-cache", 200 << 30)?;
//! let shard = cache.fetch(&storage, &root.join("train-000000.tar")?, Some("9f86d0..."))?;
//! let _file: &std::fs::File = shard.file(); // open: eviction by another process cannot remove it
//! // Uploads: multipart above one part, visible only once whole.
//! storage.put_file(&root.join("checkpoints/last.safetensors")?, "last.safetensors".as_ref(), &mut |_| {})?;
//! # let _ = (index, header); Ok(()) }
//! ```
//!
//! A local path (or `file://` URL) goes through the same calls, so a caller never branches on
//! where its data lives; the cache hands a local file back in place (it is already local) after
//! the same digest check, and never deletes it.

mod cache;
mod client;
mod credentials;
mod location;
mod retry;

pub use cache::{sha256_file, Cache, CachedObject};
pub use client::{ObjectInfo, Storage, StorageOptions};
pub use credentials::Env;
pub use location::ObjectUrl;
pub use retry::RetryPolicy;
