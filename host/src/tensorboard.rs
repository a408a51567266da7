//! TensorBoard event files, written without TensorFlow: scalar summaries only.
//!
//! A file is a sequence of TFRecords, each holding one serialized `tensorflow.Event`
//! protocol buffer:
//!
//! ```text
//! u64 LE  length of data
//! u32 LE  masked CRC32C of the 8 length bytes
//! [u8]    data
//! u32 LE  masked CRC32C of data
//! ```
//!
//! where `masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8` (wrapping). The protobuf is
//! encoded by hand; the fields used are `Event { double wall_time = 1; int64 step = 2;
//! string file_version = 3; Summary summary = 5; SessionLog session_log = 7; }`,
//! `Summary { repeated Value value = 1; }`, `Summary.Value { string tag = 1; float
//! simple_value = 2; }` and `SessionLog { SessionStatus status = 1; }` (START = 1).
//!
//! Each [`EventWriter`] creates a new file (`events.out.tfevents.<unix secs>.<host>.<pid>.
//! ssl-host`), so a resumed run appends a new file to the same directory; TensorBoard reads
//! all event files of a directory as one run.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes scalar summaries to a new TensorBoard event file. Writes are buffered; call
/// [`EventWriter::flush`] to make them visible (dropping the writer flushes too).
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir` if needed and a new event file in it, and writes the file's first record
    /// (an event with `file_version: "brain.Event:2"`). If a file of that name already exists
    /// (a second writer in the same second and process), a `.1`, `.2`, … suffix is added.
    pub fn create(dir: &Path) -> io::Result<EventWriter> {
        std::fs::create_dir_all(dir)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let base = format!(
            "events.out.tfevents.{now}.{}.{}.ssl-host",
            hostname(),
            std::process::id()
        );
        let mut suffix = 0u32;
        let (path, file) = loop {
            let name = if suffix == 0 {
                base.clone()
            } else {
                format!("{base}.{suffix}")
            };
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && suffix < 1000 => suffix += 1,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot create {}: {e}", path.display()),
                    ))
                }
            }
        };
        let mut writer = EventWriter {
            path,
            out: BufWriter::new(file),
        };
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_bytes(&mut event, 3, b"brain.Event:2");
        writer.write_record(&event)?;
        writer.flush()?;
        Ok(writer)
    }

    /// Tells TensorBoard that the run restarted at `step`: an event with `step` and
    /// `session_log { status: START }` (as PyTorch's `SummaryWriter(purge_step=...)`), on which
    /// TensorBoard drops the events at `step` and later of the files before this one (epochs
    /// logged before a crash but never checkpointed, and written again after the resume).
    pub fn restart_at(&mut self, step: i64) -> io::Result<()> {
        let mut session_log = Vec::new();
        put_key(&mut session_log, 1, WIRE_VARINT);
        put_varint(&mut session_log, 1); // SessionLog.START
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_key(&mut event, 2, WIRE_VARINT);
        put_varint(&mut event, step as u64);
        put_bytes(&mut event, 7, &session_log);
        self.write_record(&event)?;
        self.flush()
    }

    /// The path of the event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a scalar `value` (stored as `f32`, as TensorBoard's `simple_value`) for `tag`
    /// at `step`, stamped with the current wall time.
    pub fn add_scalar(&mut self, tag: &str, value: f64, step: i64) -> io::Result<()> {
        let event = scalar_event(tag, value as f32, step, wall_time());
        self.write_record(&event)
    }

    /// Writes the buffered records to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn write_record(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(&tfrecord(data))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The host name for the file name (as TensorFlow's writers use), with characters that do not
/// belong in a file name replaced; `localhost` if it cannot be read.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

/// The serialized `Event` of one scalar summary.
fn scalar_event(tag: &str, value: f32, step: i64, wall_time: f64) -> Vec<u8> {
    let mut value_msg = Vec::new();
    put_bytes(&mut value_msg, 1, tag.as_bytes());
    // `simple_value` is in a oneof, so it is written even when 0 (its presence matters).
    put_key(&mut value_msg, 2, WIRE_FIXED32);
    value_msg.extend_from_slice(&value.to_le_bytes());
    let mut summary = Vec::new();
    put_bytes(&mut summary, 1, &value_msg);
    let mut event = Vec::new();
    put_double(&mut event, 1, wall_time);
    if step != 0 {
        put_key(&mut event, 2, WIRE_VARINT);
        put_varint(&mut event, step as u64);
    }
    put_bytes(&mut event, 5, &summary);
    event
}

const WIRE_VARINT: u32 = 0;
const WIRE_FIXED64: u32 = 1;
const WIRE_LEN: u32 = 2;
const WIRE_FIXED32: u32 = 5;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from((field << 3) | wire));
}

fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    put_key(out, field, WIRE_FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `data` in TFRecord framing.
fn tfrecord(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// The CRC as TFRecord stores it: `((crc >> 15) | (crc << 17)) + 0xa282ead8`, wrapping.
fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Table of the reflected CRC-32C (Castagnoli) polynomial 0x82F63B78.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32C (Castagnoli) of `data`: reflected, initial value and final xor 0xFFFFFFFF.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn crc32c_known_vectors() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        // RFC 3720 (iSCSI) B.4 test vectors.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
    }

    #[test]
    fn varints_and_scalar_event_bytes() {
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(v, [0xAC, 0x02]);
        v.clear();
        put_varint(&mut v, -1i64 as u64);
        assert_eq!(v.len(), 10);
        assert_eq!(v[9], 0x01);

        let e = scalar_event("a", 1.0, 3, 0.5);
        let mut want = vec![0x09];
        want.extend_from_slice(&0.5f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 3, 0x2A, 10, 0x0A, 8, 0x0A, 1, b'a', 0x15]);
        want.extend_from_slice(&1.0f32.to_le_bytes());
        assert_eq!(e, want);
    }

    #[test]
    fn record_framing() {
        let r = tfrecord(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[8..12], &masked_crc32c(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(&r[15..], &masked_crc32c(b"abc").to_le_bytes());
    }

    #[test]
    fn writers_in_one_dir_get_distinct_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = EventWriter::create(dir.path()).unwrap();
        let b = EventWriter::create(dir.path()).unwrap();
        assert_ne!(a.path(), b.path());
        let name = a.path().file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        assert!(name.ends_with(".ssl-host"), "{name}");
    }

    const PYTHON: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../.deps/torch-venv/bin/python"
    );

    /// Reads the directory with TensorBoard's own reader: checks every record's CRCs and
    /// parses it as an `Event` (the first must carry the file version), then prints every
    /// scalar that `EventAccumulator` finds as `tag step value` lines.
    const READER: &str = r#"
import struct, sys, glob, os
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
d = sys.argv[1]
for path in sorted(glob.glob(os.path.join(d, "*tfevents*"))):
    data = open(path, "rb").read()
    pos, n = 0, 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(header), "length crc"
        body = data[pos + 12:pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == masked_crc32c(body), "data crc"
        ev = event_pb2.Event.FromString(body)
        if n == 0:
            assert ev.file_version == "brain.Event:2", ev
        pos += 16 + length
        n += 1
    print("records", os.path.basename(path), n)
ea = EventAccumulator(d, size_guidance={"scalars": 0})
ea.Reload()
for tag in sorted(ea.Tags()["scalars"]):
    for s in ea.Scalars(tag):
        print("scalar", tag, s.step, repr(s.value))
"#;

    /// A run logs steps 0..=3, crashes, and resumes at step 2 in a new file: TensorBoard's
    /// reader shows steps 0 and 1 of the first file and 2 and 3 of the second, once each.
    #[test]
    fn a_resumed_run_replaces_the_steps_it_logs_again() {
        if !Path::new(PYTHON).exists() {
            eprintln!("skipping: {PYTHON} is missing");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        {
            let mut w = EventWriter::create(dir.path()).unwrap();
            for step in 0..4 {
                w.add_scalar("ssl/loss", step as f64, step).unwrap();
            }
        }
        {
            let mut w = EventWriter::create(dir.path()).unwrap();
            w.restart_at(2).unwrap();
            for step in 2..4 {
                w.add_scalar("ssl/loss", 10.0 + step as f64, step).unwrap();
            }
        }
        let output = Command::new(PYTHON)
            .arg("-c")
            .arg(READER)
            .arg(dir.path())
            .output()
            .expect("python runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        let read: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("scalar ssl/loss "))
            .collect();
        assert_eq!(read, ["0 0.0", "1 1.0", "2 12.0", "3 13.0"], "{stdout}");
    }

    /// Writes scalars (NaN, 0, negative and large steps included, two files as a resumed run
    /// would) and reads them back with the `tensorboard` Python package. Skipped (with a
    /// message) where the project's Python venv is missing.
    #[test]
    fn tensorboard_reads_the_scalars() {
        if !Path::new(PYTHON).exists() {
            eprintln!("skipping: {PYTHON} is missing");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let written: Vec<(&str, i64, f64)> = vec![
            ("ssl/loss", 0, 1.5),
            ("ssl/loss", 1, 0.25),
            ("ssl/loss", 2, f64::NAN),
            ("ssl_online_evaluator/val/AreaUnderRocCurve", 7, 0.0),
            ("ssl_online_evaluator/val/AreaUnderRocCurve", 300, -3.75),
            ("lr", 5_000_000_000, 1e-4),
        ];
        {
            let mut w = EventWriter::create(dir.path()).unwrap();
            for &(tag, step, value) in &written[..3] {
                w.add_scalar(tag, value, step).unwrap();
            }
            w.flush().unwrap();
        }
        // A second writer (a resumed run) appends a new file; this one is flushed by drop.
        {
            let mut w = EventWriter::create(dir.path()).unwrap();
            for &(tag, step, value) in &written[3..] {
                w.add_scalar(tag, value, step).unwrap();
            }
        }
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 2);

        let output = Command::new(PYTHON)
            .arg("-c")
            .arg(READER)
            .arg(dir.path())
            .output()
            .expect("python runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "reader failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let records: Vec<usize> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("records "))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(records, [4, 4], "{stdout}");

        let mut read: Vec<(String, i64, f64)> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("scalar "))
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (
                    f[0].to_string(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                )
            })
            .collect();
        let mut want: Vec<(String, i64, f64)> = written
            .iter()
            .map(|&(t, s, v)| (t.to_string(), s, v as f32 as f64))
            .collect();
        read.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        want.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        assert_eq!(read.len(), want.len(), "{stdout}");
        for (r, w) in read.iter().zip(&want) {
            assert_eq!((&r.0, r.1), (&w.0, w.1), "{stdout}");
            assert!(
                r.2 == w.2 || (r.2.is_nan() && w.2.is_nan()),
                "{} step {}: read {} wrote {}",
                r.0,
                r.1,
                r.2,
                w.2
            );
        }
    }
}
