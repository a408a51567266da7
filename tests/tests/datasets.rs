//! The datasets of the original on data written here in their real on-disk layouts: runs of
//! the named configs with `is_debug_model`, `dump` against an independent DICOM decoder,
//! `preview`, `make-rsna-csv`, and the errors for bad data.

use e2e::*;
use ssl_builtin_datasets::testdata::cifar::{cifar10_binary_archive_bytes, md5_hex, serve_http};
use ssl_builtin_datasets::testdata::cxr::{
    write_chexpert, write_covid, write_image_folder, write_nih,
};
use std::path::Path;

fn run(args: &[String]) -> Run {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ssl_host(&refs)
}

fn metric_names(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let mut names: Vec<String> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The options that make a named config small: one debug epoch, batches of 4.
fn debug_args(model: &str, out: &Path, extra: &[String]) -> Vec<String> {
    let mut args = vec![
        format!("--model={model}"),
        format!("--output_dir={}", out.display()),
        "--is_debug_model=true".into(),
        "--num_epochs=1".into(),
        "--ssl_training_batch_size=4".into(),
        "--linear_head_batch_size=4".into(),
        "--num_workers=2".into(),
        "--device=cpu".into(),
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn nih_rsna_byol_runs_on_dicom_and_kaggle_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let nih = tmp.path().join("nih");
    let rsna = tmp.path().join("rsna");
    write_nih(&nih, 40, 48).unwrap();
    write_rsna(&rsna, 40, 40);
    let out = tmp.path().join("run");
    run(&debug_args(
        "NIH_RSNA_BYOL",
        &out,
        &[
            format!("--local_dataset={}", nih.display()),
            format!("--extra_local_dataset_paths={}", rsna.display()),
            // ResNet18 keeps the debug run short; the config's ResNet50 is the same code path.
            "--ssl_encoder=resnet18".into(),
        ],
    ))
    .assert_ok();
    let names = metric_names(&out);
    for name in [
        "byol/train/loss",
        "byol/val/loss",
        "ssl_online_evaluator/val/AreaUnderRocCurve",
    ] {
        assert!(names.contains(&name.to_string()), "{name} in {names:?}");
    }
    assert!(metric(&out, "byol/train/loss").is_finite());
    // The YAML pipelines were expanded into the resolved config.
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    for transform in [
        "ExpandChannels",
        "RandomAffine",
        "ElasticTransform",
        "RandomErasing",
    ] {
        assert!(config.contains(transform), "{transform} in config.toml");
    }
}

#[test]
fn nih_covid_byol_runs_with_a_split_by_subject() {
    let tmp = tempfile::tempdir().unwrap();
    let nih = tmp.path().join("nih");
    let covid = tmp.path().join("covid");
    write_nih(&nih, 40, 40).unwrap();
    write_covid(&covid, 20, 2, 40).unwrap();
    let out = tmp.path().join("run");
    run(&debug_args(
        "NIH_COVID_BYOL",
        &out,
        &[
            format!("--local_dataset={}", nih.display()),
            format!("--extra_local_dataset_paths={}", covid.display()),
            // DenseNet121 at 224 px is slow on 2 cores; the split is what is tested here.
            "--ssl_encoder=resnet18".into(),
        ],
    ))
    .assert_ok();
    assert!(metric(&out, "byol/train/loss").is_finite());
}

#[test]
fn cifar10_byol_downloads_the_archive_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let (archive, _) = cifar10_binary_archive_bytes(10);
    let md5 = md5_hex(&archive);
    let (url, server) = serve_http(vec![("cifar-10-binary.tar.gz".into(), archive)], 1).unwrap();
    let data = tmp.path().join("cifar");
    let out = tmp.path().join("run");
    run(&debug_args(
        "CIFAR10BYOL",
        &out,
        &[
            format!("--local_dataset={}", data.display()),
            format!("--ssl_dataset_params.base_url={url}"),
            format!("--ssl_dataset_params.md5={md5}"),
            format!("--linear_head_dataset_params.base_url={url}"),
            format!("--linear_head_dataset_params.md5={md5}"),
            "--ssl_encoder=resnet18".into(),
        ],
    ))
    .assert_ok();
    assert_eq!(server.join().unwrap(), ["/cifar-10-binary.tar.gz"]);
    assert!(data.join("cifar-10-batches-bin/data_batch_5.bin").exists());
    assert!(metric(&out, "byol/train/loss").is_finite());
    let names = metric_names(&out);
    assert!(names.contains(&"ssl_online_evaluator/val/AccuracyAtThreshold05".to_string()));
}

#[test]
fn image_folder_and_chexpert_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("folder");
    write_image_folder(&folder, &["cat", "dog"], 20, 24).unwrap();
    let config = tmp.path().join("MyFolder.toml");
    std::fs::write(
        &config,
        r#"
description = "SimCLR on a folder of my images"
ssl_training_dataset_name = "ImageFolder"
linear_head_dataset_name = "ImageFolder"
ssl_encoder = "resnet18"
ssl_training_type = "SimCLR"

[[ssl_augmentations]]
name = "RandomResizedCrop"
size = 32

[[linear_head_augmentations]]
name = "Resize"
size = 32
"#,
    )
    .unwrap();
    let out = tmp.path().join("folder-run");
    run(&debug_args(
        config.to_str().unwrap(),
        &out,
        &[format!("--local_dataset={}", folder.display())],
    ))
    .assert_ok();
    assert!(metric(&out, "simclr/train/loss").is_finite());

    // CheXpert as the SSL data, with Pneumonia as a 2-class linear-head label.
    let chexpert = tmp.path().join("CheXpert-v1.0-small");
    write_chexpert(&chexpert, 40, 4, 40).unwrap();
    let out = tmp.path().join("chexpert-run");
    run(&debug_args(
        "NIH_RSNA_SimCLR",
        &out,
        &[
            "--ssl_training_dataset_name=CheXpert".into(),
            "--linear_head_dataset_name=CheXpert".into(),
            format!("--local_dataset={}", chexpert.display()),
            "--linear_head_dataset_params.chexpert_label=Pneumonia".into(),
            "--ssl_encoder=resnet18".into(),
        ],
    ))
    .assert_ok();
    assert!(metric(&out, "simclr/train/loss").is_finite());
}

