//! Object storage (`ssl_host::storage`) against real servers started here on loopback ports:
//! Azurite (the Azure Storage emulator, npm) and moto's S3 server (PyPI), both installed into
//! `.deps/emulators` by `scripts/setup-libtorch.sh --test-servers`, which `scripts/test` runs.
//! A missing server fails the test with a message saying to run that script; nothing is skipped.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ssl_host::storage::{Cache, Env, ObjectUrl, RetryPolicy, Storage, StorageOptions};
use std::io::Read;

// Shared with the e2e tests, which use parts these tests do not.
#[allow(dead_code)]
#[path = "../../tests/src/servers.rs"]
mod servers;
use servers::{sha256_hex, Kind, Server, AZURITE_KEY};

/// Deterministic bytes that differ from position to position.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed)
        .collect()
}

fn quick_retries() -> StorageOptions {
    StorageOptions {
        retry: RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(400),
            time_limit: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(20),
        },
        part_size: 5 << 20,
        upload_concurrency: 2,
    }
}

fn round_trips(kind: Kind) {
    let server = Server::start(kind);
    let storage = Storage::with_env(Env::from_pairs(server.env()), quick_retries());
    let bucket = ObjectUrl::parse(&server.bucket("round-trip")).unwrap();
    let a = bucket.join("data/a.bin").unwrap();
    let data = pattern(100_000, 1);
    storage.put(&a, Bytes::from(data.clone())).unwrap();
    assert_eq!(storage.get(&a).unwrap(), data, "{kind:?}: get whole");
    assert_eq!(
        storage.get_range(&a, 1000..1512).unwrap(),
        data[1000..1512],
        "{kind:?}: get a range"
    );
    let info = storage.head(&a).unwrap().expect("the object is there");
    assert_eq!(info.size, 100_000);
    let missing = bucket.join("data/missing.bin").unwrap();
    assert_eq!(
        storage.head(&missing).unwrap(),
        None,
        "{kind:?}: head of nothing"
    );
    let err = format!("{:#}", storage.get(&missing).unwrap_err());
    assert!(
        err.contains(&missing.to_string()) && err.contains("no such object"),
        "{err}"
    );

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"bbbb").unwrap();
    let b = bucket.join("data/sub/b.bin").unwrap();
    storage.put_file(&b, file.path(), &mut |_| {}).unwrap();
    storage
        .put(
            &bucket.join("other/c.bin").unwrap(),
            Bytes::from_static(b"c"),
        )
        .unwrap();
    // Replacing an object replaces it whole.
    storage.put(&a, Bytes::from_static(b"replaced")).unwrap();
    assert_eq!(storage.get(&a).unwrap(), &b"replaced"[..]);

    let listed = storage.list(&bucket.join("data").unwrap()).unwrap();
    let names: Vec<(String, u64)> = listed.iter().map(|o| (o.url.to_string(), o.size)).collect();
    assert_eq!(
        names,
        vec![(a.to_string(), 8), (b.to_string(), 4),],
        "{kind:?}: list of a prefix"
    );
}

#[test]
fn put_get_range_head_and_list_round_trip_on_s3() {
    round_trips(Kind::Moto);
}

#[test]
fn put_get_range_head_and_list_round_trip_on_azure() {
    round_trips(Kind::Azurite);
}

#[test]
fn an_azure_connection_string_reaches_azurite() {
    let server = Server::start(Kind::Azurite);
    let env = Env::from_pairs([(
        "AZURE_STORAGE_CONNECTION_STRING",
        format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};\
             BlobEndpoint={}/devstoreaccount1;",
            server.endpoint()
        ),
    )]);
    let storage = Storage::with_env(env, quick_retries());
    let object = ObjectUrl::parse(&server.bucket("conn"))
        .unwrap()
        .join("x.bin")
        .unwrap();
    storage
        .put(&object, Bytes::from_static(b"through a connection string"))
        .unwrap();
    assert_eq!(
        storage.get(&object).unwrap(),
        &b"through a connection string"[..]
    );
}

