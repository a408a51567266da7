//! Datasets built into `ssl-host`, registered as the plugin `builtin-datasets`, a file each:
//!
//! - [`Shapes`]: labelled images of circles, squares, triangles and crosses drawn
//!   procedurally on textured backgrounds; needs no files.
//! - `CIFAR10`, `CIFAR100` (`cifar.rs`): the official binary or python archives, downloaded
//!   when absent.
//! - Chest X-rays: `RSNAKaggleCXR` (`rsna.rs`, DICOM through `dicom.rs`), `NIHCXR`
//!   (`nih.rs`), `CheXpert` (`chexpert.rs`), `CovidDataset` (`covid.rs`).
//! - `ImageFolder` (`image_folder.rs`): a user's own images, one folder per class.
//!
//! The host calls [`link`] so the linker keeps this crate (and its registration).

mod chexpert;
mod cifar;
mod covid;
mod csv_table;
mod dicom;
mod download;
mod image_file;
mod image_folder;
mod nih;
mod rsna;
mod rsna_labels;
mod shapes;
mod split;
#[cfg(feature = "testdata")]
#[doc(hidden)]
pub mod testdata;

pub use rsna_labels::build_rsna_dataset_csv;
pub use shapes::{ShapeLayout, Shapes, CLASS_NAMES};
pub use split::Split;

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
    image_folder::register(plugin)
}

ssl_plugin_api::register_builtin!(plugin);
