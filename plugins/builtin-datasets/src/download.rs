//! Fetching and unpacking dataset archives, safely against interruptions.
//!
//! [`fetch`] downloads a URL (HTTP or HTTPS) into `.<file>.<pid>.<n>.part` (a name of this
//! process and this download alone, so processes or threads downloading into the same folder
//! never write into one file) with a progress bar on stderr, checks the size against
//! `Content-Length` and the MD5, and only then renames it to `<file>`.
//! [`extract_tar_gz`] unpacks an archive into a temporary folder next to the destination and
//! renames the wanted folder into place last. Whatever is interrupted leaves either nothing or
//! a file/folder under a temporary name, never something that looks complete.

use flate2::read::GzDecoder;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use md5::{Digest, Md5};
use ssl_plugin_api::{bail, PluginError, Result};
use std::fs::File;
use std::io::{BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Checks an MD5 written as 32 hex digits; returns it in lower case.
pub(crate) fn parse_md5(text: &str, what: &str) -> Result<String> {
    let text = text.trim();
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{what} = {text:?}: expected an MD5 of 32 hexadecimal digits");
    }
    Ok(text.to_ascii_lowercase())
}

/// The MD5 of a file, as 32 lower-case hex digits.
pub(crate) fn md5_file(path: &Path) -> Result<String> {
    let with_path = |e: std::io::Error| PluginError::from(e).context(path.display());
    let mut file = File::open(path).map_err(with_path)?;
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer).map_err(with_path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `.<dest file name>.<pid>.<n>.part` next to `dest`, where a download is written until it is
/// complete and verified: the process id and a per-process count make it this download's
/// own, so two processes (or threads) fetching the same file into the same folder never
/// interleave their writes; each renames its own verified file to `dest` (atomic, the last
/// one wins, both complete).
pub(crate) fn part_path(dest: &Path) -> PathBuf {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let mut name = std::ffi::OsString::from(".");
    name.push(dest.file_name().unwrap_or_default());
    name.push(format!(".{}.{n}.part", std::process::id()));
    dest.with_file_name(name)
}

/// Removes partial downloads of `dest` ([`part_path`] names) left by processes that no longer
/// run (a download interrupted by Ctrl-C or a kill); those of running processes stay. Linux
/// only (it asks `/proc`); elsewhere nothing is removed.
fn remove_stale_parts(dest: &Path) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let (Some(dir), Some(file)) = (dest.parent(), dest.file_name().and_then(|f| f.to_str())) else {
        return;
    };
    let prefix = format!(".{file}.");
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|r| r.strip_suffix(".part"))
        else {
            continue;
        };
        let Some(Ok(pid)) = rest.split_once('.').map(|(pid, _)| pid.parse::<u32>()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Downloads `url` to `dest` through a partial file of its own ([`part_path`]): the body must
/// have the length announced by `Content-Length` (when there is one) and the MD5
/// `expected_md5` (lower-case hex); only then is it renamed to `dest`. On any failure the
/// partial file is removed and the error names the URL and what differed.
pub(crate) fn fetch(url: &str, dest: &Path, expected_md5: &str) -> Result<()> {
    remove_stale_parts(dest);
    let part = part_path(dest);
    // HTTPS trusts the system's certificate store (as curl and Python do), so that proxies
    // with their own CA work too.
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut response = agent
        .get(url)
        .call()
        .map_err(|e| PluginError::msg(format!("download of {url} failed: {e}")))?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut body = response.body_mut().as_reader();
    let mut file = File::create(&part)
        .map_err(|e| PluginError::from(e).context(format!("cannot create {}", part.display())))?;
    let mut progress = Progress::new(url, dest, total);
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut received = 0u64;
    let outcome: Result<()> = loop {
        let n = match body.read(&mut buffer) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                break Err(PluginError::msg(format!(
                    "download of {url} truncated: the transfer failed after {received} of {} \
                     bytes ({e})",
                    total.map_or("an unknown number of".to_string(), |t| t.to_string())
                )))
            }
        };
        hasher.update(&buffer[..n]);
        if let Err(e) = file.write_all(&buffer[..n]) {
            break Err(PluginError::from(e).context(format!("cannot write {}", part.display())));
        }
        received += n as u64;
        progress.update(received);
    };
    let outcome = outcome
        .and_then(|()| match total {
            Some(total) if received != total => Err(PluginError::msg(format!(
                "download of {url} truncated: received {received} bytes, the server announced \
                 {total} (Content-Length)"
            ))),
            _ => Ok(()),
        })
        .and_then(|()| {
            file.sync_all()
                .map_err(|e| PluginError::from(e).context(part.display()))
        })
        .and_then(|()| {
            let actual = hex(&hasher.finalize_reset());
            if actual == expected_md5 {
                Ok(())
            } else {
                Err(PluginError::msg(format!(
                    "download of {url}: MD5 mismatch: expected {expected_md5}, got {actual} \
                     ({received} bytes); check `base_url` and `md5`"
                )))
            }
        });
    drop(file);
    progress.finish(outcome.is_ok(), received);
    if let Err(e) = outcome {
        let _ = std::fs::remove_file(&part);
        return Err(PluginError::msg(format!(
            "{}; the partial file {} was removed",
            e.message(),
            part.display()
        )));
    }
    std::fs::rename(&part, dest).map_err(|e| {
        PluginError::from(e).context(format!(
            "cannot rename {} to {}",
            part.display(),
            dest.display()
        ))
    })
}