fn multipart_is_visible_only_when_complete(kind: Kind) {
    let server = Server::start(kind);
    let storage = Storage::with_env(Env::from_pairs(server.env()), quick_retries());
    let object = ObjectUrl::parse(&server.bucket("multipart"))
        .unwrap()
        .join("big/last.safetensors")
        .unwrap();
    let data = pattern((12 << 20) + 12_345, 7);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &data).unwrap();
    let mut reports = Vec::new();
    storage
        .put_file(&object, file.path(), &mut |sent| {
            // Parts are stored, the upload is not complete: nothing is visible yet.
            let seen = storage.head(&object).unwrap();
            reports.push((sent, seen));
        })
        .unwrap();
    let sent: Vec<u64> = reports.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        sent,
        vec![5 << 20, 10 << 20, data.len() as u64],
        "{kind:?}: three parts"
    );
    assert!(
        reports.iter().all(|(_, seen)| seen.is_none()),
        "{kind:?}: the object was visible before its upload completed: {reports:?}"
    );
    assert_eq!(
        storage.head(&object).unwrap().map(|o| o.size),
        Some(data.len() as u64)
    );
    assert!(
        storage.get(&object).unwrap() == data,
        "{kind:?}: the whole object reads back"
    );
}

#[test]
fn a_large_multipart_put_on_s3_is_visible_only_when_complete() {
    multipart_is_visible_only_when_complete(Kind::Moto);
}

#[test]
fn a_large_multipart_put_on_azure_is_visible_only_when_complete() {
    multipart_is_visible_only_when_complete(Kind::Azurite);
}

fn stopped_then_restarted(kind: Kind) {
    let mut server = Server::start(kind);
    let options = quick_retries();
    let limit = options.retry.time_limit;
    let storage = Storage::with_env(Env::from_pairs(server.env()), options);
    let bucket = ObjectUrl::parse(&server.bucket("restart")).unwrap();
    let object = bucket.join("shard-000000.tar").unwrap();
    storage
        .put(&object, Bytes::from_static(b"before the stop"))
        .unwrap();

    server.stop();
    let started = Instant::now();
    let err = format!("{:#}", storage.get(&object).unwrap_err());
    let took = started.elapsed();
    eprintln!("{kind:?} stopped, after {took:?}: {err}");
    assert!(
        err.contains(&object.to_string()),
        "{kind:?}: the URL is named: {err}"
    );
    assert!(
        err.contains("retr") && err.contains("up to 3 retries"),
        "{kind:?}: {err}"
    );
    assert!(
        !err.contains("testing-secret"),
        "{kind:?}: a secret in: {err}"
    );
    // The retries ran (three waits of at least 50 ms) and stopped near the limit.
    assert!(
        took >= Duration::from_millis(150),
        "{kind:?}: no retries? {took:?}: {err}"
    );
    assert!(
        took <= limit + Duration::from_secs(4),
        "{kind:?}: took {took:?}: {err}"
    );

    server.restart();
    if kind == Kind::Moto {
        // moto keeps its objects in memory: a restarted one starts empty.
        ObjectUrl::parse(&server.bucket("restart")).unwrap();
        storage
            .put(&object, Bytes::from_static(b"before the stop"))
            .unwrap();
    }
    assert_eq!(
        storage.get(&object).unwrap(),
        &b"before the stop"[..],
        "{kind:?}: works again"
    );
}

#[test]
fn a_stopped_azure_server_fails_clearly_within_the_limit_and_works_again_once_back() {
    stopped_then_restarted(Kind::Azurite);
}

#[test]
fn a_stopped_s3_server_fails_clearly_within_the_limit_and_works_again_once_back() {
    stopped_then_restarted(Kind::Moto);
}

