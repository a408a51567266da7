//! Object storage (`ssl_host::storage`) against real servers started here on loopback ports:
//! Azurite (the Azure Storage emulator, npm) and moto's S3 server (PyPI), both installed into
//! `.deps/emulators` by `scripts/setup-libtorch.sh --test-servers`, which `scripts/test` runs.
//! A missing server fails the test with a message saying to run that script; nothing is skipped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use ssl_host::storage::{Cache, Env, ObjectUrl, RetryPolicy, Storage, StorageOptions};

/// Azurite's published development key (the same in every install; not a secret).
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn emulators() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/emulators")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Azurite,
    Moto,
}

/// A storage server process on a loopback port, stopped when dropped.
struct Server {
    kind: Kind,
    port: u16,
    data: tempfile::TempDir,
    child: Option<Child>,
}

impl Server {
    fn start(kind: Kind) -> Server {
        let mut server = Server {
            kind,
            port: free_port(),
            data: tempfile::tempdir().expect("a temporary folder"),
            child: None,
        };
        server.launch();
        server
    }

    fn program(&self) -> PathBuf {
        let path = match self.kind {
            Kind::Azurite => emulators().join("node_modules/.bin/azurite-blob"),
            Kind::Moto => emulators().join("venv/bin/moto_server"),
        };
        assert!(
            path.exists(),
            "{} is missing: run scripts/setup-libtorch.sh --test-servers (it installs Azurite \
             from npm and moto from PyPI into .deps/emulators; scripts/test and CI run it)",
            path.display()
        );
        path
    }

    fn launch(&mut self) {
        let port = self.port.to_string();
        let mut command = Command::new(self.program());
        match self.kind {
            // On disk (not in memory), so that a restarted server still has its objects.
            Kind::Azurite => command.args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port,
                "--location",
                &self.data.path().display().to_string(),
                "--skipApiVersionCheck",
                "--silent",
            ]),
            Kind::Moto => command.args(["-H", "127.0.0.1", "-p", &port]),
        };
        let log = std::fs::File::create(self.data.path().join("server.log")).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program().display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{:?} exited ({status}) before listening: {}",
                    self.kind,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{:?} did not listen within 60 s: {}",
                self.kind,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("server.log")).unwrap_or_default()
    }

    /// Stops the server as an operator would (SIGTERM, so that Azurite saves its metadata),
    /// or kills it after 10 s.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Credentials and endpoint for this server, as the usual environment variables.
    fn env(&self) -> Env {
        match self.kind {
            Kind::Moto => Env::from_pairs([
                ("AWS_ACCESS_KEY_ID", "testing".to_string()),
                ("AWS_SECRET_ACCESS_KEY", "testing-secret".to_string()),
                ("AWS_ENDPOINT_URL", self.endpoint()),
                ("AWS_REGION", "us-east-1".to_string()),
            ]),
            Kind::Azurite => Env::from_pairs([
                ("AZURE_STORAGE_USE_EMULATOR", "true".to_string()),
                ("AZURITE_BLOB_STORAGE_URL", self.endpoint()),
            ]),
        }
    }

    /// A new, empty bucket (container) on this server; its URL.
    fn bucket(&self, name: &str) -> ObjectUrl {
        match self.kind {
            Kind::Moto => {
                // moto accepts unsigned requests.
                let status = http_put(self.port, &format!("/{name}"), &[]);
                assert_eq!(status, 200, "create bucket {name}: {}", self.log());
                ObjectUrl::parse(&format!("s3://{name}")).unwrap()
            }
            Kind::Azurite => {
                create_container(self.port, name);
                ObjectUrl::parse(&format!("az://{name}")).unwrap()
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends one HTTP/1.1 request and returns the status code.
fn http_put(port: u16, path: &str, headers: &[(String, String)]) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut request = format!("PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("receive");
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"))
}

/// Creates a container on Azurite, signed with the development key (Shared Key).
fn create_container(port: u16, name: &str) {
    let date = httpdate_now();
    let version = "2021-08-06";
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
         /devstoreaccount1/devstoreaccount1/{name}\nrestype:container"
    );
    let key = base64_decode(AZURITE_KEY);
    let signature = base64_encode(&hmac_sha256(&key, to_sign.as_bytes()));
    let headers = [
        ("x-ms-date".to_string(), date),
        ("x-ms-version".to_string(), version.to_string()),
        (
            "Authorization".to_string(),
            format!("SharedKey devstoreaccount1:{signature}"),
        ),
    ];
    let status = http_put(
        port,
        &format!("/devstoreaccount1/{name}?restype=container"),
        &headers,
    );
    assert_eq!(status, 201, "create container {name}");
}

fn httpdate_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = ssl_host::outputs::civil_date(days);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        months[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|&c| c != b'=') {
        let value = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
        bits = bits << 6 | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

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
    let storage = Storage::with_env(server.env(), quick_retries());
    let bucket = server.bucket("round-trip");
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
    let object = server.bucket("conn").join("x.bin").unwrap();
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
    let storage = Storage::with_env(server.env(), quick_retries());
    let object = server
        .bucket("multipart")
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
    let storage = Storage::with_env(server.env(), options);
    let bucket = server.bucket("restart");
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
        server.bucket("restart");
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
    let storage = Storage::with_env(server.env(), quick_retries());
    let bucket = server.bucket("digests");
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
    let container = server.bucket("secret");
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
    let setup = Storage::with_env(server.env(), quick_retries());
    let object = server.bucket("shared").join("train-000000.tar").unwrap();
    let data = pattern(8 << 20, 5);
    let digest = sha256_hex(&data);
    setup.put(&object, Bytes::from(data.clone())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let start = Arc::new(Barrier::new(2));
    let fetchers: Vec<_> = (0..2)
        .map(|_| {
            let (env, object, digest, dir, start) = (
                server.env(),
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
    let storage = Storage::with_env(server.env(), quick_retries());
    let bucket = server.bucket("lru");
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