/// Progress of one download on stderr: a bar on a terminal, else a line every 10%.
struct Progress {
    bar: Option<ProgressBar>,
    total: Option<u64>,
    /// Next amount of bytes at which a plain line is printed.
    next_line: u64,
}

impl Progress {
    fn new(url: &str, dest: &Path, total: Option<u64>) -> Self {
        let size = total.map_or(String::new(), |t| format!(" ({})", human(t)));
        if std::io::stderr().is_terminal() {
            let bar = match total {
                Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = if total.is_some() {
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
            } else {
                "{msg} {spinner} {bytes} {bytes_per_sec}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(format!("downloading {url}{size}"));
            Progress {
                bar: Some(bar),
                total,
                next_line: u64::MAX,
            }
        } else {
            eprintln!("downloading {url}{size} to {}", dest.display());
            Progress {
                bar: None,
                total,
                next_line: Self::step(total),
            }
        }
    }

    /// Bytes between two plain lines: 10% of the total, or 16 MiB when it is unknown.
    fn step(total: Option<u64>) -> u64 {
        total.map_or(16 << 20, |t| (t / 10).max(1))
    }

    fn update(&mut self, received: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(received);
        } else if received >= self.next_line {
            match self.total {
                Some(t) if t > 0 => eprintln!(
                    "  {:>3}% ({} of {})",
                    received * 100 / t,
                    human(received),
                    human(t)
                ),
                _ => eprintln!("  {}", human(received)),
            }
            let step = Self::step(self.total);
            self.next_line = (received / step + 1) * step;
        }
    }

    fn finish(&self, ok: bool, received: u64) {
        if let Some(bar) = &self.bar {
            if ok {
                bar.finish();
            } else {
                bar.abandon();
            }
        } else if ok {
            eprintln!("  done ({})", human(received));
        }
    }
}

/// A byte count in KiB or MiB.
fn human(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// Unpacks the tar.gz `archive` and moves its top-level folder `folder` to `into/folder`.
/// The archive is unpacked into a temporary folder inside `into` first, so `into/folder`
/// appears complete or not at all. When `into/folder` appears meanwhile (another process),
/// that one is kept.
pub(crate) fn extract_tar_gz(archive: &Path, into: &Path, folder: &str) -> Result<PathBuf> {
    let target = into.join(folder);
    let temp = into.join(format!(".{folder}.extracting-{}", std::process::id()));
    if temp.exists() {
        std::fs::remove_dir_all(&temp).map_err(|e| {
            PluginError::from(e).context(format!("cannot remove {}", temp.display()))
        })?;
    }
    let result = unpack(archive, &temp).and_then(|()| {
        let extracted = temp.join(folder);
        if !extracted.is_dir() {
            bail!(
                "{}: the archive holds no folder `{folder}` at its top level",
                archive.display()
            );
        }
        match std::fs::rename(&extracted, &target) {
            Ok(()) => Ok(()),
            Err(_) if target.is_dir() => Ok(()),
            Err(e) => Err(PluginError::from(e).context(format!(
                "cannot move {} to {}",
                extracted.display(),
                target.display()
            ))),
        }
    });
    let _ = std::fs::remove_dir_all(&temp);
    result.map(|()| target)
}

fn unpack(archive: &Path, temp: &Path) -> Result<()> {
    let context = |e: std::io::Error| {
        PluginError::from(e).context(format!(
            "cannot extract {} into {}",
            archive.display(),
            temp.display()
        ))
    };
    std::fs::create_dir_all(temp).map_err(context)?;
    let file = File::open(archive).map_err(context)?;
    let mut tar = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
    tar.unpack(temp).map_err(context)
}

// The tests need the writers of `testdata`: run them with `--features testdata`.
#[cfg(all(test, feature = "testdata"))]
mod tests {
    use super::*;
    use crate::testdata::cifar as td;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ssl-download-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The names in `dir`, sorted.
    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn fetch_checks_md5_and_keeps_nothing_on_mismatch() {
        let dir = temp_dir("md5");
        let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let md5 = td::md5_hex(&body);
        let (url, server) = td::serve_http(vec![("f.bin".into(), body.clone())], 2).unwrap();
        let dest = dir.join("f.bin");
        let wrong = "0123456789abcdef0123456789abcdef";
        let err = fetch(&format!("{url}f.bin"), &dest, wrong).unwrap_err();
        let msg = err.message();
        assert!(msg.contains("MD5 mismatch"), "{msg}");
        assert!(msg.contains(wrong) && msg.contains(&md5), "{msg}");
        assert!(msg.contains(&format!("{url}f.bin")), "{msg}");
        assert!(
            msg.contains("the partial file") && msg.contains("was removed"),
            "{msg}"
        );
        assert!(names_in(&dir).is_empty(), "{:?}", names_in(&dir));
        fetch(&format!("{url}f.bin"), &dest, &md5).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        assert_eq!(md5_file(&dest).unwrap(), md5);
        assert_eq!(names_in(&dir), ["f.bin"]);
        assert_eq!(server.join().unwrap(), vec!["/f.bin", "/f.bin"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fetch_reports_truncated_and_missing_files() {
        let dir = temp_dir("truncated");
        let body = vec![42u8; 50_000];
        let (url, server) = td::serve_truncated(body.clone(), 20_000).unwrap();
        let dest = dir.join("f.bin");
        let err = fetch(&format!("{url}f.bin"), &dest, &td::md5_hex(&body)).unwrap_err();
        let msg = err.message();
        assert!(msg.contains("truncated"), "{msg}");
        assert!(msg.contains("50000"), "{msg}");
        assert!(names_in(&dir).is_empty(), "{:?}", names_in(&dir));
        server.join().unwrap();

        let (url, server) = td::serve_http(vec![("other".into(), vec![1])], 1).unwrap();
        let err = fetch(&format!("{url}f.bin"), &dest, &td::md5_hex(&body)).unwrap_err();
        assert!(err.message().contains("404"), "{err}");
        assert!(err.message().contains(&format!("{url}f.bin")), "{err}");
        assert!(names_in(&dir).is_empty(), "{:?}", names_in(&dir));
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The partial file is this process's and this download's own: another process's partial
    /// download of the same file into the same folder (the old shared name `<file>.part`, or
    /// `.<file>.<other pid>.*.part`) is neither written into, renamed nor removed.
    #[test]
    fn partial_file_is_per_process_and_per_download() {
        let dir = temp_dir("part");
        let dest = dir.join("f.bin");
        let (a, b) = (part_path(&dest), part_path(&dest));
        assert_ne!(a, b);
        let pid = std::process::id();
        for part in [&a, &b] {
            let name = part.file_name().unwrap().to_str().unwrap();
            assert!(
                name.starts_with(&format!(".f.bin.{pid}.")) && name.ends_with(".part"),
                "{name}"
            );
            assert_eq!(part.parent(), Some(dir.as_path()));
        }

        // Process 1 always runs; no process has an id above the kernel's pid_max (≤ 2^22).
        let others = [dir.join("f.bin.part"), dir.join(".f.bin.1.0.part")];
        for other in &others {
            std::fs::write(other, b"another process's partial download").unwrap();
        }
        let stale = dir.join(".f.bin.999999999.3.part");
        std::fs::write(&stale, b"left by a killed download").unwrap();
        let body: Vec<u8> = (0..70_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let md5 = td::md5_hex(&body);
        let (url, server) = td::serve_http(vec![("f.bin".into(), body.clone())], 2).unwrap();
        let wrong = "0123456789abcdef0123456789abcdef";
        fetch(&format!("{url}f.bin"), &dest, wrong).unwrap_err();
        fetch(&format!("{url}f.bin"), &dest, &md5).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        for other in &others {
            assert_eq!(
                std::fs::read(other).unwrap(),
                b"another process's partial download"
            );
        }
        let mut expected: Vec<String> = others
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .chain(["f.bin".to_string()])
            .collect();
        expected.sort();
        assert_eq!(names_in(&dir), expected);
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn extraction_moves_the_folder_into_place_last() {
        let dir = temp_dir("extract");
        let (bytes, _) = td::cifar10_binary_archive_bytes(2);
        let archive = dir.join("a.tar.gz");
        std::fs::write(&archive, &bytes).unwrap();
        let folder = extract_tar_gz(&archive, &dir, "cifar-10-batches-bin").unwrap();
        assert_eq!(folder, dir.join("cifar-10-batches-bin"));
        assert_eq!(
            std::fs::metadata(folder.join("data_batch_3.bin"))
                .unwrap()
                .len(),
            2 * 3073
        );
        // Only the archive and the folder are left.
        assert_eq!(names_in(&dir), vec!["a.tar.gz", "cifar-10-batches-bin"]);

        // A truncated archive fails and leaves no folder.
        std::fs::remove_dir_all(&folder).unwrap();
        std::fs::write(&archive, &bytes[..bytes.len() / 2]).unwrap();
        let err = extract_tar_gz(&archive, &dir, "cifar-10-batches-bin").unwrap_err();
        assert!(err.message().contains("a.tar.gz"), "{err}");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1, "only the archive is left");

        // An archive without the expected folder is an error.
        std::fs::write(&archive, &bytes).unwrap();
        let err = extract_tar_gz(&archive, &dir, "cifar-100-binary").unwrap_err();
        assert!(
            err.message().contains("no folder `cifar-100-binary`"),
            "{err}"
        );
        assert!(!dir.join("cifar-100-binary").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn md5_text_is_checked() {
        assert_eq!(
            parse_md5(" C32A1D4AB5D03F1284B67883E8D87530", "parameter `md5`").unwrap(),
            "c32a1d4ab5d03f1284b67883e8d87530"
        );
        let err = parse_md5("abc", "parameter `md5`").unwrap_err();
        assert!(err.message().contains("parameter `md5`"), "{err}");
    }
}
