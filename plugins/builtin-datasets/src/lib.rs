//! Datasets built into `ssl-host`, registered as the plugin `builtin-datasets`, a file each:
//!
//! - [`Shapes`]: labelled images of circles, squares, triangles and crosses drawn
//!   procedurally on textured backgrounds; needs no files.
//! - `CIFAR10`, `CIFAR100` (`cifar.rs`): the official binary or python archives, downloaded
//!   when absent.
//! - Chest X-rays: `RSNAKaggleCXR` (`rsna.rs`, DICOM through `dicom.rs`), `NIHCXR`
//!   (`nih.rs`), `CheXpert` (`chexpert.rs`), `CovidDataset` (`covid.rs`).
//! - `ImageFolder` (`image_folder.rs`): a user's own images, one folder per class.
//! - `Packed` (`packed.rs`): tar shards written by `ssl-host pack` (format in
//!   `packed_format.rs`) or by Python's `webdataset`.
//!
//! The host calls [`link`] so the linker keeps this crate (and its registration).

mod chexpert;
mod cifar;
mod covid;
mod csv_table;
mod dicom;
mod dicom_codecs;
mod download;
mod image_file;
mod image_folder;
mod nih;
/// NIH ChestX-ray14's 14 findings, in the order of its `Findings` columns.
pub use nih::FINDINGS as NIH_FINDINGS;
mod packed;
pub mod packed_format;
mod rsna;
mod rsna_labels;
mod shapes;
mod split;
#[cfg(feature = "testdata")]
#[doc(hidden)]
pub mod testdata;

pub use image_file::{ImageLimits, DEFAULT_MAX_IMAGE_PIXELS};
pub use rsna_labels::build_rsna_dataset_csv;
pub use shapes::{ShapeLayout, Shapes, CLASS_NAMES};
pub use split::Split;

/// Byte-level entry points of this crate's readers, for the fuzz targets (`fuzz/targets`) and
/// their corpus replay tests: each runs the same code as the datasets, on bytes instead of a
/// file, and returns its result (an error for bad input, never a panic).
#[doc(hidden)]
pub mod fuzzing {
    use crate::image_file::ImageLimits;
    use ssl_plugin_api::{Dataset, Image, Params, Result};

    /// A DICOM file as the chest X-ray datasets decode it (`decode_dicom_gray8`).
    pub fn decode_dicom(bytes: &[u8], limits: ImageLimits) -> Result<Image> {
        crate::dicom::decode_dicom_bytes(bytes, limits).map_err(ssl_plugin_api::PluginError::msg)
    }

    /// A PNG or JPEG file decoded both ways: one grey channel (CXR datasets) and its own
    /// channels (ImageFolder).
    pub fn decode_image(bytes: &[u8], limits: ImageLimits) -> Result<(Image, Image)> {
        crate::image_file::decode_bytes_both(bytes, limits)
    }

    /// A CIFAR binary file (`data_batch_N.bin`, `train.bin`): pixels and labels.
    pub fn cifar_binary(bytes: &[u8], cifar100: bool) -> Result<(Vec<u8>, Vec<u8>)> {
        crate::cifar::from_bytes::binary(bytes, cifar100)
    }

    /// A CIFAR python-version pickled batch: pixels and labels.
    pub fn cifar_pickle(bytes: &[u8], cifar100: bool) -> Result<(Vec<u8>, Vec<u8>)> {
        crate::cifar::from_bytes::pickled(bytes, cifar100)
    }

    /// Opens the CSV-indexed dataset `name` (`RSNAKaggleCXR`, `NIHCXR`, `CheXpert`,
    /// `CovidDataset`) from `params`, as the plugin does; its number of samples.
    pub fn open_table_dataset(name: &str, params: &Params) -> Result<usize> {
        Ok(match name {
            "RSNAKaggleCXR" => crate::rsna::RsnaKaggleCxr::from_params(params)?.len(),
            "NIHCXR" => crate::nih::NihCxr::from_params(params)?.len(),
            "CheXpert" => crate::chexpert::CheXpert::from_params(params)?.len(),
            "CovidDataset" => crate::covid::CovidDataset::from_params(params)?.len(),
            other => ssl_plugin_api::bail!("no CSV-indexed dataset `{other}`"),
        })
    }
}

/// Called by the host so the linker keeps this crate and its `inventory` registration.
pub fn link() {}

/// What the chest X-ray datasets declare: one grey channel, images of many sizes, and the
/// original's linear-head evaluation pipeline (`cxr_linear_head_augmentations.yaml` without
/// augmentation) as the default of `embed` and `predict`.
fn chest_xray_info() -> ssl_plugin_api::DatasetInfo {
    let step = |name: &str, params: &str| (name.to_string(), params.to_string());
    ssl_plugin_api::DatasetInfo {
        image_kind: ssl_plugin_api::ImageKind::Grey,
        small_images: false,
        varying_sizes: true,
        eval_transforms: vec![
            step("ExpandChannels", "{}"),
            step("Resize", r#"{"size":256}"#),
            step("CenterCrop", r#"{"size":224}"#),
        ],
    }
}

fn plugin() -> ssl_plugin_api::Plugin {
    let plugin = ssl_plugin_api::Plugin::new("builtin-datasets", env!("CARGO_PKG_VERSION")).dataset(
        "Shapes",
        "procedural labelled RGB images of 4 shapes (circle, square, triangle, cross) on textured backgrounds; \
         params: image_size (32), num_samples (2000), seed (0), split (train|test)",
        shapes::Shapes::from_params,
    );
    let plugin = cifar::register(plugin);
    let plugin = rsna::register(plugin);
    let plugin = nih::register(plugin);
    let plugin = chexpert::register(plugin);
    let plugin = covid::register(plugin);
    let plugin = packed::register(plugin);
    image_folder::register(plugin)
}

ssl_plugin_api::register_builtin!(plugin);
