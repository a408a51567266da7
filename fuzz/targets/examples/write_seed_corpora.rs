//! Writes the seed corpora of the fuzz targets, `fuzz/corpus/<target>/seed-*`, from the
//! test-data writers of builtin-datasets (feature `testdata`), the built-in configs and the
//! host's own checkpoint writer. Small on purpose (a few KB a file): the fuzzer grows them.
//!
//!     cargo run -p ssl-fuzz-targets --example write_seed_corpora
//!
//! CIFAR pickles need the Python with numpy of `.deps/torch-venv` (as the CIFAR tests do);
//! without it those seeds are skipped with a note. Files named `regression-*` are inputs that
//! once crashed a reader; this writer never touches them.

use ssl_builtin_datasets::testdata::{cifar, cxr, dicom};
use ssl_fuzz_targets::corpus_dir;
use ssl_host::checkpoint::{CheckpointInfo, FORMAT};
use ssl_host::config::RunConfig;
use ssl_host::registry::Registry;
use ssl_plugin_api::tch::{Kind, Tensor};
use ssl_plugin_api::BuildInfo;
use std::path::{Path, PathBuf};

fn main() -> anyhow::Result<()> {
    let scratch = std::env::temp_dir().join(format!("ssl-seed-corpora-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = write_all(&scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn seed(target: &str, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    Ok(())
}

fn seed_file(target: &str, name: &str, path: &Path) -> anyhow::Result<()> {
    seed(target, name, &std::fs::read(path)?)
}

fn write_all(scratch: &Path) -> anyhow::Result<()> {
    write_dicom()?;
    write_images(scratch)?;
    write_cifar(scratch)?;
    write_csv(scratch)?;
    write_configs()?;
    write_checkpoint(scratch)?;
    seed(
        "build_info",
        "current",
        BuildInfo::current().to_c_json().as_bytes(),
    )?;
    let old = r#"{"plugin_api":"0.0.9","abi_stable":"0.11.3","tch":null,"libtorch":null,"libtorch_variant":null,"rustc":"rustc 1.80.0"}"#;
    seed("build_info", "torch-free-old", old.as_bytes())?;
    Ok(())
}

fn write_dicom() -> anyhow::Result<()> {
    use dicom::{DicomSpec, Photometric, TransferSyntax as T};
    let gray = |w: u32, h: u32| -> Vec<i32> {
        cxr::gray_pattern(7, w, h)
            .into_iter()
            .map(i32::from)
            .collect()
    };
    let mut specs = vec![
        ("explicit-le-gray8", DicomSpec::gray8(8, 6, gray(8, 6))),
        (
            "explicit-le-gray16-12bit",
            DicomSpec::gray16(6, 5, 12, gray(6, 5).iter().map(|v| v * 16).collect()),
        ),
    ];
    for (name, ts) in [
        ("implicit-le", T::ImplicitVrLittleEndian),
        ("explicit-be", T::ExplicitVrBigEndian),
        ("deflated", T::DeflatedExplicitVrLittleEndian),
        ("jpeg-baseline", T::JpegBaseline),
        ("rle", T::RleLossless),
        (
            "jpeg2000-unsupported",
            T::Encapsulated("1.2.840.10008.1.2.4.90".into()),
        ),
    ] {
        specs.push((
            name,
            DicomSpec {
                transfer_syntax: ts,
                ..DicomSpec::gray8(8, 8, gray(8, 8))
            },
        ));
    }
    specs.push((
        "rle-gray16-signed-mono1",
        DicomSpec {
            signed: true,
            photometric: Photometric::Monochrome1,
            transfer_syntax: T::RleLossless,
            ..DicomSpec::gray16(4, 4, 16, (0..16).map(|v| v * 300 - 2000).collect())
        },
    ));
    specs.push((
        "rgb-explicit-le",
        DicomSpec {
            photometric: Photometric::Rgb,
            ..DicomSpec::gray8(
                4,
                3,
                cxr::rgb_pattern(3, 4, 3)
                    .into_iter()
                    .map(i32::from)
                    .collect(),
            )
        },
    ));
    specs.push(("two-frames", DicomSpec::gray8(4, 4, gray(4, 8))));
    for (name, spec) in specs {
        seed("dicom", name, &dicom::dicom_bytes(&spec)?)?;
    }
    Ok(())
}

fn write_images(scratch: &Path) -> anyhow::Result<()> {
    let dir = scratch.join("images");
    let gray = cxr::gray_pattern(1, 12, 9);
    let rgb = cxr::rgb_pattern(2, 12, 9);
    type Writer = fn(&Path, u32, u32, &[u8]) -> std::io::Result<()>;
    let files: [(&str, Writer, &[u8]); 4] = [
        ("gray8.png", cxr::write_png_gray8, &gray),
        ("rgb8.png", cxr::write_png_rgb8, &rgb),
        ("gray8.jpg", cxr::write_jpeg_gray8, &gray),
        ("rgb8.jpg", cxr::write_jpeg_rgb8, &rgb),
    ];
    for (name, write, pixels) in files {
        let path = dir.join(name);
        write(&path, 12, 9, pixels)?;
        seed_file("image", name, &path)?;
    }
    Ok(())
}

fn write_cifar(scratch: &Path) -> anyhow::Result<()> {
    let root = scratch.join("cifar10");
    cifar::write_cifar10_binary(&root, 2)?;
    let bin = find(&root, "data_batch_1.bin")?;
    seed_file("cifar_binary", "cifar10-data_batch_1.bin", &bin)?;
    let root = scratch.join("cifar100");
    cifar::write_cifar100_binary(&root, 2, 1)?;
    seed_file(
        "cifar_binary",
        "cifar100-test.bin",
        &find(&root, "test.bin")?,
    )?;
    if !cifar::venv_python().exists() {
        eprintln!("note: no Python with numpy; CIFAR pickle seeds skipped");
        return Ok(());
    }
    let root = scratch.join("cifar10py");
    cifar::write_cifar10_python(&root, 1)?;
    seed_file(
        "cifar_pickle",
        "cifar10-data_batch_1",
        &find(&root, "data_batch_1")?,
    )?;
    let root = scratch.join("cifar100py");
    cifar::write_cifar100_python(&root, 1, 1)?;
    seed_file("cifar_pickle", "cifar100-test", &find(&root, "test")?)?;
    Ok(())
}

/// The file called `name` somewhere under `root`.
fn find(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == name) {
                return Ok(path);
            }
        }
    }
    anyhow::bail!("{name} not written under {}", root.display())
}

