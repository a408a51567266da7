//! Datasets built into `ssl-host`, registered as the plugin `builtin-datasets`.
//!
//! - [`Shapes`]: labelled images of circles, squares, triangles and crosses drawn
//!   procedurally on textured backgrounds; needs no files.
//!
//! The host calls [`link`] so the linker keeps this crate (and its registration).

mod shapes;

pub use shapes::{ShapeLayout, Shapes, Split, CLASS_NAMES};

/// Called by the host so the linker keeps this crate and its `inventory` registration.
pub fn link() {}

fn plugin() -> ssl_plugin_api::Plugin {
    ssl_plugin_api::Plugin::new("builtin-datasets", env!("CARGO_PKG_VERSION")).dataset(
        "Shapes",
        "procedural labelled RGB images of 4 shapes (circle, square, triangle, cross) on textured backgrounds; \
         params: image_size (32), num_samples (2000), seed (0), split (train|test)",
        shapes::Shapes::from_params,
    )
}

ssl_plugin_api::register_builtin!(plugin);
