//! Writers of CIFAR-10/100 test data in the real layouts, and a tiny HTTP server to download
//! archives from in tests.
//!
//! - Official binary: [`write_cifar10_binary`] (`cifar-10-batches-bin/data_batch_{1..5}.bin`,
//!   `test_batch.bin`, records of a label byte and 3072 bytes: R plane, G plane, B plane, each
//!   32×32 row-major) and [`write_cifar100_binary`] (`cifar-100-binary/{train,test}.bin`,
//!   records of a coarse byte, a fine byte and 3072 bytes).
//! - Python (torchvision): [`write_cifar10_python`] (`cifar-10-batches-py/data_batch_{1..5}`,
//!   `test_batch`, `batches.meta`) and [`write_cifar100_python`] (`cifar-100-python/{train,test,
//!   meta}`), written by the venv's python ([`venv_python`]) with `pickle.dump(d, f,
//!   protocol=2)` of dicts with bytes keys and numpy `uint8` arrays `N×3072`.
//! - Archives: [`cifar10_binary_archive_bytes`], [`cifar100_binary_archive_bytes`]: the
//!   `.tar.gz` bytes of the binary layouts, as on the CIFAR site.
//! - [`serve_http`], [`serve_truncated`]: HTTP/1.1 servers on `127.0.0.1` for download tests.
//!
//! Every writer returns the [`CifarExpected`] images and labels the dataset must yield.
//! Pixel values and labels are a pseudo-random function of the split and index; coarse
//! CIFAR-100 labels are `fine / 5`.

use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes of one 32×32 RGB image.
pub const IMAGE_BYTES: usize = 3072;

/// The images and labels of one split, in dataset order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CifarSplit {
    /// Each image as the dataset returns it: 32×32×3, interleaved RGB (HWC), row-major.
    pub images: Vec<Vec<u8>>,
    /// The label of each image (the fine label for CIFAR-100).
    pub labels: Vec<i64>,
}

/// What a writer wrote: the `train` and `test` splits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CifarExpected {
    /// The training split (all `data_batch_*` in order, or `train`).
    pub train: CifarSplit,
    /// The test split.
    pub test: CifarSplit,
}

/// A file of a layout: path relative to the dataset root, and contents.
type Files = Vec<(String, Vec<u8>)>;

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `count` pseudo-random images and labels in `0..classes`, drawn from `stream`.
fn make_split(stream: u64, count: usize, classes: u64) -> CifarSplit {
    let mut images = Vec::with_capacity(count);
    let mut labels = Vec::with_capacity(count);
    for index in 0..count as u64 {
        let seed = mix(stream ^ mix(index));
        labels.push((mix(seed) % classes) as i64);
        let image = (0..IMAGE_BYTES as u64 / 8)
            .flat_map(|k| mix(seed.wrapping_add(k + 1)).to_le_bytes())
            .collect();
        images.push(image);
    }
    CifarSplit { images, labels }
}

/// One binary record: the label bytes, then the image as R, G and B planes.
fn push_record(out: &mut Vec<u8>, label_bytes: &[u8], hwc: &[u8]) {
    out.extend_from_slice(label_bytes);
    for channel in 0..3 {
        out.extend((0..1024).map(|p| hwc[p * 3 + channel]));
    }
}

fn cifar10_files(per_batch: usize) -> (Files, CifarExpected) {
    let train = make_split(0xC1FA_0010, 5 * per_batch, 10);
    let test = make_split(0xC1FA_0011, per_batch, 10);
    let mut files = Files::new();
    let record = |out: &mut Vec<u8>, split: &CifarSplit, i: usize| {
        push_record(out, &[split.labels[i] as u8], &split.images[i]);
    };
    for batch in 0..5 {
        let mut bytes = Vec::new();
        for i in batch * per_batch..(batch + 1) * per_batch {
            record(&mut bytes, &train, i);
        }
        files.push((
            format!("cifar-10-batches-bin/data_batch_{}.bin", batch + 1),
            bytes,
        ));
    }
    let mut bytes = Vec::new();
    for i in 0..per_batch {
        record(&mut bytes, &test, i);
    }
    files.push(("cifar-10-batches-bin/test_batch.bin".into(), bytes));
    let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";
    files.push((
        "cifar-10-batches-bin/batches.meta.txt".into(),
        names.as_bytes().to_vec(),
    ));
    (files, CifarExpected { train, test })
}

fn cifar100_files(train_count: usize, test_count: usize) -> (Files, CifarExpected) {
    let train = make_split(0xC1FA_0100, train_count, 100);
    let test = make_split(0xC1FA_0101, test_count, 100);
    let mut files = Files::new();
    for (name, split) in [("train.bin", &train), ("test.bin", &test)] {
        let mut bytes = Vec::new();
        for (image, &fine) in split.images.iter().zip(&split.labels) {
            push_record(&mut bytes, &[fine as u8 / 5, fine as u8], image);
        }
        files.push((format!("cifar-100-binary/{name}"), bytes));
    }
    let fine: String = (0..100).map(|i| format!("fine_{i}\n")).collect();
    let coarse: String = (0..20).map(|i| format!("coarse_{i}\n")).collect();
    files.push((
        "cifar-100-binary/fine_label_names.txt".into(),
        fine.into_bytes(),
    ));
    files.push((
        "cifar-100-binary/coarse_label_names.txt".into(),
        coarse.into_bytes(),
    ));
    (files, CifarExpected { train, test })
}