#[test]
fn a_corrupted_object_is_named_by_its_sha256_in_the_cache_and_at_the_source() {
    let server = Server::start(Kind::Moto);
    let storage = Storage::with_env(Env::from_pairs(server.env()), quick_retries());
    let bucket = ObjectUrl::parse(&server.bucket("digests")).unwrap();
    let object = bucket.join("train-000000.tar").unwrap();
    let data = pattern(300_000, 3);
    let digest = sha256_hex(&data);
    storage.put(&object, Bytes::from(data.clone())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path(), 10 << 20).unwrap();

    let cached = cache.fetch(&storage, &object, Some(&digest)).unwrap();
    assert_eq!(std::fs::read(cached.path()).unwrap(), data);
    let path = cached.path().to_path_buf();
    drop(cached);

    // The cached copy is damaged on disk: the next use names the mismatch and removes it.
    let mut damaged = data.clone();
    damaged[1234] ^= 0xff;
    std::fs::write(&path, &damaged).unwrap();
    let err = format!(
        "{:#}",
        cache.fetch(&storage, &object, Some(&digest)).unwrap_err()
    );
    assert!(err.contains(&object.to_string()), "{err}");
    assert!(
        err.contains(&digest) && err.contains(&sha256_hex(&damaged)),
        "{err}"
    );
    assert!(!path.exists(), "the bad cached copy is removed");
    // ... and the next fetch downloads a good one again.
    let again = cache.fetch(&storage, &object, Some(&digest)).unwrap();
    assert_eq!(std::fs::read(again.path()).unwrap(), data);

    // The object itself differs from the index: named, and nothing kept.
    let replaced = bucket.join("train-000001.tar").unwrap();
    storage
        .put(&replaced, Bytes::from(damaged.clone()))
        .unwrap();
    let err = format!(
        "{:#}",
        cache.fetch(&storage, &replaced, Some(&digest)).unwrap_err()
    );
    assert!(err.contains(&replaced.to_string()), "{err}");
    assert!(
        err.contains(&digest) && err.contains(&sha256_hex(&damaged)),
        "{err}"
    );
    let objects = std::fs::read_dir(dir.path().join("objects"))
        .unwrap()
        .count();
    let partial = std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
    assert_eq!((objects, partial), (1, 0), "only the good object stays");
}

#[test]
fn without_credentials_the_error_names_the_variables_and_no_secret_leaks() {
    let storage = Storage::with_env(Env::default(), quick_retries());
    for (url, variables) in [
        (
            "s3://bucket/key",
            ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        ),
        (
            "az://container/key",
            [
                "AZURE_STORAGE_ACCOUNT_NAME",
                "AZURE_STORAGE_CONNECTION_STRING",
            ],
        ),
        (
            "gs://bucket/key",
            ["GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_SERVICE_ACCOUNT"],
        ),
    ] {
        let started = Instant::now();
        let err = format!(
            "{:#}",
            storage.get(&ObjectUrl::parse(url).unwrap()).unwrap_err()
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no request is tried: {err}"
        );
        assert!(err.contains(url), "{err}");
        for variable in variables {
            assert!(
                err.contains(variable),
                "{url}: {err} does not name {variable}"
            );
        }
    }

    // Wrong credentials on a server that checks them: refused, and the key is not repeated.
    let server = Server::start(Kind::Azurite);
    let container = ObjectUrl::parse(&server.bucket("secret")).unwrap();
    let wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk=";
    let env = Env::from_pairs([(
        "AZURE_STORAGE_CONNECTION_STRING",
        format!(
            "AccountName=devstoreaccount1;AccountKey={wrong_key};BlobEndpoint={}/devstoreaccount1",
            server.endpoint()
        ),
    )]);
    let storage = Storage::with_env(env, quick_retries());
    let object = container.join("x").unwrap();
    let err = format!(
        "{:#}",
        storage.put(&object, Bytes::from_static(b"x")).unwrap_err()
    );
    assert!(err.contains(&object.to_string()), "{err}");
    assert!(
        !err.contains(wrong_key) && !err.contains("V3JvbmdLZXlX"),
        "the key leaked: {err}"
    );
}

