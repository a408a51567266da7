//! # ssl-plugin-api
//!
//! The contract between `ssl-host` and its plugins. A plugin offers any mix of datasets,
//! transforms, encoders, SSL algorithms and named model configs:
//!
//! - implement [`Dataset`] / [`Transform`] (and, with feature `torch`, [`Encoder`] /
//!   [`SslAlgorithm`]) as ordinary Rust traits returning [`Result`];
//! - list them in a function returning a [`Plugin`];
//! - end the crate with `ssl_plugin_api::export_plugin!(that_function);` and build it as a
//!   `cdylib`; load it with `ssl-host --plugin path/to/libyour_plugin.so ...`.
//!
//! Panics in plugin code are caught and reach the host as errors; no `unsafe` and no
//! `catch_unwind` are needed in plugins. Dataset and transform plugins build without the
//! `torch` feature and need no libtorch.
//!
//! This is the only crate of the project that knows about abi_stable: the ABI types live in
//! [`ffi`] and are built by adapters here, so neither plugin authors nor the host name them.

mod build_info;
mod error;
#[doc(hidden)]
pub mod ffi;
mod guard;
pub mod host;
mod image;
mod params;
mod plugin;
#[cfg(feature = "torch")]
pub mod torch;

pub use build_info::BuildInfo;
#[doc(hidden)]
pub use error::FfiError;
pub use error::{PluginError, Result};
pub use image::{Image, PixelData, Pixels, Sample};
pub use params::Params;
#[doc(hidden)]
pub use plugin::__private;
pub use plugin::{Dataset, Plugin, Transform};
#[cfg(feature = "torch")]
pub use tch;
#[cfg(feature = "torch")]
pub use torch::{Encoder, EncoderFactory, EncoderSpec, SslAlgorithm, TrainableParam};
