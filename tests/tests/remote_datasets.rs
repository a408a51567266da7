//! Packed datasets in object storage, end to end against real servers started here on
//! loopback ports (moto's S3 server and Azurite, `e2e::servers`): `pack --output=URL`, training
//! from the URL equals training from the local packed folder, a corrupted shard is named by its
//! digest, missing credentials are named, and a server that stops mid-epoch stops the run
//! clearly with its checkpoint intact, after which a resume continues exactly.

use e2e::servers::{Kind, Server};
use e2e::*;
use ssl_host::storage::{Env, ObjectUrl, Storage, StorageOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Shapes data of these tests (96 images of 32 px), packed with `shard_samples` samples
/// per shard into `out` (a folder or a URL).
fn pack_shapes(out: &str, shard_samples: usize, env: &[(&str, String)]) {
    let args = [
        "pack".to_string(),
        "--dataset=Shapes".into(),
        "--num_samples=96".into(),
        "--image_size=32".into(),
        "--texture_strength=0.3".into(),
        "--noise=0.3".into(),
        format!("--shard_samples={shard_samples}"),
        format!("--output={out}"),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ssl_host_with_env(&refs, env).assert_ok();
}

/// A small SimCLR run reading `data` (a folder or a URL) with the Packed dataset; `extra` sets
/// the batch sizes and the rest.
fn train_args(out: &Path, data: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        // A tiny encoder from the example plugin: these tests are about the data.
        "--plugin".to_string(),
        artifact("libexample_tiny_cnn.so").display().to_string(),
        "--model=ShapesSimCLR".into(),
        format!("--output_dir={}", out.display()),
        "--ssl_encoder=TinyCNN".into(),
        "--device=cpu".into(),
        "--ssl_training_dataset_name=Packed".into(),
        "--linear_head_dataset_name=Packed".into(),
        format!("--local_dataset={data}"),
        "--storage_retry_seconds=2".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn train(args: &[String], env: &[(&str, String)]) -> Run {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ssl_host_with_env(&refs, env)
}

/// Two debug epochs (one training and one validation batch each) of batches of 16.
const QUICK: [&str; 5] = [
    "--num_epochs=2",
    "--ssl_training_batch_size=16",
    "--linear_head_batch_size=16",
    "--is_debug_model=true",
    "--num_workers=2",
];

fn cache_arg(dir: &Path) -> String {
    format!("--cache_dir={}", dir.display())
}

/// Cache objects (whole shards) in the cache folder `dir`.
fn cached_objects(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("objects")).map_or(0, |d| d.count())
}

#[test]
fn a_run_from_s3_equals_the_run_from_the_local_packed_folder_and_bad_shards_and_credentials_are_named(
) {
    let server = Server::start(Kind::Moto);
    let tmp = tempfile::tempdir().unwrap();
    let env = server.env_with_cache(&tmp.path().join("staging"));
    let url = format!("{}/shapes", server.bucket("data"));
    let local = tmp.path().join("shapes");
    pack_shapes(&local.display().to_string(), 12, &[]);
    pack_shapes(&url, 12, &env);

    let from_local = tmp.path().join("local-run");
    train(
        &train_args(&from_local, &local.display().to_string(), &QUICK),
        &[],
    )
    .assert_ok();
    let cache = tmp.path().join("cache");
    let with_cache = |dir: &Path| {
        let mut args = QUICK.to_vec();
        let arg: &'static str = Box::leak(cache_arg(dir).into_boxed_str());
        args.push(arg);
        args
    };
    let from_s3 = tmp.path().join("s3-run");
    let run = train(&train_args(&from_s3, &url, &with_cache(&cache)), &env);
    run.assert_ok();
    assert_eq!(metric_rows(&from_s3), metric_rows(&from_local));
    assert!(metric_rows(&from_s3).len() > 4);
    // 96 samples in 8 shards, all read (the uniform order reads every shard), each cached.
    assert!(
        run.stderr
            .contains(&format!("read 8 of the 8 shards of {url}")),
        "{}",
        run.stderr
    );
    assert_eq!(cached_objects(&cache), 8);
    // config.toml keeps the URL as given (no credentials anywhere in it).
    let config = std::fs::read_to_string(from_s3.join("config.toml")).unwrap();
    assert!(config.contains(&url) && !config.contains("testing-secret"));

    // A shard replaced in the bucket (same size, other bytes): named by its digest, with a
    // fresh cache (the cached copy is checked too, see the storage tests).
    let storage = Storage::with_env(Env::from_pairs(server.env()), StorageOptions::default());
    let shard = ObjectUrl::parse(&format!("{url}/shard-000003.tar")).unwrap();
    let mut bytes = storage.get(&shard).unwrap().to_vec();
    let last = bytes.len() - 1030; // inside the last member's data, before the tar's end
    bytes[last] ^= 0xff;
    storage.put(&shard, bytes.into()).unwrap();
    let corrupt = train(
        &train_args(
            &tmp.path().join("corrupt-run"),
            &url,
            &with_cache(&tmp.path().join("fresh-cache")),
        ),
        &env,
    );
    assert_error(&corrupt, &["shard-000003.tar", "SHA-256", "expected"]);

    // No credentials: the variables to set are named before any request.
    let bare = train(
        &train_args(&tmp.path().join("bare-run"), &url, &with_cache(&cache)),
        &[(
            "SSL_HOST_CACHE",
            tmp.path().join("c2").display().to_string(),
        )],
    );
    assert_error(&bare, &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]);
}

/// Exit code 1, an error report (after the config's notes and warnings) holding `needles`, no
/// panic.
fn assert_error(run: &Run, needles: &[&str]) {
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let report = run.error_report();
    for needle in needles {
        assert!(
            report.contains(needle),
            "`{needle}` missing:\n{}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

/// `ssl-host` with `args` and `env` started in the background, its output to `log`.
fn start(args: &[String], env: &[(&str, String)], log: &Path) -> std::process::Child {
    let file = std::fs::File::create(log).unwrap();
    Command::new(artifact("ssl-host"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .expect("ssl-host starts")
}

#[test]
fn an_azure_server_stopped_mid_epoch_stops_the_run_clearly_and_a_resume_continues_exactly() {
    let mut server = Server::start(Kind::Azurite);
    let tmp = tempfile::tempdir().unwrap();
    let env = server.env_with_cache(&tmp.path().join("staging"));
    let url = format!("{}/shapes", server.bucket("data"));
    let local: PathBuf = tmp.path().join("shapes");
    // One sample per shard: every batch reads shards no earlier batch read.
    pack_shapes(&local.display().to_string(), 1, &[]);
    pack_shapes(&url, 1, &env);
    // One epoch of 12 steps, a checkpoint after every step, batches read in the training
    // thread (no read-ahead), no validation.
    let extra = [
        "--num_epochs=1",
        "--is_debug_model=false",
        "--ssl_training_batch_size=8",
        "--linear_head_batch_size=8",
        "--val_split=0",
        "--knn_monitor=false",
        "--num_workers=0",
        "--checkpoint_every_n_steps=1",
    ];
    let uninterrupted = tmp.path().join("uninterrupted");
    train(
        &train_args(&uninterrupted, &local.display().to_string(), &extra),
        &[],
    )
    .assert_ok();

    let run_dir = tmp.path().join("remote-run");
    let cache = cache_arg(&tmp.path().join("cache"));
    let mut args_with_cache = extra.to_vec();
    args_with_cache.push(&cache);
    let args = train_args(&run_dir, &url, &args_with_cache);
    let log = tmp.path().join("run.log");
    let mut child = start(&args, &env, &log);
    let checkpoint = run_dir.join("checkpoints").join("last.safetensors");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !checkpoint.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its first checkpoint:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "no checkpoint within 300 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.stop();
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let error_at = stderr.find("error: ").unwrap_or_else(|| panic!("{stderr}"));
    let error = &stderr[error_at..];
    assert!(error.contains(&url), "{error}");
    assert!(!error.contains("panicked"), "{error}");
    // The checkpoint is whole: it loads (the resume below reads it).
    assert!(checkpoint.exists());

    server.restart();
    let mut resume = args.clone();
    resume.push("--resume=auto".into());
    train(&resume, &env).assert_ok();
    assert_eq!(metric_rows(&run_dir), metric_rows(&uninterrupted));
}
