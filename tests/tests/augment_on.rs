//! `augment_on = "device"` end to end: a resumed run equals an uninterrupted one, `bench-data`
//! and `preview` work with either place of augmentation.

use e2e::*;
use std::collections::BTreeMap;
use std::path::Path;

fn small(model: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        format!("--model={model}"),
        format!("--output_dir={}", out.display()),
        "--ssl_dataset_params.num_samples=96".into(),
        "--linear_head_dataset_params.num_samples=64".into(),
        "--ssl_dataset_params.image_size=32".into(),
        "--ssl_training_batch_size=16".into(),
        "--linear_head_batch_size=8".into(),
        "--ssl_encoder=resnet18".into(),
        "--num_workers=2".into(),
        "--augment_on=device".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run(args: &[String]) -> Run {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ssl_host(&refs)
}

/// metrics.csv as (epoch, name) -> value text, leaving out wall-clock metrics.
fn metrics(dir: &Path) -> BTreeMap<(usize, String), String> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    text.lines()
        .skip(1)
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

#[test]
fn a_resumed_device_augmented_run_equals_an_uninterrupted_one() {
    let out = tempfile::tempdir().unwrap();
    let full = out.path().join("full");
    let parts = out.path().join("parts");
    let epochs = ["--num_epochs=3", "--warmup_epochs=1"];
    run(&small("ShapesSimCLR", &full, &epochs)).assert_ok();
    let config = std::fs::read_to_string(full.join("config.toml")).unwrap();
    assert!(config.contains("augment_on = \"device\""), "{config}");
    let mut first = small("ShapesSimCLR", &parts, &epochs);
    first.push("--stop_after_epochs=1".into());
    run(&first).assert_ok();
    run(&[
        format!("--output_dir={}", parts.display()),
        "--resume".into(),
    ])
    .assert_ok();
    let (a, b) = (metrics(&full), metrics(&parts));
    assert!(a.len() > 10, "{a:?}");
    assert_eq!(a, b, "metrics differ after resume");
}

/// The JSON record `bench-data` ends with.
fn bench_record(args: &[&str]) -> serde_json::Value {
    let run = ssl_host(args);
    run.assert_ok();
    let line = run
        .stdout
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("bench-data "))
        .unwrap_or_else(|| panic!("no record in:\n{}", run.stdout))
        .to_string();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn bench_data_measures_both_places_of_augmentation() {
    for place in ["workers", "device"] {
        let record = bench_record(&[
            "bench-data",
            "--model=ShapesSimCLR",
            "--batches=3",
            "--ssl_training_batch_size=8",
            "--num_workers=1",
            &format!("--augment_on={place}"),
        ]);
        assert_eq!(record["augment_on"], place);
        assert_eq!(record["samples"], 24, "{record}");
        assert_eq!(record["views_per_sample"], 2);
        assert!(record["images_per_s"].as_f64().unwrap() > 0.0, "{record}");
        let decode = record["decode_share"].as_f64().unwrap();
        let augment = record["augment_share"].as_f64().unwrap();
        assert!(decode > 0.0 && decode + augment <= 1.0 + 1e-9, "{record}");
    }
    let e = ssl_host(&["bench-data", "--model=ShapesSimCLR", "--batches=0"]);
    e.assert_clear_error(&["--batches=0", "at least 1"]);
}

#[test]
fn preview_shows_device_augmented_views() {
    let out = tempfile::tempdir().unwrap();
    for place in ["workers", "device"] {
        let png = out.path().join(format!("{place}.png"));
        let run = ssl_host(&[
            "preview",
            "--model=ShapesSimCLR",
            &format!("--augment_on={place}"),
            "--count=3",
            &format!("--out={}", png.display()),
        ]);
        run.assert_ok();
        assert!(
            run.stdout.contains(&format!("augmented on the {place}")),
            "{}",
            run.stdout
        );
        let reader = png::Decoder::new(std::fs::File::open(&png).unwrap())
            .read_info()
            .unwrap();
        let (width, height) = (reader.info().width, reader.info().height);
        // 3 columns (image, view 1, view 2) and 3 rows of cells enlarged to at least 128 px.
        assert!(width >= 3 * 128, "{width}");
        assert!(height >= 3 * 128, "{height}");
    }
}
