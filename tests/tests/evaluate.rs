//! `ssl-host evaluate` end to end: two SSL runs (one pretrained on every NIH image, the
//! official test images included, as the original's default; one on the official training
//! list only) and an untrained ResNet-18, compared on a multi-label NIH folder written here.

use e2e::*;
use ssl_builtin_datasets::testdata::cxr::{write_nih_rows, NihRow};
use std::path::{Path, PathBuf};

/// 48 images of 24 patients, findings cycling over five patterns; patients 1–6 are NIH's
/// official test set.
fn write_data(root: &Path) -> (PathBuf, PathBuf) {
    let nih = root.join("nih");
    let rsna = root.join("rsna");
    let patterns = [
        "No Finding",
        "Effusion",
        "Cardiomegaly|Effusion",
        "Atelectasis",
        "Edema|Atelectasis",
    ];
    let rows: Vec<NihRow> = (0..48)
        .map(|i| NihRow::new(patterns[i % patterns.len()], (i / 2 + 1) as u32))
        .collect();
    write_nih_rows(&nih, &rows, 32, Some(&[1, 2, 3, 4, 5, 6])).unwrap();
    write_rsna(&rsna, 16, 32);
    (nih, rsna)
}

fn pretrain(out: &Path, nih: &Path, rsna: &Path, extra: &[&str]) {
    let tiny = artifact("libexample_tiny_cnn.so");
    let mut args: Vec<String> = vec![
        "--plugin".into(),
        tiny.display().to_string(),
        "--model=NIH_RSNA_SimCLR".into(),
        format!("--output_dir={}", out.display()),
        format!("--local_dataset={}", nih.display()),
        format!("--extra_local_dataset_paths={}", rsna.display()),
        "--ssl_encoder=TinyCNN".into(),
        "--is_debug_model=true".into(),
        "--ssl_training_batch_size=4".into(),
        "--linear_head_batch_size=4".into(),
        "--num_workers=2".into(),
        "--device=cpu".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ssl_host(&refs).assert_ok();
}

fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    (info.width, info.height)
}

