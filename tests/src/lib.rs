//! Helpers for the end-to-end tests: where the built binary and plugins are, running
//! `ssl-host`, and building fixture plugins with cargo.
//!
//! The tests expect `cargo build --workspace` to have run first (the README's test command
//! does it); fixture plugins are built here, into `target/fixtures`.

use ssl_builtin_datasets::testdata::cxr::{gray_pattern, write_rsna_csv};
use ssl_builtin_datasets::testdata::dicom::{write_dicom, DicomSpec, Photometric, TransferSyntax};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repo")
        .to_path_buf()
}

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// A built artifact of the workspace (debug profile), e.g. `ssl-host`, `libexample_tiny_cnn.so`.
pub fn artifact(name: &str) -> PathBuf {
    let path = target_dir().join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first (scripts/test does)",
        path.display()
    );
    path
}

/// The fault-injection algorithm plugin (`Faulty`, crate `tests/fault-plugin`): a non-finite
/// loss at a chosen step, a parameter unused on one rank, a collective of another shape on one
/// rank (see its crate documentation).
pub fn fault_plugin() -> PathBuf {
    artifact("libfault_plugin.so")
}

/// The rows of the metrics.csv of the run in `dir`, without wall-clock metrics (throughput,
/// time), which differ between otherwise equal runs.
pub fn metric_rows(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .filter(|l| !l.contains("throughput/") && !l.contains("time/"))
        .map(str::to_string)
        .collect()
}

/// The text of a metrics.csv as (epoch, name) -> value text, leaving out wall-clock metrics.
pub fn metric_map(text: &str) -> std::collections::BTreeMap<(usize, String), String> {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("epoch,name,value"));
    lines
        .filter(|l| !l.contains("throughput/") && !l.contains("time/"))
        .map(|l| {
            let mut f = l.splitn(3, ',');
            let epoch = f.next().unwrap().parse().unwrap();
            (
                (epoch, f.next().unwrap().to_string()),
                f.next().unwrap().to_string(),
            )
        })
        .collect()
}

/// The last value of metric `name` in the metrics.csv of the run in `dir`.
pub fn metric(dir: &Path, name: &str) -> f64 {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    text.lines()
        .rev()
        .find(|l| l.split(',').nth(1) == Some(name))
        .unwrap_or_else(|| panic!("{name} missing from metrics.csv:\n{text}"))
        .rsplit(',')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The result of one `ssl-host` run.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The error report at the end of stderr: the last line starting with `error: ` and the
    /// `caused by: ` lines after it, joined by newlines (empty when there is none).
    pub fn error_report(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        match lines.iter().rposition(|l| l.starts_with("error: ")) {
            Some(at) => lines[at..].join("\n"),
            None => String::new(),
        }
    }

    /// Panics with the output unless the run succeeded.
    pub fn assert_ok(&self) -> &Run {
        assert_eq!(
            self.code,
            Some(0),
            "ssl-host failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Checks the run failed the way a user error should: exit code 1 (not a signal), a short
    /// message starting with `error:` (after any `warning:` lines), no panic report, and each
    /// of `needles` in the message.
    pub fn assert_clear_error(&self, needles: &[&str]) {
        assert_eq!(
            self.code,
            Some(1),
            "expected exit code 1:\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        let after_warnings: String = self
            .stderr
            .lines()
            .skip_while(|l| l.starts_with("warning: "))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            after_warnings.starts_with("error: "),
            "stderr should start with `error: `:\n{}",
            self.stderr
        );
        for bad in ["panicked at", "RUST_BACKTRACE", "stack backtrace"] {
            assert!(
                !self.stderr.contains(bad),
                "stderr shows a panic report ({bad}):\n{}",
                self.stderr
            );
        }
        assert!(
            self.stderr.lines().count() <= 10,
            "error message is too long:\n{}",
            self.stderr
        );
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "stderr lacks `{needle}`:\n{}",
                self.stderr
            );
        }
    }
}

/// Runs the built `ssl-host` with `args`.
pub fn ssl_host(args: &[&str]) -> Run {
    ssl_host_with_env::<&str>(args, &[])
}

/// Runs the built `ssl-host` with `args` and the environment variables `env` added (such as a
/// storage server's credentials and endpoint, `e2e::servers::Server::env`).
pub fn ssl_host_with_env<V: AsRef<std::ffi::OsStr>>(args: &[&str], env: &[(&str, V)]) -> Run {
    let output = Command::new(artifact("ssl-host"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("ssl-host starts");
    Run::from(output)
}

/// Builds the `cdylib` crate at `manifest_dir` (outside the workspace) into
/// `target/fixtures` and returns the path of its `.so`.
pub fn build_fixture(manifest_dir: &Path, lib_name: &str) -> PathBuf {
    let fixtures_target = target_dir().join("fixtures");
    let output = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--manifest-path"])
        .arg(manifest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&fixtures_target)
        .env("CARGO_PROFILE_DEV_DEBUG", "false")
        .current_dir(manifest_dir)
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "building fixture {} failed:\n{}",
        manifest_dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let so = fixtures_target
        .join("debug")
        .join(format!("lib{lib_name}.so"));
    assert!(so.exists(), "{} was not built", so.display());
    so
}

/// Builds a package of this workspace on its own (so only its own features are enabled) into
/// `target/fixtures`, returning its `.so`.
pub fn build_workspace_package_alone(package: &str, lib_name: &str) -> PathBuf {
    let fixtures_target = target_dir().join("fixtures");
    let output = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", package, "--target-dir"])
        .arg(&fixtures_target)
        .current_dir(repo_root())
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "building {package} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    fixtures_target
        .join("debug")
        .join(format!("lib{lib_name}.so"))
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The `NEEDED` entries of an ELF file, read with `readelf -d`.
pub fn needed_libraries(so: &Path) -> Vec<String> {
    let output = Command::new("readelf")
        .arg("-d")
        .arg(so)
        .output()
        .expect("readelf runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| {
            l.split('[')
                .nth(1)
                .map(|s| s.trim_end_matches(']').to_string())
        })
        .collect()
}

/// An RSNA folder of `n` DICOMs of three kinds (JPEG baseline 8-bit, 16-bit MONOCHROME1
/// explicit VR, 8-bit MONOCHROME2 implicit VR), labels alternating, plus `dataset.csv`.
pub fn write_rsna(root: &Path, n: usize, size: u32) -> Vec<(String, i64)> {
    std::fs::create_dir_all(root).unwrap();
    let mut rows = Vec::new();
    for i in 0..n {
        let subject = format!("subject-{i:03}");
        let grey: Vec<i32> = gray_pattern(i as u64, size, size)
            .into_iter()
            .map(i32::from)
            .collect();
        let spec = match i % 3 {
            0 => DicomSpec {
                transfer_syntax: TransferSyntax::JpegBaseline,
                ..DicomSpec::gray8(size, size, grey)
            },
            1 => DicomSpec {
                photometric: Photometric::Monochrome1,
                ..DicomSpec::gray16(size, size, 12, grey.iter().map(|v| v * 16 + 3).collect())
            },
            _ => DicomSpec {
                transfer_syntax: TransferSyntax::ImplicitVrLittleEndian,
                ..DicomSpec::gray8(size, size, grey)
            },
        };
        write_dicom(&root.join(format!("{subject}.dcm")), &spec).unwrap();
        rows.push((subject, (i % 2) as i64));
    }
    let refs: Vec<(&str, i64)> = rows.iter().map(|(s, l)| (s.as_str(), *l)).collect();
    write_rsna_csv(root, &refs).unwrap();
    rows
}

pub mod servers;