#[test]
fn two_threads_fetching_one_object_into_one_cache_end_with_one_whole_file() {
    let server = Server::start(Kind::Moto);
    let setup = Storage::with_env(Env::from_pairs(server.env()), quick_retries());
    let object = ObjectUrl::parse(&server.bucket("shared"))
        .unwrap()
        .join("train-000000.tar")
        .unwrap();
    let data = pattern(8 << 20, 5);
    let digest = sha256_hex(&data);
    setup.put(&object, Bytes::from(data.clone())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let start = Arc::new(Barrier::new(2));
    let fetchers: Vec<_> = (0..2)
        .map(|_| {
            let (env, object, digest, dir, start) = (
                Env::from_pairs(server.env()),
                object.clone(),
                digest.clone(),
                dir.path().to_path_buf(),
                start.clone(),
            );
            std::thread::spawn(move || {
                // As two processes would: each its own storage and cache value.
                let storage = Storage::with_env(env, quick_retries());
                let cache = Cache::open(&dir, 1 << 30).unwrap();
                start.wait();
                let object = cache.fetch(&storage, &object, Some(&digest)).unwrap();
                let mut bytes = Vec::new();
                object.into_file().read_to_end(&mut bytes).unwrap();
                bytes
            })
        })
        .collect();
    for fetcher in fetchers {
        assert!(
            fetcher.join().unwrap() == data,
            "each fetcher read the whole object"
        );
    }
    let objects: Vec<_> = std::fs::read_dir(dir.path().join("objects"))
        .unwrap()
        .collect();
    let partial = std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
    assert_eq!((objects.len(), partial), (1, 0));
    let kept = std::fs::read(objects[0].as_ref().unwrap().path()).unwrap();
    assert!(kept == data, "the one cached file is whole");
}

#[test]
fn the_cache_evicts_the_least_recently_used_and_serves_hits_without_the_server() {
    let mut server = Server::start(Kind::Moto);
    let storage = Storage::with_env(Env::from_pairs(server.env()), quick_retries());
    let bucket = ObjectUrl::parse(&server.bucket("lru")).unwrap();
    let urls: Vec<ObjectUrl> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| bucket.join(n).unwrap())
        .collect();
    for (i, url) in urls.iter().enumerate() {
        storage
            .put(url, Bytes::from(pattern(1_000_000, i as u8)))
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path(), 2_500_000).unwrap();
    let fetch = |i: usize| {
        cache
            .fetch(&storage, &urls[i], None)
            .unwrap()
            .path()
            .to_path_buf()
    };
    let (a, b) = (fetch(0), fetch(1));
    std::thread::sleep(Duration::from_millis(20));
    let c = fetch(2);
    assert!(
        !a.exists() && b.exists() && c.exists(),
        "a, the oldest, is evicted"
    );
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(fetch(1), b, "b is a hit, and now the most recently used");
    std::thread::sleep(Duration::from_millis(20));
    let d = fetch(3);
    assert!(
        b.exists() && !c.exists() && d.exists(),
        "c, now the oldest, is evicted"
    );

    // Larger than the whole cache: refused before the body is read.
    let huge = bucket.join("huge").unwrap();
    storage
        .put(&huge, Bytes::from(pattern(3_000_000, 9)))
        .unwrap();
    let err = format!(
        "{:#}",
        Cache::open(dir.path(), 2_500_000)
            .unwrap()
            .fetch(&storage, &huge, None)
            .unwrap_err()
    );
    assert!(
        err.contains("more than the whole cache") && err.contains(&huge.to_string()),
        "{err}"
    );

    // Another run (a new cache value on the same folder) reuses what is cached, with no request.
    server.stop();
    let next_run = Cache::open(dir.path(), 2_500_000).unwrap();
    let digest = sha256_hex(&pattern(1_000_000, 3));
    let hit = next_run.fetch(&storage, &urls[3], Some(&digest)).unwrap();
    assert_eq!(hit.path(), d);
}