#[test]
fn two_runs_and_a_random_encoder_are_compared_on_multi_label_nih_with_tables_plots_and_leakage() {
    let tmp = tempfile::tempdir().unwrap();
    let (nih, rsna) = write_data(tmp.path());
    let leaky = tmp.path().join("all-images");
    let clean = tmp.path().join("official-train");
    pretrain(
        &leaky,
        &nih,
        &rsna,
        &[
            "--num_epochs=2",
            "--save_checkpoint_every_n_epochs=1",
            "--ssl_dataset_params.official_split=no",
        ],
    );
    pretrain(&clean, &nih, &rsna, &["--num_epochs=1"]);
    let eval = tmp.path().join("eval");
    let tiny = artifact("libexample_tiny_cnn.so");
    let cache = tmp.path().join("cache");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a = vec![
            "--plugin".to_string(),
            tiny.display().to_string(),
            "evaluate".into(),
            format!("--encoder={}", leaky.display()),
            format!(
                "--encoder={}",
                clean.join("checkpoints/last.safetensors").display()
            ),
            "--encoder=random:resnet18".into(),
            "--dataset=NIHCXR".into(),
            format!("--local_dataset={}", nih.display()),
            "--image_size=32".into(),
            "--label_fractions=0.5,1".into(),
            "--seeds=2".into(),
            "--bootstrap=50".into(),
            "--device=cpu".into(),
            "--num_workers=1".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let env = [("SSL_HOST_CACHE", cache.display().to_string())];
    let first = args(&[&format!("--output_dir={}", eval.display())]);
    let refs: Vec<&str> = first.iter().map(String::as_str).collect();
    let run = ssl_host_with_env(&refs, &env);
    run.assert_ok();
    let said = format!("{}{}", run.stdout, run.stderr);
    // The leakage check: the run on every image saw the 12 test images of the 6 test patients.
    assert!(
        said.contains("all-images: LEAKAGE: the encoder saw 12 of the 12 test images and 6 of the 6 test patients"),
        "{said}"
    );
    assert!(
        said.contains("last: no overlap: none of the 12 test images"),
        "{said}"
    );
    assert!(
        said.contains("random:resnet18: no training record"),
        "{said}"
    );

    // The tables.
    let csv = std::fs::read_to_string(eval.join("results.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    for column in [
        "encoder",
        "protocol",
        "fraction",
        "seed",
        "metric",
        "value",
        "ci_low",
        "ci_high",
        "penalty",
        "labelled_samples",
        "test_samples",
        "train_split",
        "test_split",
        "ssl_host_version",
    ] {
        assert!(header.contains(&column), "{column} in {header:?}");
    }
    let rows: Vec<Vec<String>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let find = |encoder: &str, protocol: &str, fraction: &str, seed: &str, metric: &str| {
        rows.iter()
            .find(|r| {
                r[col("encoder")] == encoder
                    && r[col("protocol")] == protocol
                    && r[col("fraction")] == fraction
                    && r[col("seed")] == seed
                    && r[col("metric")] == metric
                    && r[col("epoch")].is_empty()
            })
            .unwrap_or_else(|| panic!("{encoder} {protocol} {fraction} {seed} {metric} in\n{csv}"))
    };
    for encoder in ["all-images", "last", "random:resnet18"] {
        for (fraction, seed) in [("0.5", "0"), ("0.5", "1"), ("1", "0"), ("1", "1")] {
            let r = find(encoder, "linear", fraction, seed, "auroc_macro");
            let value: f64 = r[col("value")].parse().unwrap();
            assert!((0.0..=1.0).contains(&value), "{r:?}");
            let (low, high): (f64, f64) = (
                r[col("ci_low")].parse().unwrap(),
                r[col("ci_high")].parse().unwrap(),
            );
            assert!(low <= high, "{r:?}");
            assert!(!r[col("penalty")].is_empty(), "{r:?}");
            assert_eq!(r[col("test_samples")], "12");
        }
        for finding in ["Atelectasis", "Cardiomegaly", "Effusion", "Edema"] {
            find(encoder, "linear", "1", "0", &format!("auroc/{finding}"));
        }
        find(encoder, "knn-k200-t0.1", "1", "0", "auroc_macro");
        find(encoder, "knn-k20-t0.07", "1", "0", "auroc_macro");
    }
    // Fewer labelled images at half the labels, whole patients at a time.
    let labelled = |fraction: &str| -> usize {
        find("last", "linear", fraction, "0", "auroc_macro")[col("labelled_samples")]
            .parse()
            .unwrap()
    };
    assert_eq!(labelled("1"), 36);
    assert!(
        labelled("0.5") < 36 && labelled("0.5") % 2 == 0,
        "{}",
        labelled("0.5")
    );
    // The kept encoders of the run folder, epochs 1 and 2.
    for epoch in ["1", "2"] {
        assert!(
            rows.iter().any(|r| r[col("encoder")] == "all-images"
                && r[col("epoch")] == epoch
                && r[col("protocol")] == "knn-k200-t0.1"),
            "epoch {epoch} in\n{csv}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(eval.join("results.json")).unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), rows.len());
    let md = std::fs::read_to_string(eval.join("results.md")).unwrap();
    assert!(md.starts_with("| encoder | protocol | labels |"), "{md}");
    assert!(
        run.stdout.contains(md.lines().nth(2).unwrap()),
        "the table is printed"
    );
    for plot in [
        "label_efficiency.png",
        "roc.png",
        "feature_map.png",
        "knn_over_training.png",
    ] {
        let (w, h) = png_size(&eval.join(plot));
        assert!(w >= 600 && h >= 400, "{plot}: {w}×{h}");
    }

    // Features come from the cache the second time: the same numbers.
    let again = tmp.path().join("eval2");
    let second = args(&[
        &format!("--output_dir={}", again.display()),
        "--protocols=knn",
    ]);
    let refs: Vec<&str> = second.iter().map(String::as_str).collect();
    ssl_host_with_env(&refs, &env).assert_ok();
    let knn = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("results.csv"))
            .unwrap()
            .lines()
            .filter(|l| l.contains(",knn-k200-t0.1,") && l.contains(",auroc_macro,"))
            .map(|l| l.split(',').take(7).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(knn(&eval), knn(&again));

    // --strict refuses the leaky encoder, writing nothing.
    let strict_dir = tmp.path().join("strict");
    let third = args(&[
        &format!("--output_dir={}", strict_dir.display()),
        "--strict",
    ]);
    let refs: Vec<&str> = third.iter().map(String::as_str).collect();
    ssl_host_with_env(&refs, &env).assert_clear_error(&["LEAKAGE", "all-images", "--strict"]);
    assert!(!strict_dir.join("results.csv").exists());
}

#[test]
fn bad_encoders_and_options_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (nih, _) = write_data(tmp.path());
    let base = |extra: &[&str]| {
        let mut a = vec![
            "evaluate".to_string(),
            "--dataset=NIHCXR".into(),
            format!("--local_dataset={}", nih.display()),
            "--device=cpu".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    for (extra, needles) in [
        (
            vec!["--encoder=random:resnet19"],
            vec!["resnet19", "not an encoder"],
        ),
        (
            vec!["--encoder=/no/such/run"],
            vec!["/no/such/run", "no such run folder"],
        ),
        (vec![], vec!["at least one --encoder"]),
        (
            vec!["--encoder=random:resnet18", "--protocols=linear,svm"],
            vec!["svm", "linear, knn"],
        ),
        (
            vec!["--encoder=random:resnet18", "--label_fractions=0,1"],
            vec!["label_fractions", "(0, 1]"],
        ),
    ] {
        let args = base(&extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ssl_host(&refs).assert_clear_error(&needles);
    }
}
