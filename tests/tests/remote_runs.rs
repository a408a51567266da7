//! Run outputs in object storage (`--output_dir=s3://...`, `az://...`) against real servers
//! started here (moto's S3 server, Azurite): what a run uploads, a resume from the run URL on a
//! machine that has none of its files, the run URL as a checkpoint for the other commands and
//! for `pretraining_run_recovery_id`, and a server that goes away mid-run.
//!
//! "Machines" are separate caches (`SSL_HOST_CACHE`), where runs keep their staging folders.

use e2e::servers::{Kind, Server};
use e2e::*;
use ssl_host::storage::{Env, ObjectUrl, Storage, StorageOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A tiny SimCLR run on the built-in Shapes data: one training and one validation batch of 8
/// per epoch (`is_debug_model`), well under a second per epoch; SGD, whose state is smaller than
/// Adam's (the checkpoint is still 100 MB: ResNet-18 and its momentum).
fn small(out: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--model=ShapesSimCLR".into(),
        "--optimizer=sgd".into(),
        format!("--output_dir={out}"),
        "--ssl_dataset_params.num_samples=64".into(),
        "--linear_head_dataset_params.num_samples=64".into(),
        "--val_split=0.25".into(),
        "--ssl_training_batch_size=8".into(),
        "--linear_head_batch_size=8".into(),
        "--is_debug_model=true".into(),
        "--knn_monitor=false".into(),
        "--num_workers=1".into(),
        "--device=cpu".into(),
        "--warmup_epochs=1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `ssl-host args` on the "machine" whose cache is `cache`, with `server`'s credentials.
fn on(server: &Server, cache: &Path, args: &[String]) -> Run {
    let env = server.env_with_cache(cache);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ssl_host_with_env(&refs, &env)
}

/// The objects under `url`, by name relative to it, with their bytes.
fn objects(server: &Server, url: &str) -> BTreeMap<String, Vec<u8>> {
    let storage = Storage::with_env(Env::from_pairs(server.env()), StorageOptions::default());
    let root = ObjectUrl::parse(url).unwrap();
    storage
        .list(&root)
        .unwrap()
        .into_iter()
        .map(|o| {
            let name = o.url.to_string()[url.len() + 1..].to_string();
            (name, storage.get(&o.url).unwrap().to_vec())
        })
        .collect()
}

/// The one staging folder of a machine's cache.
fn staging(cache: &Path) -> PathBuf {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(cache.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs.pop().unwrap()
}

fn checkpoints(objects: &BTreeMap<String, Vec<u8>>) -> Vec<&String> {
    objects
        .keys()
        .filter(|k| k.starts_with("checkpoints/"))
        .collect()
}

fn marker(objects: &BTreeMap<String, Vec<u8>>) -> serde_json::Value {
    serde_json::from_slice(&objects["latest"]).unwrap()
}

#[test]
fn a_run_in_s3_uploads_its_outputs_and_resumes_elsewhere_as_if_uninterrupted() {
    let server = Server::start(Kind::Moto);
    let url = format!("{}/runs/a", server.bucket("models"));
    let tmp = tempfile::tempdir().unwrap();
    let (machine_a, machine_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let epochs = "--num_epochs=3";

    // The reference: the same run, uninterrupted, in a local folder.
    let local = tmp.path().join("local");
    let refs: Vec<String> = small(&local.display().to_string(), &[epochs]);
    ssl_host(&refs.iter().map(String::as_str).collect::<Vec<_>>()).assert_ok();

    // Two epochs written to the bucket from machine A.
    let first = on(
        &server,
        &machine_a,
        &small(&url, &[epochs, "--stop_after_epochs=2"]),
    );
    first.assert_ok();
    assert!(first.stdout.contains(&url), "{}", first.stdout);
    let stored = objects(&server, &url);
    let staged = staging(&machine_a);
    for name in ["config.toml", "metrics.csv", "latest"] {
        assert!(
            stored.contains_key(name),
            "{name} missing: {:?}",
            stored.keys()
        );
    }
    assert!(
        stored
            .keys()
            .any(|k| k.starts_with("logs/events.out.tfevents.")),
        "{:?}",
        stored.keys()
    );
    // One checkpoint object, the latest, named by the marker and equal to the staged file.
    let latest = marker(&stored);
    assert_eq!(latest["epochs_done"], 2);
    let names = checkpoints(&stored);
    assert_eq!(names.len(), 1, "{names:?}");
    assert_eq!(latest["checkpoint"].as_str(), Some(names[0].as_str()));
    let local_checkpoint = std::fs::read(staged.join("checkpoints/last.safetensors")).unwrap();
    assert_eq!(stored[names[0]], local_checkpoint);
    assert_eq!(
        stored["metrics.csv"],
        std::fs::read(staged.join("metrics.csv")).unwrap()
    );
    let config = String::from_utf8(stored["config.toml"].clone()).unwrap();
    assert!(
        config.contains(&format!("output_dir = \"{url}\"")),
        "{config}"
    );
    assert!(!config.contains("testing-secret"), "{config}");

    // Resumed on machine B, which has nothing of the run: it downloads the latest checkpoint
    // and the metrics, then continues as if never interrupted.
    let resumed = on(
        &server,
        &machine_b,
        &[format!("--output_dir={url}"), "--resume=auto".into()],
    );
    resumed.assert_ok();
    assert!(resumed.stderr.contains("downloading"), "{}", resumed.stderr);
    let stored = objects(&server, &url);
    assert_eq!(marker(&stored)["epochs_done"], 3);
    assert_eq!(
        checkpoints(&stored).len(),
        1,
        "the earlier checkpoint is deleted"
    );
    let expected = metric_map(&std::fs::read_to_string(local.join("metrics.csv")).unwrap());
    let got = metric_map(std::str::from_utf8(&stored["metrics.csv"]).unwrap());
    assert_eq!(got, expected);
    assert!(!resumed.stderr.contains("testing-secret"));

    // A new run at the URL is refused; the run URL is a checkpoint for the other commands.
    on(&server, &tmp.path().join("c"), &small(&url, &[epochs])).assert_clear_error(&[
        "already holds a run",
        &url,
        "--resume",
    ]);
    let exported = tmp.path().join("encoder.safetensors");
    let machine_d = tmp.path().join("d");
    on(
        &server,
        &machine_d,
        &[
            "export-encoder".into(),
            format!("--checkpoint={url}"),
            format!("--out={}", exported.display()),
        ],
    )
    .assert_ok();
    assert!(exported.exists());

    // The original's pretraining_run_recovery_id: a run name under runs_location (the
    // checkpoint is on machine D already).
    let classifier = tmp.path().join("classifier");
    on(
        &server,
        &machine_d,
        &[
            "--model=SSLClassifierCIFAR".into(),
            format!("--output_dir={}", classifier.display()),
            "--linear_head_dataset_name=Shapes".into(),
            "--linear_head_dataset_params.num_samples=48".into(),
            "--linear_head_batch_size=8".into(),
            "--is_debug_model=true".into(),
            "--num_epochs=1".into(),
            "--num_workers=1".into(),
            "--device=cpu".into(),
            "--pretraining_run_recovery_id=a".into(),
            format!("--runs_location={}", url.trim_end_matches("/a")),
        ],
    )
    .assert_ok();
    let config = std::fs::read_to_string(classifier.join("config.toml")).unwrap();
    assert!(
        config.contains(&format!("local_ssl_weights_path = \"{url}\"")),
        "{config}"
    );
}

#[test]
fn an_upload_that_keeps_failing_stops_the_run_and_a_resume_continues() {
    let mut server = Server::start(Kind::Azurite);
    let url = format!("{}/runs/b", server.bucket("models"));
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let args = small(&url, &["--num_epochs=4", "--storage_retry_seconds=2"]);
    let env = server.env_with_cache(&cache);
    let child = Command::new(artifact("ssl-host"))
        .args(&args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The server goes away once the first checkpoint is written: its upload (100 MB), or a
    // later one, fails.
    let start = Instant::now();
    let first_checkpoint = || {
        std::fs::read_dir(cache.join("runs"))
            .ok()
            .and_then(|mut d| d.next())
            .is_some_and(|d| {
                d.unwrap()
                    .path()
                    .join("checkpoints/last.safetensors")
                    .exists()
            })
    };
    while !first_checkpoint() && start.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(20));
    }
    server.stop();
    let output = child.wait_with_output().unwrap();
    let failed = Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    let report = failed.error_report();
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    for needle in [
        "uploading the run's outputs to",
        url.as_str(),
        "--resume",
        "staging folder",
    ] {
        assert!(report.contains(needle), "lacks `{needle}`:\n{report}");
    }
    assert!(!failed.stderr.contains("panicked"), "{}", failed.stderr);
    // Nothing is lost: the staging folder holds the checkpoint, whole.
    let staged = staging(&cache);
    let checkpoint = staged.join("checkpoints/last.safetensors");
    let inspected = ssl_host(&[
        "inspect-checkpoint",
        &format!("--checkpoint={}", checkpoint.display()),
    ]);
    inspected.assert_ok();
    let before = metric_map(&std::fs::read_to_string(staged.join("metrics.csv")).unwrap());

    // The server is back: a resume continues from the staging folder and uploads everything.
    server.restart();
    let resumed = on(
        &server,
        &cache,
        &[format!("--output_dir={url}"), "--resume".into()],
    );
    resumed.assert_ok();
    let stored = objects(&server, &url);
    assert_eq!(marker(&stored)["epochs_done"], 4);
    assert_eq!(checkpoints(&stored).len(), 1);
    let after = metric_map(std::str::from_utf8(&stored["metrics.csv"]).unwrap());
    for (key, value) in &before {
        assert_eq!(after.get(key), Some(value), "{key:?} changed by the resume");
    }
    assert_eq!(after.keys().map(|k| k.0).max(), Some(3));
}