#[test]
fn dump_of_rsna_matches_pydicom() {
    let tmp = tempfile::tempdir().unwrap();
    let rsna = tmp.path().join("rsna");
    let rows = write_rsna(&rsna, 9, 32);
    let dump = tmp.path().join("dump");
    ssl_host(&[
        "dump",
        "--dataset=RSNAKaggleCXR",
        &format!("--local_dataset={}", rsna.display()),
        &format!("--out={}", dump.display()),
    ])
    .assert_ok();
    let labels = std::fs::read_to_string(dump.join("labels.csv")).unwrap();
    let mut lines = labels.lines();
    assert_eq!(lines.next(), Some("index,id,label"));
    for (i, (subject, label)) in rows.iter().enumerate() {
        assert_eq!(
            lines.next(),
            Some(format!("{i},{subject},{label}").as_str())
        );
    }
    // An independent decoding: pydicom's pixel_array, the original's MONOCHROME1 inversion
    // and min-max scaling, PIL's conversion to 8 bits.
    let script = r#"
import sys, numpy as np, pydicom
from PIL import Image
rsna, dump, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
import csv
rows = list(csv.DictReader(open(f"{rsna}/dataset.csv")))
worst = 0.0
for i, row in enumerate(rows[:n]):
    ds = pydicom.dcmread(f"{rsna}/{row['subject']}.dcm")
    px = ds.pixel_array
    if ds.PhotometricInterpretation == "MONOCHROME1":
        px = (2 ** ds.BitsStored - 1 - px) if ds.PixelRepresentation == 0 else -(px + 1)
    px = px.astype(np.float64)
    px = (px - px.min()) * 255 / (px.max() - px.min())
    ref = np.asarray(Image.fromarray(px).convert("L"), dtype=np.float64)
    ours = np.asarray(Image.open(f"{dump}/{i}.png"), dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    worst = max(worst, float(np.abs(ours - ref).mean()))
print(f"worst mean abs difference {worst:.4f}")
assert worst <= 1.0, worst
"#;
    let python = repo_root().join(".deps/torch-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-libtorch.sh",
        python.display()
    );
    let output = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&rsna)
        .arg(&dump)
        .arg(rows.len().to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "pydicom comparison failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn preview_and_make_rsna_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let nih = tmp.path().join("nih");
    write_nih(&nih, 12, 40).unwrap();
    let grid = tmp.path().join("preview.png");
    ssl_host(&[
        "preview",
        "--model=NIH_RSNA_BYOL",
        &format!("--local_dataset={}", nih.display()),
        &format!("--out={}", grid.display()),
        "--count=3",
    ])
    .assert_ok();
    let decoder = png::Decoder::new(std::fs::File::open(&grid).unwrap());
    let info = decoder.read_info().unwrap().info().clone();
    // A header row (14 px labels between 4 px gaps), then 3 rows of (image, view 1, view 2),
    // 224 px each, with 4 px gaps.
    assert_eq!((info.width, info.height), (3 * 224 + 16, 22 + 3 * 224 + 16));

    let labels = tmp.path().join("stage_2_train_labels.csv");
    std::fs::write(
        &labels,
        "patientId,x,y,width,height,Target\n\
         a,,,,,0\n\
         b,1,2,3,4,1\n\
         b,5,6,7,8,1\n\
         c,,,,,0\n",
    )
    .unwrap();
    let csv = tmp.path().join("dataset.csv");
    ssl_host(&[
        "make-rsna-csv",
        &format!("--labels={}", labels.display()),
        &format!("--out={}", csv.display()),
    ])
    .assert_ok();
    assert_eq!(
        std::fs::read_to_string(&csv).unwrap(),
        "subject,label\na,0\nb,1\nc,0\n"
    );
}

#[test]
fn bad_data_gives_clear_errors_or_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let rsna = tmp.path().join("rsna");
    write_rsna(&rsna, 20, 32);
    let nih = tmp.path().join("nih");
    let names = write_nih(&nih, 40, 40).unwrap();

    // A listed DICOM that is absent.
    std::fs::remove_file(rsna.join("subject-004.dcm")).unwrap();
    let args = |out: &str, extra: &[&str]| {
        let mut a = debug_args(
            "NIH_RSNA_BYOL",
            &tmp.path().join(out),
            &[
                format!("--local_dataset={}", nih.display()),
                format!("--extra_local_dataset_paths={}", rsna.display()),
                "--ssl_encoder=resnet18".into(),
            ],
        );
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    run(&args("missing", &[])).assert_clear_error(&["subject-004.dcm"]);
    write_rsna(&rsna, 20, 32);

    // A truncated PNG among the NIH images: an error naming it, or skipped with a warning.
    let victim = std::fs::read_dir(nih.join("images_001/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| names.iter().any(|n| p.ends_with(n)))
        .unwrap();
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let victim_name = victim.file_name().unwrap().to_str().unwrap().to_string();
    // Every SSL sample is read at least once over training and validation with batches of 36
    // and 4; the whole split is in one batch so the broken file is always hit.
    let everything = [
        "--ssl_training_batch_size=36",
        "--is_debug_model=false",
        "--linear_head_batch_size=2",
    ];
    run(&args("corrupt", &everything)).assert_clear_error(&[&victim_name]);
    let out = tmp.path().join("skipped");
    let mut skip = args("skipped", &everything);
    skip.push("--skip_unreadable_images=true".into());
    let result = run(&skip);
    result.assert_ok();
    assert!(
        result.stderr.contains("skipped 1 unreadable image")
            && result.stderr.contains(&victim_name),
        "{}",
        result.stderr
    );
    assert!(out.join("checkpoints/last.safetensors").exists());

    // A label that is not an integer: the file and the row.
    std::fs::write(
        rsna.join("dataset.csv"),
        "subject,label\nsubject-000,1\nsubject-001,yes\n",
    )
    .unwrap();
    run(&args("label", &[])).assert_clear_error(&["dataset.csv", "row 3"]);
    // A missing column.
    std::fs::write(rsna.join("dataset.csv"), "subject,target\nsubject-000,1\n").unwrap();
    run(&args("column", &[])).assert_clear_error(&["dataset.csv", "label"]);
}

/// Every newer algorithm's CIFAR10 config trains a debug epoch on CIFAR-10 in its binary layout
/// (the configs' own encoders, heads, view groups and optimizers; ResNet-18 to keep it short).
#[test]
fn the_cifar10_configs_of_every_algorithm_train_a_debug_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let cifar = tmp.path().join("cifar");
    ssl_builtin_datasets::testdata::cifar::write_cifar10_binary(&cifar, 8).unwrap();
    for (model, prefix) in [
        ("CIFAR10MoCo", "moco"),
        ("CIFAR10SimSiam", "simsiam"),
        ("CIFAR10BarlowTwins", "barlowtwins"),
        ("CIFAR10VICReg", "vicreg"),
        ("CIFAR10DINO", "dino"),
    ] {
        let out = tmp.path().join(model);
        run(&debug_args(
            model,
            &out,
            &[
                format!("--local_dataset={}", cifar.display()),
                "--ssl_encoder=resnet18".into(),
            ],
        ))
        .assert_ok();
        let loss = metric(&out, &format!("{prefix}/train/loss"));
        assert!(loss.is_finite(), "{model}: train loss {loss}");
        let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
        assert!(config.contains("CIFAR10"), "{model}: {config}");
    }
}
