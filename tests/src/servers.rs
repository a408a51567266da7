//! Storage servers for tests, started on loopback ports: Azurite (the Azure Storage emulator,
//! npm) and moto's S3 server (PyPI), both installed into `.deps/emulators` by
//! `scripts/setup-libtorch.sh --test-servers`, which `scripts/test` runs. A missing server fails
//! the test with a message saying to run that script; nothing is skipped.
//!
//! Shared by the e2e tests (`e2e::servers`) and the host's storage tests (included by path).

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's published development key (the same in every install; not a secret).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub fn emulators() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".deps/emulators")
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Azurite,
    Moto,
}

/// A storage server process on a loopback port, stopped when dropped.
pub struct Server {
    kind: Kind,
    pub port: u16,
    data: tempfile::TempDir,
    child: Option<Child>,
}

impl Server {
    pub fn start(kind: Kind) -> Server {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("server.log")).unwrap_or_default()
    }

    /// Stops the server as an operator would (SIGTERM, so that Azurite saves its metadata),
    /// or kills it after 10 s.
    pub fn stop(&mut self) {
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

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Credentials and endpoint for this server, as the usual environment variables.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self.kind {
            Kind::Moto => vec![
                ("AWS_ACCESS_KEY_ID", "testing".to_string()),
                ("AWS_SECRET_ACCESS_KEY", "testing-secret".to_string()),
                ("AWS_ENDPOINT_URL", self.endpoint()),
                ("AWS_REGION", "us-east-1".to_string()),
            ],
            Kind::Azurite => vec![
                ("AZURE_STORAGE_USE_EMULATOR", "true".to_string()),
                ("AZURITE_BLOB_STORAGE_URL", self.endpoint()),
            ],
        }
    }

    /// [`Server::env`] plus `SSL_HOST_CACHE=cache`: an ssl-host process on a "machine" whose
    /// cache (staging folders of packs and runs, fetched shards) is that folder.
    pub fn env_with_cache(&self, cache: &Path) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        env.push(("SSL_HOST_CACHE", cache.display().to_string()));
        env
    }

    /// A new, empty bucket (container) on this server; its URL.
    pub fn bucket(&self, name: &str) -> String {
        match self.kind {
            Kind::Moto => {
                // moto accepts unsigned requests.
                let status = http_put(self.port, &format!("/{name}"), &[]);
                assert_eq!(status, 200, "create bucket {name}: {}", self.log());
                format!("s3://{name}")
            }
            Kind::Azurite => {
                create_container(self.port, name);
                format!("az://{name}")
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

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
