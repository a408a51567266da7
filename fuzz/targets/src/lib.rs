//! The fuzz targets of ssl-host: one plain function per reader of outside bytes, each taking
//! arbitrary bytes and running the same code a user's file goes through. The libFuzzer
//! harness (`fuzz/fuzz_targets/*.rs`, built by `scripts/fuzz`) calls them with generated
//! inputs; this crate's tests (`tests/replay.rs`) call them with every file of the corpora in
//! `fuzz/corpus/<target>/`, so the targets and the regression inputs run in every `cargo test`.
//!
//! A target returns nothing: a reader may refuse an input (that is an error, and fine), but it
//! must not panic, hang or allocate without bound; the assertions here check what an accepted
//! input must satisfy (e.g. a decoded image within the pixel limit). Names follow the corpus
//! folders: [`TARGETS`] lists them.
//!
//! What this crate deliberately does not do: decide what is a valid file. It only drives the
//! readers; their own tests say what they accept.

use ssl_builtin_datasets::fuzzing;
use ssl_builtin_datasets::ImageLimits;
use ssl_host::config::RunConfig;
use ssl_host::registry::Registry;
use ssl_plugin_api::{BuildInfo, Params};
use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// A fuzz target: arbitrary bytes in, a panic only for a bug.
pub type Target = fn(&[u8]);

/// Every target, by name (the corpus folder and the fuzz binary of each).
pub const TARGETS: [(&str, Target); 9] = [
    ("dicom", dicom),
    ("image", image),
    ("cifar_binary", cifar_binary),
    ("cifar_pickle", cifar_pickle),
    ("csv_tables", csv_tables),
    ("run_config", run_config),
    ("augmentation_yaml", augmentation_yaml),
    ("checkpoint", checkpoint),
    ("build_info", build_info),
];

/// The pixel limit while fuzzing: 2²⁰ (1024 × 1024), smaller than the datasets' default so
/// that accepted inputs stay fast and small; the code path is the same. (At 2²⁴ a legitimate
/// 3-sample DICOM at the limit takes over 1 GB on its way to 8 bits, which libFuzzer's 2 GB
/// RSS limit reported as an out-of-memory.)
pub const FUZZ_MAX_IMAGE_PIXELS: u64 = 1 << 20;

fn limits() -> ImageLimits {
    ImageLimits {
        max_pixels: FUZZ_MAX_IMAGE_PIXELS,
    }
}

/// A DICOM file through the chest X-ray datasets' decoder (dicom-rs and our pre-checks).
pub fn dicom(data: &[u8]) {
    if let Ok(image) = fuzzing::decode_dicom(data, limits()) {
        assert_within_limit(&image);
    }
}

/// A PNG or JPEG file through the grey (CXR) and native (ImageFolder) decoders.
pub fn image(data: &[u8]) {
    if let Ok((grey, native)) = fuzzing::decode_image(data, limits()) {
        assert_within_limit(&grey);
        assert_within_limit(&native);
        assert_eq!(
            (grey.width(), grey.height()),
            (native.width(), native.height())
        );
    }
}

fn assert_within_limit(image: &ssl_plugin_api::Image) {
    let pixels = image.width() as u64 * image.height() as u64;
    assert!(
        pixels <= FUZZ_MAX_IMAGE_PIXELS,
        "a {}×{} image passed the limit",
        image.width(),
        image.height()
    );
}

/// A CIFAR binary file, read as CIFAR-10 and as CIFAR-100.
pub fn cifar_binary(data: &[u8]) {
    for cifar100 in [false, true] {
        if let Ok((pixels, labels)) = fuzzing::cifar_binary(data, cifar100) {
            assert_eq!(pixels.len(), labels.len() * 3072);
        }
    }
}

/// A CIFAR python-version pickled batch, read as CIFAR-10 and as CIFAR-100.
pub fn cifar_pickle(data: &[u8]) {
    for cifar100 in [false, true] {
        if let Ok((pixels, labels)) = fuzzing::cifar_pickle(data, cifar100) {
            assert_eq!(pixels.len(), labels.len() * 3072);
        }
    }
}

/// A scratch folder per thread (removed when the thread ends), for the readers that take a
/// path: the CSV-indexed datasets, model config files, checkpoints.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

