//! (being written) DICOM decoding for the chest X-ray datasets.

use ssl_plugin_api::{bail, Image, Result};
use std::path::Path;

/// Decodes a DICOM file into one 8-bit grey channel, as the original (MONOCHROME1 inverted,
/// min-max scaled to 0..=255).
#[allow(dead_code)]
pub(crate) fn decode_dicom_gray8(path: &Path) -> Result<Image> {
    bail!("{}: DICOM decoding is not written yet", path.display())
}