fn write_files(root: &Path, files: &Files) -> io::Result<()> {
    for (path, bytes) in files {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes)?;
    }
    Ok(())
}

/// Writes `root/cifar-10-batches-bin/`: five training batches of `per_batch` records each
/// (train has `5 * per_batch` images) and a test batch of `per_batch` records.
pub fn write_cifar10_binary(root: &Path, per_batch: usize) -> io::Result<CifarExpected> {
    let (files, expected) = cifar10_files(per_batch);
    write_files(root, &files)?;
    Ok(expected)
}

/// Writes `root/cifar-100-binary/` with `train` and `test` records.
pub fn write_cifar100_binary(root: &Path, train: usize, test: usize) -> io::Result<CifarExpected> {
    let (files, expected) = cifar100_files(train, test);
    write_files(root, &files)?;
    Ok(expected)
}

/// The workspace's python with numpy: `<workspace>/.deps/torch-venv/bin/python`.
pub fn venv_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.deps/torch-venv/bin/python")
}

/// Converts binary batch files to pickles (protocol 2, bytes keys, `uint8` arrays N×3072).
/// Arguments: `10|100`, the output folder, then pairs of (binary file, output name).
const PICKLE_SCRIPT: &str = r#"
import os, sys, pickle
import numpy as np
mode, out = sys.argv[1], sys.argv[2]
skip = 1 if mode == "10" else 2
args = sys.argv[3:]
for i in range(0, len(args), 2):
    src, name = args[i], args[i + 1]
    raw = np.fromfile(src, dtype=np.uint8).reshape(-1, 3072 + skip)
    d = {
        b"batch_label": ("batch " + name).encode(),
        b"data": np.ascontiguousarray(raw[:, skip:]),
        b"filenames": [b"image_%05d.png" % j for j in range(raw.shape[0])],
    }
    if mode == "10":
        d[b"labels"] = [int(x) for x in raw[:, 0]]
    else:
        d[b"coarse_labels"] = [int(x) for x in raw[:, 0]]
        d[b"fine_labels"] = [int(x) for x in raw[:, 1]]
    with open(os.path.join(out, name), "wb") as f:
        pickle.dump(d, f, protocol=2)
if mode == "10":
    meta, name = {b"label_names": [b"class_%d" % i for i in range(10)], b"num_vis": 3072}, "batches.meta"
else:
    meta, name = {b"fine_label_names": [b"fine_%d" % i for i in range(100)],
                  b"coarse_label_names": [b"coarse_%d" % i for i in range(20)]}, "meta"
with open(os.path.join(out, name), "wb") as f:
    pickle.dump(meta, f, protocol=2)
"#;

/// Writes the binary files to a scratch folder, then has python pickle them into
/// `root/<folder>` as `names` (pairs of binary file path in `files`, pickle name).
fn write_python(
    root: &Path,
    folder: &str,
    mode: &str,
    files: &Files,
    names: &[(&str, &str)],
) -> io::Result<()> {
    let python = venv_python();
    if !python.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} is missing: the CIFAR python layout is written by the workspace venv's python \
                 (with numpy); create .deps/torch-venv",
                python.display()
            ),
        ));
    }
    let scratch = root.join(format!(".cifar-testdata-{}", std::process::id()));
    write_files(&scratch, files)?;
    let out = root.join(folder);
    std::fs::create_dir_all(&out)?;
    let mut command = std::process::Command::new(&python);
    command.arg("-c").arg(PICKLE_SCRIPT).arg(mode).arg(&out);
    for (binary, name) in names {
        command.arg(scratch.join(binary)).arg(name);
    }
    let output = command.output();
    let _ = std::fs::remove_dir_all(&scratch);
    let output = output
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {}: {e}", python.display())))?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{} failed to write the CIFAR pickles: {}",
            python.display(),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(())
}

/// Writes `root/cifar-10-batches-py/` (torchvision's layout) with the same contents as
/// [`write_cifar10_binary`]; needs [`venv_python`].
pub fn write_cifar10_python(root: &Path, per_batch: usize) -> io::Result<CifarExpected> {
    let (files, expected) = cifar10_files(per_batch);
    let names = [
        ("cifar-10-batches-bin/data_batch_1.bin", "data_batch_1"),
        ("cifar-10-batches-bin/data_batch_2.bin", "data_batch_2"),
        ("cifar-10-batches-bin/data_batch_3.bin", "data_batch_3"),
        ("cifar-10-batches-bin/data_batch_4.bin", "data_batch_4"),
        ("cifar-10-batches-bin/data_batch_5.bin", "data_batch_5"),
        ("cifar-10-batches-bin/test_batch.bin", "test_batch"),
    ];
    write_python(root, "cifar-10-batches-py", "10", &files, &names)?;
    Ok(expected)
}

