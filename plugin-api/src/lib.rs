//! # ssl-plugin-api
//!
//! The contract between `ssl-host` and its plugins. A plugin offers any mix of datasets,
//! transforms, encoders, SSL algorithms and named model configs:
//!
//! - implement [`Dataset`] / [`Transform`] (and, with feature `torch`, [`Encoder`] /
//!   [`SslAlgorithm`] / [`BatchTransform`]) as ordinary Rust traits returning [`Result`];
//! - optionally offer a pipeline compiler ([`Plugin::pipeline_compiler`]): given a whole list
//!   of transforms it knows, one transform doing them all faster, drawing what the steps
//!   would draw (see [`step_seed`]);
//! - list them in a function returning a [`Plugin`];
//! - end the crate with `ssl_plugin_api::export_plugin!(that_function);` and build it as a
//!   `cdylib`; load it with `ssl-host --plugin path/to/libyour_plugin.so ...`.
//!
//! Panics in plugin code are caught and reach the host as errors; no `unsafe` and no
//! `catch_unwind` are needed in plugins. Dataset and transform plugins build without the
//! `torch` feature and need no libtorch.
//!
//! A plugin also declares what the host needs to know about its entries without creating
//! them ([`DatasetInfo`], [`EncoderInfo`], [`AlgorithmInfo`]), e.g. that a dataset's images
//! are small or grey: the host never tests a plugin's names.
//!
//! Under `torchrun`, encoders and algorithms see the whole process group through
//! [`Collectives`] (feature `torch`): [`Collectives::current`] (also
//! [`EncoderSpec::collectives`]) gives the rank, the world size, all-reduce and all-gather (with
//! or without gradient), in a built-in as in a `.so` plugin; on one process every operation is
//! the identity. [`nn::BatchNorm`] is PyTorch's BatchNorm that synchronises its statistics
//! across processes when the run asks for it: build encoders and heads with it (with the same
//! variable names as tch's `batch_norm2d`) and they are ready for distributed training.
//!
//! This is the only crate of the project that knows about abi_stable: the ABI types live in
//! [`ffi`] and are built by adapters here, so neither plugin authors nor the host name them.
//!
//! The host's side of the boundary (loading `.so` files, layout checks, the built-in list) is
//! the module `host`, behind the feature `host` (off by default): a plugin does not compile
//! it, nor the dynamic loader it needs.

mod build_info;
#[cfg(feature = "torch")]
mod collectives;
mod error;
#[doc(hidden)]
pub mod ffi;
mod findings;
mod guard;
#[cfg(feature = "host")]
pub mod host;
mod image;
mod info;
#[cfg(feature = "torch")]
pub mod nn;
mod params;
mod plugin;
mod seeds;
#[cfg(feature = "torch")]
pub mod torch;

pub use build_info::BuildInfo;
#[cfg(feature = "torch")]
pub use collectives::{CollectiveOps, Collectives, ReduceOp};
#[doc(hidden)]
pub use error::FfiError;
pub use error::{Context, PluginError, Result};
pub use findings::{Findings, ABSENT, PRESENT, UNKNOWN};
pub use image::{Image, PixelData, Pixels, Sample};
pub use info::{AlgorithmInfo, DatasetInfo, EncoderInfo, ImageKind};
pub use params::Params;
#[doc(hidden)]
pub use plugin::__private;
pub use plugin::{Dataset, Plugin, Transform, TransformStep};
pub use seeds::{mix_seed, step_seed};
#[cfg(feature = "torch")]
pub use tch;
#[cfg(feature = "torch")]
pub use torch::{
    BatchTransform, Encoder, EncoderFactory, EncoderSpec, SslAlgorithm, TrainableParam,
};