thread_local! {
    static SCRATCH: Scratch = {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ssl-fuzz-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the fuzz scratch folder");
        Scratch(dir)
    };
    static REGISTRY: RefCell<Option<Registry>> = const { RefCell::new(None) };
}

/// `name` in this thread's scratch folder, with `data` written to it (parents created).
fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let path = SCRATCH.with(|s| s.0.join(name));
    std::fs::create_dir_all(path.parent().unwrap()).expect("creating a scratch folder");
    std::fs::write(&path, data).expect("writing a scratch file");
    path
}

/// Calls `f` with the built-in plugins' registry (loaded once per thread).
fn with_registry<T>(f: impl FnOnce(&Registry) -> T) -> T {
    REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        let registry = r.get_or_insert_with(|| Registry::load(&[]).expect("built-in registry"));
        f(registry)
    })
}

/// The same bytes as the CSV of each CSV-indexed dataset (RSNA, NIH, CheXpert with and
/// without a label column, Covid) and as the Kaggle RSNA labels file.
pub fn csv_tables(data: &[u8]) {
    for (dataset, file, extra) in [
        ("RSNAKaggleCXR", "rsna/dataset.csv", ""),
        ("NIHCXR", "nih/Data_Entry_2017.csv", ""),
        ("CheXpert", "chexpert/train.csv", ""),
        (
            "CheXpert",
            "chexpert/train.csv",
            r#","chexpert_label":"Pneumonia","uncertainty_policy":"ignore""#,
        ),
        ("CovidDataset", "covid/dataset.csv", ""),
    ] {
        let csv = scratch_file(file, data);
        let root = csv.parent().unwrap();
        let params = Params::from_json(&format!(
            r#"{{"root":{},"split":"train"{extra}}}"#,
            serde_json::to_string(&root.display().to_string()).unwrap()
        ))
        .expect("fuzz params");
        let _ = fuzzing::open_table_dataset(dataset, &params);
    }
    let labels = scratch_file("kaggle/stage_2_train_labels.csv", data);
    let out = labels.with_file_name("dataset.csv");
    let _ = ssl_builtin_datasets::build_rsna_dataset_csv(&labels, &out);
}

/// A TOML text as a model config file (`--model=path.toml`, resolved with the built-in
/// plugins), as a stored run config (`--resume`) and as a resolved config; a resolved
/// config written back as TOML must read back.
pub fn run_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = RunConfig::from_resolved_toml(text, "fuzz") {
        let written = config.to_toml();
        if let Err(e) = RunConfig::from_resolved_toml(&written, "fuzz") {
            panic!("a config read from TOML does not read back after writing: {e:#}\n{written}");
        }
    }
    let _ = RunConfig::resume(text, "fuzz", &[]);
    let path = scratch_file("model.toml", data);
    let model = path.display().to_string();
    with_registry(|registry| {
        let _ = RunConfig::resolve(&model, &[], registry);
    });
}

/// An augmentation YAML text (`ssl_augmentation_config`): parsed, turned into pipelines
/// (with and without channel expansion) and their transforms created.
pub fn augmentation_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ssl_host::augmentation_yaml::parse(text, "fuzz.yaml");
    for expand in [false, true] {
        if let Ok(pipelines) = ssl_host::augmentation_yaml::cxr_pipelines(text, "fuzz.yaml", expand)
        {
            with_registry(|registry| {
                let _ = pipelines.check("fuzz.yaml", registry);
            });
        }
    }
}

/// A checkpoint file: its record alone, then every tensor.
pub fn checkpoint(data: &[u8]) {
    let path = scratch_file("last.safetensors", data);
    let _ = ssl_host::checkpoint::read_info(&path);
    let _ = ssl_host::checkpoint::load(&path);
}

/// A plugin's build-info record, as the loader reads it: text up to the first NUL (a C
/// string), lossily decoded, parsed as JSON and compared with the host's own.
pub fn build_info(data: &[u8]) {
    let text = match data.iter().position(|&b| b == 0) {
        Some(end) => &data[..end],
        None => data,
    };
    let text = String::from_utf8_lossy(text);
    if let Ok(info) = serde_json::from_str::<BuildInfo>(&text) {
        let _ = BuildInfo::current().incompatibilities(&info);
        let _ = info.summary();
        let _ = info.to_c_json();
    }
}

/// The corpus folder of `target` (`fuzz/corpus/<target>`).
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target)
}