/// Writes `root/cifar-100-python/` (torchvision's layout) with the same contents as
/// [`write_cifar100_binary`]; needs [`venv_python`].
pub fn write_cifar100_python(root: &Path, train: usize, test: usize) -> io::Result<CifarExpected> {
    let (files, expected) = cifar100_files(train, test);
    let names = [
        ("cifar-100-binary/train.bin", "train"),
        ("cifar-100-binary/test.bin", "test"),
    ];
    write_python(root, "cifar-100-python", "100", &files, &names)?;
    Ok(expected)
}

/// Packs files into a tar.gz, with an entry for their top-level folder first.
fn tar_gz(top: &str, files: &Files) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    header.set_mode(0o755);
    header.set_mtime(1_243_000_000);
    builder
        .append_data(&mut header, format!("{top}/"), io::empty())
        .expect("writing to memory cannot fail");
    for (path, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_243_000_000);
        builder
            .append_data(&mut header, path, bytes.as_slice())
            .expect("writing to memory cannot fail");
    }
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .expect("writing to memory cannot fail")
}

/// The bytes of `cifar-10-binary.tar.gz` holding [`write_cifar10_binary`]'s files.
pub fn cifar10_binary_archive_bytes(per_batch: usize) -> (Vec<u8>, CifarExpected) {
    let (files, expected) = cifar10_files(per_batch);
    (tar_gz("cifar-10-batches-bin", &files), expected)
}

/// The bytes of `cifar-100-binary.tar.gz` holding [`write_cifar100_binary`]'s files.
pub fn cifar100_binary_archive_bytes(train: usize, test: usize) -> (Vec<u8>, CifarExpected) {
    let (files, expected) = cifar100_files(train, test);
    (tar_gz("cifar-100-binary", &files), expected)
}

/// The MD5 of `bytes` as 32 lower-case hex digits (for the dataset's `md5` parameter).
pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Waits up to 60 s for a connection, so a test whose client never comes does not hang.
fn accept(listener: &TcpListener) -> Option<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).ok()?;
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .ok()?;
                return Some(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => return None,
        }
    }
    None
}

/// Reads a request's head; returns its path.
fn read_request(stream: &TcpStream) -> Option<String> {
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    first.split_whitespace().nth(1).map(str::to_string)
}

/// Answers with `status`, announcing `body.len()` bytes but sending only `sent` of them.
fn respond(mut stream: TcpStream, status: &str, body: &[u8], sent: usize) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(&body[..sent.min(body.len())]))
        .and_then(|()| stream.flush());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

fn listen() -> io::Result<(TcpListener, String)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let url = format!("http://{}/", listener.local_addr()?);
    Ok((listener, url))
}

/// Starts an HTTP/1.1 server on `127.0.0.1` that answers up to `requests` GET requests (one
/// per connection) with the file of `files` (`(name, bytes)`) at `/<name>`, or 404. Returns
/// the base URL (`http://127.0.0.1:PORT/`, for the `base_url` parameter) and a handle that
/// yields the requested paths once the server stops (after `requests` requests, or when no
/// client comes for 60 s).
pub fn serve_http(
    files: Vec<(String, Vec<u8>)>,
    requests: usize,
) -> io::Result<(String, JoinHandle<Vec<String>>)> {
    let (listener, url) = listen()?;
    let handle = std::thread::spawn(move || {
        let mut paths = Vec::new();
        for _ in 0..requests {
            let Some(stream) = accept(&listener) else {
                break;
            };
            let Some(path) = read_request(&stream) else {
                continue;
            };
            match files.iter().find(|(name, _)| path == format!("/{name}")) {
                Some((_, body)) => respond(stream, "200 OK", body, body.len()),
                None => respond(stream, "404 Not Found", b"not found", 9),
            }
            paths.push(path);
        }
        paths
    });
    Ok((url, handle))
}

/// Starts a server for one request (any path) that announces `body.len()` bytes but sends
/// only the first `sent` and closes the connection: a download cut short. Returns the base
/// URL and a handle yielding the requested path(s).
pub fn serve_truncated(
    body: Vec<u8>,
    sent: usize,
) -> io::Result<(String, JoinHandle<Vec<String>>)> {
    let (listener, url) = listen()?;
    let handle = std::thread::spawn(move || {
        let mut paths = Vec::new();
        if let Some(stream) = accept(&listener) {
            if let Some(path) = read_request(&stream) {
                respond(stream, "200 OK", &body, sent);
                paths.push(path);
            }
        }
        paths
    });
    Ok((url, handle))
}