fn write_csv(scratch: &Path) -> anyhow::Result<()> {
    let root = scratch.join("rsna");
    cxr::write_rsna_csv(&root, &[("a1", 0), ("b2", 1)])?;
    seed_file("csv_tables", "rsna-dataset.csv", &root.join("dataset.csv"))?;
    let root = scratch.join("nih");
    cxr::write_nih(&root, 2, 4)?;
    seed_file(
        "csv_tables",
        "nih-Data_Entry_2017.csv",
        &root.join("Data_Entry_2017.csv"),
    )?;
    let root = scratch.join("chexpert");
    cxr::write_chexpert(&root, 4, 1, 4)?;
    seed_file("csv_tables", "chexpert-train.csv", &root.join("train.csv"))?;
    let root = scratch.join("covid");
    cxr::write_covid(&root, 2, 2, 4)?;
    seed_file("csv_tables", "covid-dataset.csv", &root.join("dataset.csv"))?;
    let kaggle = "patientId,x,y,width,height,Target\n\
                  a1,,,,,0\n\
                  b2,264.0,152.0,213.0,379.0,1\n\
                  b2,562.0,152.0,256.0,453.0,1\n";
    seed(
        "csv_tables",
        "kaggle-stage_2_train_labels.csv",
        kaggle.as_bytes(),
    )?;
    Ok(())
}

fn write_configs() -> anyhow::Result<()> {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let registry = Registry::load(&[])?;
    for entry in std::fs::read_dir(&configs)? {
        let path = entry?.path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".toml") {
            seed_file("run_config", &name, &path)?;
        } else if name.ends_with(".yaml") {
            seed_file("augmentation_yaml", &name, &path)?;
        }
    }
    // A resolved config as `config.toml` holds it (what --resume reads).
    let resolved = RunConfig::resolve("ShapesBYOL", &[], &registry)?.to_toml();
    seed(
        "run_config",
        "resolved-ShapesBYOL.toml",
        resolved.as_bytes(),
    )?;
    Ok(())
}

fn write_checkpoint(scratch: &Path) -> anyhow::Result<()> {
    let path = scratch.join("last.safetensors");
    let tensors = vec![
        (
            "algorithm.w".to_string(),
            Tensor::arange(6, (Kind::Float, ssl_plugin_api::tch::Device::Cpu)).view([2, 3]),
        ),
        ("optimizer.step".to_string(), Tensor::from_slice(&[3i64])),
    ];
    let info = CheckpointInfo {
        format: FORMAT.to_string(),
        epochs_done: 1,
        global_step: 3,
        model: "ShapesBYOL".into(),
        config: "num_epochs = 2\n".into(),
        algorithm: "BYOL".into(),
        encoder: "resnet18".into(),
        encoder_params: "{}".into(),
        embedding_encoder_prefix: "online_network.encoder.".into(),
        plugins: [("builtin-datasets".to_string(), "0.1.0".to_string())].into(),
        world_size: 1,
        precision: "32-true".into(),
    };
    ssl_host::checkpoint::save(&path, &tensors, &info)?;
    seed_file("checkpoint", "small.safetensors", &path)?;
    Ok(())
}
