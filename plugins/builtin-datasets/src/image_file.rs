//! Decoding one image file (PNG, JPEG, TIFF, BMP, WebP or DICOM) for the chest X-ray and
//! ImageFolder datasets.
//!
//! `.dcm` files (by extension, any case, as the original) go to
//! [`decode_dicom_gray8`](crate::dicom::decode_dicom_gray8). Other files are decoded by their
//! content (as PIL does): PNG, JPEG, TIFF, BMP or WebP, anything else is an error naming the
//! file. Two outputs:
//!
//! - [`decode_gray8`]: one 8-bit grey channel, as PIL's `Image.open(f).convert("L")` in the
//!   original CXR datasets: RGB → `(R·19595 + G·38470 + B·7471 + 2¹⁵) >> 16` (PIL's fixed-point
//!   ITU-R 601-2 luma, i.e. `R·0.299 + G·0.587 + B·0.114` rounded), alpha ignored, palettes
//!   expanded, 1/2/4-bit grey scaled to 0..=255, a 16-bit grey PNG clipped to 255 (PIL's
//!   `I;16` → `L`), other 16-bit PNGs reduced to their high byte (PIL reads them so).
//! - [`decode_native`]: the file's own channels for ImageFolder: grey (1) or RGB (3),
//!   alpha dropped, palettes expanded to RGB, 16-bit PNGs kept as 16-bit values.
//!
//! JPEGs are decoded by zune-jpeg in strict mode; its output can differ from PIL's
//! libjpeg-turbo by a grey level or two at some pixels (PNGs match PIL exactly). TIFF, BMP
//! and WebP go through the `image` crate and follow the same rules (a 16-bit grey TIFF is
//! PIL's `I;16`); lossy WebP can differ from PIL's libwebp by a grey level at some pixels.
//!
//! Every decode takes [`ImageLimits`]: the dimensions a header claims are checked against
//! `max_image_pixels` before any pixel buffer is allocated, so a hostile or damaged header
//! (100,000 × 100,000) is an error naming the file and the limit, not an out-of-memory abort.

use crate::dicom::decode_dicom_gray8;
use ssl_plugin_api::{bail, Image, Params, PluginError, Result};
use std::path::Path;

/// The default of the dataset parameter `max_image_pixels`: 2²⁶ = 67,108,864 pixels (8192 ×
/// 8192). The largest chest X-rays in use (NIH, CheXpert, RSNA, and flat-panel detectors up
/// to 43 × 43 cm at 0.1 mm, about 4,300 × 4,300 = 18.5 M pixels) fit with a margin of 3.6×;
/// the largest buffer it lets one decode allocate (RGBA, 16 bits) is 512 MiB.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 1 << 26;

/// The name of the dataset parameter that sets [`ImageLimits::max_pixels`].
pub(crate) const MAX_IMAGE_PIXELS: &str = "max_image_pixels";

/// What one image file may claim, checked against its header before decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// The most pixels (width × height × frames × samples per pixel for DICOM, width ×
    /// height for PNG and JPEG) an image may have.
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    /// [`DEFAULT_MAX_IMAGE_PIXELS`].
    fn default() -> Self {
        ImageLimits {
            max_pixels: DEFAULT_MAX_IMAGE_PIXELS,
        }
    }
}

impl ImageLimits {
    /// The limits from a dataset's parameters (`max_image_pixels`, a positive integer;
    /// [`DEFAULT_MAX_IMAGE_PIXELS`] when absent).
    pub(crate) fn from_params(params: &Params, dataset: &str) -> Result<Self> {
        let max_pixels: u64 = params
            .get_or(MAX_IMAGE_PIXELS, DEFAULT_MAX_IMAGE_PIXELS)
            .map_err(|e| PluginError::msg(format!("{dataset}: {}", e.message())))?;
        if max_pixels == 0 {
            bail!("{dataset}: parameter `{MAX_IMAGE_PIXELS}` must be a positive number of pixels");
        }
        Ok(ImageLimits { max_pixels })
    }

    /// An error when `dimensions` (their product: e.g. width, height, frames) exceed the
    /// limit; the message names the limit and how to raise it.
    pub(crate) fn check(&self, what: &str, dimensions: &[(&str, u64)]) -> Result<(), String> {
        let pixels = dimensions
            .iter()
            .fold(1u64, |n, &(_, d)| n.saturating_mul(d));
        if pixels <= self.max_pixels {
            return Ok(());
        }
        let shown = dimensions
            .iter()
            .map(|(name, d)| format!("{d} {name}"))
            .collect::<Vec<_>>()
            .join(" × ");
        Err(format!(
            "{what} claims {shown} = {pixels} pixels, more than the limit max_image_pixels = {} \
             (refused before decoding; raise the dataset parameter `{MAX_IMAGE_PIXELS}` if the \
             image is genuine)",
            self.max_pixels
        ))
    }
}

/// The file extensions the image datasets read (lower case).
pub(crate) const IMAGE_EXTENSIONS: [&str; 8] =
    ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "webp", "dcm"];

/// Whether `path` has an image extension of [`IMAGE_EXTENSIONS`] (any case).
pub(crate) fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Whether `path` ends in `.dcm` (any case): the original's `is_dicom_file_path`.
pub(crate) fn is_dicom(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("dcm"))
}

/// Decodes `path` into one 8-bit grey channel, as the original CXR datasets (see the module
/// doc). Errors name the file.
pub(crate) fn decode_gray8(path: &Path, limits: ImageLimits) -> Result<Image> {
    if is_dicom(path) {
        return decode_dicom_gray8(path, limits);
    }
    let bytes = read(path)?;
    let decoded = decode_bytes(&bytes, limits).map_err(|e| e.context(path.display()))?;
    decoded.into_gray8()
}

/// Decodes `path` keeping its own channels: grey or RGB, alpha dropped, 8 or 16 bits (see the
/// module doc). Errors name the file.
pub(crate) fn decode_native(path: &Path, limits: ImageLimits) -> Result<Image> {
    if is_dicom(path) {
        return decode_dicom_gray8(path, limits);
    }
    let bytes = read(path)?;
    let decoded = decode_bytes(&bytes, limits).map_err(|e| e.context(path.display()))?;
    decoded.into_native()
}

/// [`decode_gray8`] and [`decode_native`] of a PNG or JPEG file's bytes (what the fuzz
/// targets call): both outputs, or the first error.
pub(crate) fn decode_bytes_both(bytes: &[u8], limits: ImageLimits) -> Result<(Image, Image)> {
    let grey = decode_bytes(bytes, limits)?.into_gray8()?;
    let native = decode_bytes(bytes, limits)?.into_native()?;
    Ok((grey, native))
}

/// The names of the files directly in `dir`.
pub(crate) fn list_file_names(dir: &Path) -> Result<std::collections::HashSet<String>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| PluginError::msg(format!("{}: cannot list the folder: {e}", dir.display())))?;
    let mut names = std::collections::HashSet::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            PluginError::msg(format!("{}: cannot list the folder: {e}", dir.display()))
        })?;
        let is_file = match entry.file_type() {
            Ok(t) if t.is_symlink() => entry.path().is_file(),
            Ok(t) => t.is_file(),
            Err(_) => false,
        };
        if is_file {
            if let Ok(name) = entry.file_name().into_string() {
                names.insert(name);
            }
        }
    }
    Ok(names)
}

/// PIL's RGB → L conversion (ITU-R 601-2 luma in 16-bit fixed point, rounded).
pub(crate) fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            PluginError::msg(format!("{}: image file not found", path.display()))
        } else {
            PluginError::msg(format!("{}: cannot read: {e}", path.display()))
        }
    })
}

/// How the pixels of a decoded file are laid out, before conversion.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// Grey, 8 bits (also 1/2/4-bit grey scaled up).
    Gray8,
    /// Grey, 16 bits, no alpha (PIL `I;16`).
    Gray16,
    /// Grey + alpha, 8 bits.
    GrayAlpha8,
    /// Grey + alpha, 16 bits (PIL reads it as RGBA from the high bytes).
    GrayAlpha16,
    /// RGB, 8 bits (also expanded palettes).
    Rgb8,
    /// RGB, 16 bits.
    Rgb16,
    /// RGBA, 8 bits.
    Rgba8,
    /// RGBA, 16 bits.
    Rgba16,
}

impl Layout {
    fn samples(self) -> usize {
        match self {
            Layout::Gray8 | Layout::Gray16 => 1,
            Layout::GrayAlpha8 | Layout::GrayAlpha16 => 2,
            Layout::Rgb8 | Layout::Rgb16 => 3,
            Layout::Rgba8 | Layout::Rgba16 => 4,
        }
    }

    fn sixteen_bit(self) -> bool {
        matches!(
            self,
            Layout::Gray16 | Layout::GrayAlpha16 | Layout::Rgb16 | Layout::Rgba16
        )
    }
}

/// A decoded file: raw samples (big-endian pairs for 16-bit layouts).
struct Decoded {
    width: u32,
    height: u32,
    layout: Layout,
    data: Vec<u8>,
}

impl Decoded {
    /// 8-bit values of every sample: 16-bit samples reduced to their high byte, except
    /// [`Layout::Gray16`], clipped to 255 as PIL's `I;16` → `L`.
    fn samples8(&self) -> Vec<u8> {
        if !self.layout.sixteen_bit() {
            return self.data.clone();
        }
        if self.layout == Layout::Gray16 {
            return self
                .data
                .chunks_exact(2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]).min(255) as u8)
                .collect();
        }
        self.data.chunks_exact(2).map(|b| b[0]).collect()
    }

    fn into_gray8(self) -> Result<Image> {
        let samples = self.samples8();
        let grey: Vec<u8> = match self.layout.samples() {
            1 => samples,
            2 => samples.chunks_exact(2).map(|p| p[0]).collect(),
            n => samples
                .chunks_exact(n)
                .map(|p| luma(p[0], p[1], p[2]))
                .collect(),
        };
        Image::from_u8(self.width, self.height, 1, grey)
    }

    fn into_native(self) -> Result<Image> {
        let n = self.layout.samples();
        let keep = if n >= 3 { 3 } else { 1 };
        if self.layout.sixteen_bit() {
            let values: Vec<u16> = self
                .data
                .chunks_exact(2 * n)
                .flat_map(|p| (0..keep).map(move |c| u16::from_be_bytes([p[2 * c], p[2 * c + 1]])))
                .collect();
            Image::from_u16(self.width, self.height, keep as u32, values)
        } else if n == keep {
            Image::from_u8(self.width, self.height, keep as u32, self.data)
        } else {
            let values: Vec<u8> = self
                .data
                .chunks_exact(n)
                .flat_map(|p| p[..keep].iter().copied())
                .collect();
            Image::from_u8(self.width, self.height, keep as u32, values)
        }
    }
}

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

fn decode_bytes(bytes: &[u8], limits: ImageLimits) -> Result<Decoded> {
    use image::ImageFormat;
    if bytes.starts_with(&PNG_SIGNATURE) {
        decode_png(bytes, limits)
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        decode_jpeg(bytes, limits)
    } else if [b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"]
        .iter()
        .any(|m| bytes.starts_with(*m))
    {
        decode_with_image_crate(bytes, limits, ImageFormat::Tiff, "TIFF")
    } else if bytes.starts_with(b"BM") {
        decode_with_image_crate(bytes, limits, ImageFormat::Bmp, "BMP")
    } else if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        decode_with_image_crate(bytes, limits, ImageFormat::WebP, "WebP")
    } else if bytes.is_empty() {
        bail!("the file is empty; expected a PNG, JPEG, TIFF, BMP, WebP or DICOM (.dcm) image")
    } else {
        bail!(
            "not a PNG, JPEG, TIFF, BMP or WebP file (and not named .dcm); expected one of these \
             or a DICOM image"
        )
    }
}

/// TIFF (8 and 16 bit, any compression the `tiff` crate reads), BMP and WebP (lossless and
/// lossy) through the `image` crate: the header's dimensions are checked against the limit
/// before decoding, and the crate's own allocation limit is set to what that image may take.
fn decode_with_image_crate(
    bytes: &[u8],
    limits: ImageLimits,
    format: image::ImageFormat,
    name: &str,
) -> Result<Decoded> {
    use image::{DynamicImage, ImageDecoder};
    let invalid = |e: image::ImageError| PluginError::msg(format!("invalid {name}: {e}"));
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut crate_limits = image::Limits::default();
    crate_limits.max_alloc = Some(
        limits
            .max_pixels
            .saturating_mul(MAX_BYTES_PER_PIXEL)
            .saturating_add(DECODER_SLACK_BYTES),
    );
    reader.limits(crate_limits);
    let decoder = reader.into_decoder().map_err(invalid)?;
    let (width, height) = decoder.dimensions();
    limits
        .check(
            &format!("the {name} header"),
            &[("columns", width as u64), ("rows", height as u64)],
        )
        .map_err(PluginError::msg)?;
    let image = DynamicImage::from_decoder(decoder).map_err(invalid)?;
    let be = |values: &[u16]| {
        values
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect::<Vec<u8>>()
    };
    let (layout, data) = match image {
        DynamicImage::ImageLuma8(b) => (Layout::Gray8, b.into_raw()),
        DynamicImage::ImageLumaA8(b) => (Layout::GrayAlpha8, b.into_raw()),
        DynamicImage::ImageRgb8(b) => (Layout::Rgb8, b.into_raw()),
        DynamicImage::ImageRgba8(b) => (Layout::Rgba8, b.into_raw()),
        DynamicImage::ImageLuma16(b) => (Layout::Gray16, be(b.as_raw())),
        DynamicImage::ImageLumaA16(b) => (Layout::GrayAlpha16, be(b.as_raw())),
        DynamicImage::ImageRgb16(b) => (Layout::Rgb16, be(b.as_raw())),
        DynamicImage::ImageRgba16(b) => (Layout::Rgba16, be(b.as_raw())),
        other => bail!(
            "{name} with {:?} samples is not supported (expected 8- or 16-bit integer grey or \
             RGB)",
            other.color()
        ),
    };
    Ok(Decoded {
        width,
        height,
        layout,
        data,
    })
}

/// The most bytes one decoded pixel takes (RGBA, 16 bits).
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// What the decoders may allocate besides the pixels (text and ICC chunks, tables).
const DECODER_SLACK_BYTES: u64 = 16 << 20;

fn decode_png(bytes: &[u8], limits: ImageLimits) -> Result<Decoded> {
    let invalid = |e: png::DecodingError| PluginError::from_error(e).context("invalid PNG");
    // The png crate's own allocation limit, on top of the header check below.
    let budget = limits
        .max_pixels
        .saturating_mul(MAX_BYTES_PER_PIXEL)
        .saturating_add(DECODER_SLACK_BYTES);
    let png_limits = png::Limits {
        bytes: usize::try_from(budget).unwrap_or(usize::MAX),
    };
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), png_limits);
    // Palettes to RGB, 1/2/4-bit grey scaled to 8 bits, tRNS to an alpha channel (dropped).
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(invalid)?;
    let (width, height) = (reader.info().width, reader.info().height);
    limits
        .check(
            "the PNG header",
            &[("columns", width as u64), ("rows", height as u64)],
        )
        .map_err(PluginError::msg)?;
    let source = reader.info().color_type;
    let mut data = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut data).map_err(invalid)?;
    data.truncate(frame.buffer_size());
    let sixteen = frame.bit_depth == png::BitDepth::Sixteen;
    use png::ColorType as C;
    let layout = match (frame.color_type, sixteen) {
        (C::Grayscale, false) => Layout::Gray8,
        (C::Grayscale, true) => Layout::Gray16,
        // A grey PNG with a tRNS colour key: PIL keeps it grey (clipped when 16-bit).
        (C::GrayscaleAlpha, false) => Layout::GrayAlpha8,
        (C::GrayscaleAlpha, true) if source == C::Grayscale => {
            data = data.chunks_exact(4).flat_map(|p| [p[0], p[1]]).collect();
            Layout::Gray16
        }
        (C::GrayscaleAlpha, true) => Layout::GrayAlpha16,
        (C::Rgb, false) => Layout::Rgb8,
        (C::Rgb, true) => Layout::Rgb16,
        (C::Rgba, false) => Layout::Rgba8,
        (C::Rgba, true) => Layout::Rgba16,
        (C::Indexed, _) => bail!("palette left unexpanded"),
    };
    Ok(Decoded {
        width: frame.width,
        height: frame.height,
        layout,
        data,
    })
}

fn decode_jpeg(bytes: &[u8], limits: ImageLimits) -> Result<Decoded> {
    decode_jpeg_checked(bytes, limits).map_err(|e| e.context("invalid JPEG"))
}

fn decode_jpeg_checked(bytes: &[u8], limits: ImageLimits) -> Result<Decoded> {
    use zune_jpeg::zune_core::bytestream::ZCursor;
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(1 << 16)
        .set_max_height(1 << 16);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder
        .decode_headers()
        .map_err(|e| PluginError::msg(format!("{e:?}")))?;
    if let Some((width, height)) = decoder.dimensions() {
        limits
            .check(
                "the JPEG frame header",
                &[("columns", width as u64), ("rows", height as u64)],
            )
            .map_err(PluginError::msg)?;
    }
    let grey = decoder.input_colorspace() == Some(ColorSpace::Luma);
    let (out, layout) = if grey {
        (ColorSpace::Luma, Layout::Gray8)
    } else {
        (ColorSpace::RGB, Layout::Rgb8)
    };
    decoder.set_options(options.jpeg_set_out_colorspace(out));
    let data = decoder
        .decode()
        .map_err(|e| PluginError::msg(format!("{e:?}")))?;
    let info = decoder
        .info()
        .ok_or_else(|| PluginError::msg("no image information after decoding"))?;
    Ok(Decoded {
        width: info.width as u32,
        height: info.height as u32,
        layout,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a PNG with the png crate: `data` as raw samples for (colour, depth).
    #[allow(clippy::too_many_arguments)]
    fn png_file(
        path: &Path,
        w: u32,
        h: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        data: &[u8],
        palette: Option<&[u8]>,
        trns: Option<&[u8]>,
    ) {
        let file = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        if let Some(p) = palette {
            enc.set_palette(p.to_vec());
        }
        if let Some(t) = trns {
            enc.set_trns(t.to_vec());
        }
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(data).unwrap();
    }

    fn u8s(image: &Image) -> Vec<u8> {
        match image.pixels() {
            ssl_plugin_api::Pixels::U8(v) => v.to_vec(),
            other => panic!("expected 8-bit pixels, got {other:?}"),
        }
    }

    #[test]
    fn luma_matches_pil_values() {
        // Values printed by Pillow 13: Image.fromarray(rgb).convert("L").
        let cases = [
            ((255, 0, 0), 76),
            ((0, 255, 0), 150),
            ((0, 0, 255), 29),
            ((10, 20, 30), 18),
            ((200, 100, 50), 124),
            ((255, 255, 255), 255),
        ];
        for ((r, g, b), l) in cases {
            assert_eq!(luma(r, g, b), l, "({r},{g},{b})");
        }
    }

    #[test]
    fn png_layouts_follow_pil() {
        use png::{BitDepth as D, ColorType as C};
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        // Expected values: Pillow 13 `Image.open(f).convert("L")` on the same files.
        let be = |v: &[u16]| v.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
        png_file(
            &p("g16.png"),
            6,
            1,
            C::Grayscale,
            D::Sixteen,
            &be(&[0, 100, 255, 256, 1000, 65535]),
            None,
            None,
        );
        assert_eq!(
            u8s(&decode_gray8(&p("g16.png"), ImageLimits::default()).unwrap()),
            [0, 100, 255, 255, 255, 255]
        );
        let native = decode_native(&p("g16.png"), ImageLimits::default()).unwrap();
        assert_eq!(
            native.pixels_u16_for_test(),
            vec![0, 100, 255, 256, 1000, 65535]
        );
        png_file(
            &p("rgb16.png"),
            2,
            1,
            C::Rgb,
            D::Sixteen,
            &be(&[0x1234, 0xff00, 0x00ff, 0x80ff, 0x7f80, 0x0101]),
            None,
            None,
        );
        assert_eq!(
            u8s(&decode_gray8(&p("rgb16.png"), ImageLimits::default()).unwrap()),
            [155, 113]
        );
        png_file(
            &p("la16.png"),
            2,
            1,
            C::GrayscaleAlpha,
            D::Sixteen,
            &be(&[0x1234, 0xffff, 0x80ff, 0]),
            None,
            None,
        );
        assert_eq!(
            u8s(&decode_gray8(&p("la16.png"), ImageLimits::default()).unwrap()),
            [18, 128]
        );
        png_file(
            &p("g4.png"),
            4,
            1,
            C::Grayscale,
            D::Four,
            &[0x0f, 0x8a],
            None,
            None,
        );
        assert_eq!(
            u8s(&decode_gray8(&p("g4.png"), ImageLimits::default()).unwrap()),
            [0, 255, 136, 170]
        );
        png_file(
            &p("g2.png"),
            4,
            1,
            C::Grayscale,
            D::Two,
            &[0b0001_1011],
            None,
            None,
        );
        assert_eq!(
            u8s(&decode_gray8(&p("g2.png"), ImageLimits::default()).unwrap()),
            [0, 85, 170, 255]
        );
        png_file(
            &p("g1.png"),
            8,
            1,
            C::Grayscale,
            D::One,
            &[0b1010_0000],
            None,
            None,
        );
        assert_eq!(
            u8s(&decode_gray8(&p("g1.png"), ImageLimits::default()).unwrap()),
            [255, 0, 255, 0, 0, 0, 0, 0]
        );
        png_file(
            &p("rgba.png"),
            1,
            1,
            C::Rgba,
            D::Eight,
            &[200, 100, 50, 0],
            None,
            None,
        );
        assert_eq!(
            u8s(&decode_gray8(&p("rgba.png"), ImageLimits::default()).unwrap()),
            [124]
        );
        let native = decode_native(&p("rgba.png"), ImageLimits::default()).unwrap();
        assert_eq!((native.channels(), u8s(&native)), (3, vec![200, 100, 50]));
        png_file(
            &p("p.png"),
            2,
            1,
            C::Indexed,
            D::Eight,
            &[0, 1],
            Some(&[200, 100, 50, 10, 20, 30]),
            Some(&[0]),
        );
        assert_eq!(
            u8s(&decode_gray8(&p("p.png"), ImageLimits::default()).unwrap()),
            [124, 18]
        );
        let native = decode_native(&p("p.png"), ImageLimits::default()).unwrap();
        assert_eq!(
            (native.channels(), u8s(&native)),
            (3, vec![200, 100, 50, 10, 20, 30])
        );
        png_file(
            &p("gt.png"),
            2,
            1,
            C::Grayscale,
            D::Eight,
            &[7, 9],
            None,
            Some(&[0, 7]),
        );
        assert_eq!(
            u8s(&decode_gray8(&p("gt.png"), ImageLimits::default()).unwrap()),
            [7, 9]
        );
        let native = decode_native(&p("gt.png"), ImageLimits::default()).unwrap();
        assert_eq!((native.channels(), u8s(&native)), (1, vec![7, 9]));
    }

    #[test]
    fn bad_files_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.png");
        std::fs::write(&text, "hello").unwrap();
        let e = decode_gray8(&text, ImageLimits::default())
            .unwrap_err()
            .message();
        assert!(
            e.contains("notes.png") && e.contains("not a PNG, JPEG, TIFF, BMP or WebP file"),
            "{e}"
        );
        let empty = dir.path().join("empty.jpg");
        std::fs::write(&empty, "").unwrap();
        let e = decode_native(&empty, ImageLimits::default())
            .unwrap_err()
            .message();
        assert!(e.contains("empty.jpg: the file is empty"), "{e}");
        let e = decode_gray8(&dir.path().join("absent.png"), ImageLimits::default())
            .unwrap_err()
            .message();
        assert!(e.contains("absent.png: image file not found"), "{e}");
        assert!(is_dicom(Path::new("a/B.DCM")) && !is_dicom(Path::new("a.dcm.png")));
        assert!(
            has_image_extension(Path::new("x.JPeG"))
                && has_image_extension(Path::new("x.TIF"))
                && has_image_extension(Path::new("x.webp"))
                && !has_image_extension(Path::new("x.txt"))
        );
    }

    trait U16ForTest {
        fn pixels_u16_for_test(&self) -> Vec<u16>;
    }
    impl U16ForTest for Image {
        fn pixels_u16_for_test(&self) -> Vec<u16> {
            match self.pixels() {
                ssl_plugin_api::Pixels::U16(v) => v.to_vec(),
                other => panic!("expected 16-bit pixels, got {other:?}"),
            }
        }
    }
}

#[cfg(all(test, feature = "testdata"))]
mod pillow_tests {
    use super::*;
    use crate::testdata::cxr::{rgb_pattern, write_jpeg_rgb8, write_png_rgb8};
    use std::process::Command;

    /// The project's Python (torch, Pillow), set up by scripts/setup-libtorch.sh.
    const PYTHON: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.deps/torch-venv/bin/python"
    );

    /// The standard output of `script` run by the project's Python with `args`.
    fn python(script: &str, args: &[&std::ffi::OsStr]) -> String {
        let out = Command::new(PYTHON)
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{PYTHON}: {e} (run scripts/setup-libtorch.sh)"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn from_hex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Pillow's `Image.open(f).convert(mode)` bytes of each file.
    fn pillow(mode: &str, files: &[&Path]) -> Vec<Vec<u8>> {
        let script = "import sys\nfrom PIL import Image\nfor f in sys.argv[2:]:\n    \
                      print(Image.open(f).convert(sys.argv[1]).tobytes().hex())";
        let mut args = vec![std::ffi::OsStr::new(mode)];
        args.extend(files.iter().map(|f| f.as_os_str()));
        python(script, &args).lines().map(from_hex).collect()
    }

    fn u8s(image: &Image) -> Vec<u8> {
        match image.pixels() {
            ssl_plugin_api::Pixels::U8(v) => v.to_vec(),
            other => panic!("expected 8-bit pixels, got {other:?}"),
        }
    }

    fn max_diff(a: &[u8], b: &[u8]) -> u8 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
    }

    #[test]
    fn grey_conversion_matches_pillow() {
        let dir = tempfile::tempdir().unwrap();
        let (png, jpg) = (dir.path().join("a.png"), dir.path().join("a.jpg"));
        let (w, h) = (37, 29);
        let rgb = rgb_pattern(5, w, h);
        write_png_rgb8(&png, w, h, &rgb).unwrap();
        write_jpeg_rgb8(&jpg, w, h, &rgb).unwrap();
        let expected = pillow("L", &[&png, &jpg]);
        let ours_png = decode_gray8(&png, ImageLimits::default()).unwrap();
        assert_eq!(
            (ours_png.width(), ours_png.height(), ours_png.channels()),
            (w, h, 1)
        );
        assert_eq!(
            u8s(&ours_png),
            expected[0],
            "PNG RGB → L must match Pillow exactly"
        );
        let ours_jpg = u8s(&decode_gray8(&jpg, ImageLimits::default()).unwrap());
        let diff = max_diff(&ours_jpg, &expected[1]);
        eprintln!("JPEG RGB → L: max difference from Pillow {diff}");
        assert!(diff <= 2, "JPEG grey differs from Pillow by {diff}");
        // The file's own channels: RGB as Pillow decodes it.
        let expected = pillow("RGB", &[&png, &jpg]);
        assert_eq!(
            u8s(&decode_native(&png, ImageLimits::default()).unwrap()),
            expected[0]
        );
        let native = decode_native(&jpg, ImageLimits::default()).unwrap();
        assert_eq!(native.channels(), 3);
        let diff = max_diff(&u8s(&native), &expected[1]);
        eprintln!("JPEG RGB: max difference from Pillow {diff}");
        assert!(diff <= 3, "JPEG RGB differs from Pillow by {diff}");
    }

    /// TIFF (8/16-bit grey, RGB; none, LZW, deflate, PackBits), BMP (grey, RGB, palette,
    /// 1-bit) and WebP (lossless RGB and RGBA, lossy) written by Pillow: our grey image equals
    /// Pillow's `convert("L")` exactly, lossy WebP within a mean of 1 grey level.
    #[test]
    fn tiff_bmp_and_webp_match_pillow() {
        let dir = tempfile::tempdir().unwrap();
        let script = r#"
import sys, numpy as np
from PIL import Image
d = sys.argv[1]
rng = np.random.default_rng(0)
h, w = 29, 37
y, x = np.mgrid[0:h, 0:w]
rgb = np.stack([(x * 7) % 256, (y * 9) % 256, ((x + y) * 5) % 256], -1)
rgb = np.clip(rgb + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
grey = np.ascontiguousarray(rgb[..., 1])
g16 = (x * 13 + y * 7).astype(np.uint16)  # 0..~670: both sides of 255
def save(name, img, **kw):
    p = f"{d}/{name}"
    img.save(p, **kw)
    print(p, Image.open(p).convert("L").tobytes().hex())
save("grey8.tif", Image.fromarray(grey))
save("grey8_lzw.tif", Image.fromarray(grey), compression="tiff_lzw")
save("grey8_deflate.tif", Image.fromarray(grey), compression="tiff_adobe_deflate")
save("grey16.tif", Image.fromarray(g16))
save("rgb8_packbits.tif", Image.fromarray(rgb), compression="packbits")
save("grey8.bmp", Image.fromarray(grey))
save("rgb8.bmp", Image.fromarray(rgb))
save("palette.bmp", Image.fromarray(rgb).quantize(16))
save("bilevel.bmp", Image.fromarray(grey).convert("1"))
save("rgb_lossless.webp", Image.fromarray(rgb), lossless=True)
save("rgba_lossless.webp", Image.fromarray(np.dstack([rgb, grey])), lossless=True)
save("rgb_lossy.webp", Image.fromarray(rgb), quality=80)
"#;
        let listing = python(script, &[dir.path().as_os_str()]);
        let mut seen = 0;
        for line in listing.lines() {
            let (file, hex) = line.split_once(' ').unwrap();
            let theirs = from_hex(hex);
            let path = Path::new(file);
            let ours = decode_gray8(path, ImageLimits::default())
                .unwrap_or_else(|e| panic!("{file}: {}", e.message()));
            assert_eq!((ours.width(), ours.height()), (37, 29), "{file}");
            let ours = u8s(&ours);
            let mad = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| a.abs_diff(*b) as f64)
                .sum::<f64>()
                / theirs.len() as f64;
            eprintln!(
                "{file}: mean abs difference from Pillow {mad:.4}, max {}",
                max_diff(&ours, &theirs)
            );
            if file.ends_with("lossy.webp") {
                assert!(mad <= 1.0, "{file}: mean abs difference {mad} from Pillow");
            } else {
                assert_eq!(ours, theirs, "{file}: differs from Pillow");
            }
            // The native decode keeps grey or RGB, 16-bit grey as 16 bits.
            let native = decode_native(path, ImageLimits::default()).unwrap();
            assert!(matches!(native.channels(), 1 | 3), "{file}");
            seen += 1;
        }
        assert_eq!(seen, 12);
    }

    #[test]
    fn truncated_and_corrupt_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (png, jpg) = (dir.path().join("t.png"), dir.path().join("t.jpg"));
        let rgb = rgb_pattern(1, 64, 64);
        write_png_rgb8(&png, 64, 64, &rgb).unwrap();
        write_jpeg_rgb8(&jpg, 64, 64, &rgb).unwrap();
        for path in [&png, &jpg] {
            let bytes = std::fs::read(path).unwrap();
            std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
            let e = decode_gray8(path, ImageLimits::default())
                .unwrap_err()
                .message();
            assert!(e.starts_with(&path.display().to_string()), "{e}");
            assert!(e.contains("invalid"), "{e}");
            assert!(decode_native(path, ImageLimits::default()).is_err());
            // Corrupt: valid signature, garbage after it.
            let mut garbage = bytes[..8].to_vec();
            garbage.extend(std::iter::repeat_n(0x5a, 200));
            std::fs::write(path, &garbage).unwrap();
            let e = decode_gray8(path, ImageLimits::default())
                .unwrap_err()
                .message();
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
    }
}

/// `max_image_pixels`: hostile headers are refused before any pixel buffer is allocated.
#[cfg(all(test, feature = "testdata"))]
mod limit_tests {
    use super::*;
    use crate::testdata::dicom::{dicom_bytes, DicomSpec, TransferSyntax};

    /// A grey 8-bit PNG whose header claims `width × height` (its data is one short row).
    fn png_claiming(width: u32, height: u32) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            let mut crc = flate2::Crc::new();
            crc.update(kind);
            crc.update(data);
            out.extend_from_slice(&crc.sum().to_be_bytes());
        }
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut zlib, &[0; 64]).unwrap();
        let mut out = PNG_SIGNATURE.to_vec();
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &zlib.finish().unwrap());
        chunk(&mut out, b"IEND", &[]);
        out
    }

    /// A grey baseline JPEG whose frame header claims `width × height` (its scan is 8 × 8).
    fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 90)
            .encode(&[128; 64], 8, 8, jpeg_encoder::ColorType::Luma)
            .unwrap();
        let sof = out.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        out[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        out[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        out
    }

    /// A DICOM file (explicit VR little endian) whose US attribute (0028,`element`) is
    /// patched to `value`.
    fn patch_us(mut bytes: Vec<u8>, element: u8, value: u16) -> Vec<u8> {
        let tag = [0x28, 0x00, element, 0x00, b'U', b'S', 2, 0];
        let at = bytes.windows(8).position(|w| w == tag).unwrap() + 8;
        bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
        bytes
    }

    /// A 4 × 4 DICOM whose Rows and Columns claim 65,535 × 65,535 (the most US allows).
    fn dicom_claiming_max() -> Vec<u8> {
        let small = dicom_bytes(&DicomSpec::gray8(4, 4, vec![7; 16])).unwrap();
        patch_us(patch_us(small, 0x10, u16::MAX), 0x11, u16::MAX)
    }

    /// A 24-bit BMP whose header claims `width × height` (no pixel data follows).
    fn bmp_claiming(width: i32, height: i32) -> Vec<u8> {
        let mut b = b"BM".to_vec();
        for v in [64u32, 0, 54, 40] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&width.to_le_bytes());
        b.extend_from_slice(&height.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&24u16.to_le_bytes());
        b.extend_from_slice(&[0u8; 24]);
        b.extend_from_slice(&[0u8; 10]);
        b
    }

    /// An uncompressed 8-bit grey TIFF whose IFD claims `width × height` in one strip.
    fn tiff_claiming(width: u32, height: u32) -> Vec<u8> {
        let mut b = b"II*\0".to_vec();
        b.extend_from_slice(&8u32.to_le_bytes());
        // (tag, type: 3 SHORT / 4 LONG, value)
        let entries: [(u16, u16, u32); 8] = [
            (256, 4, width),
            (257, 4, height),
            (258, 3, 8),
            (259, 3, 1),
            (262, 3, 1),
            (273, 4, 200),
            (278, 4, height),
            (279, 4, 16),
        ];
        b.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        for (tag, kind, value) in entries {
            b.extend_from_slice(&tag.to_le_bytes());
            b.extend_from_slice(&kind.to_le_bytes());
            b.extend_from_slice(&1u32.to_le_bytes());
            if kind == 3 {
                b.extend_from_slice(&(value as u16).to_le_bytes());
                b.extend_from_slice(&[0, 0]);
            } else {
                b.extend_from_slice(&value.to_le_bytes());
            }
        }
        b.extend_from_slice(&0u32.to_le_bytes());
        b.resize(216, 0);
        b
    }

    /// A lossless WebP (VP8L) whose header claims `width × height` (at most 16384 each).
    fn webp_claiming(width: u32, height: u32) -> Vec<u8> {
        let bits = (width - 1) | ((height - 1) << 14);
        let mut vp8l = vec![0x2f];
        vp8l.extend_from_slice(&bits.to_le_bytes());
        vp8l.extend_from_slice(&[0u8; 11]);
        let mut b = b"RIFF".to_vec();
        b.extend_from_slice(&(4 + 8 + vp8l.len() as u32).to_le_bytes());
        b.extend_from_slice(b"WEBPVP8L");
        b.extend_from_slice(&(vp8l.len() as u32).to_le_bytes());
        b.extend_from_slice(&vp8l);
        b
    }

    /// The hostile files, written to `dir`: (path, what the message must name).
    fn hostile_files(dir: &Path) -> Vec<(std::path::PathBuf, &'static str)> {
        let files = [
            (
                "huge.bmp",
                bmp_claiming(60_000, 60_000),
                "60000 columns × 60000 rows",
            ),
            (
                "huge.tif",
                tiff_claiming(100_000, 100_000),
                "100000 columns × 100000 rows",
            ),
            (
                "huge.webp",
                webp_claiming(16_000, 16_000),
                "16000 columns × 16000 rows",
            ),
            (
                "huge.png",
                png_claiming(100_000, 100_000),
                "100000 columns × 100000 rows",
            ),
            (
                "huge.jpg",
                jpeg_claiming(65_000, 65_000),
                "65000 columns × 65000 rows",
            ),
            (
                "huge.dcm",
                dicom_claiming_max(),
                "65535 rows × 65535 columns × 1 frames",
            ),
        ];
        files
            .into_iter()
            .map(|(name, bytes, claim)| {
                let path = dir.join(name);
                std::fs::write(&path, bytes).unwrap();
                (path, claim)
            })
            .collect()
    }

    #[test]
    fn huge_headers_are_refused_naming_the_file_and_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        for (path, claim) in hostile_files(dir.path()) {
            for result in [
                decode_gray8(&path, ImageLimits::default()),
                decode_native(&path, ImageLimits::default()),
            ] {
                let e = result.unwrap_err().message();
                assert!(e.contains(&path.display().to_string()), "{e}");
                assert!(e.contains(claim), "{e}");
                assert!(e.contains("max_image_pixels = 67108864"), "{e}");
            }
        }
    }

    /// The same refusals in a child process (this test binary, running only
    /// `child_decodes_hostile_files`), whose peak resident memory must stay under 200 MB:
    /// without the checks the decoders would allocate gigabytes.
    #[test]
    fn huge_headers_are_refused_with_little_memory() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "image_file::limit_tests::child_decodes_hostile_files",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SSL_LIMITS_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The line follows the test harness's "test ... " on the same line.
        let peak_kb: u64 = stdout
            .split("VmHWM:")
            .nth(1)
            .and_then(|v| v.lines().next())
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in the child's output: {stdout}"));
        assert!(
            peak_kb < 200 * 1024,
            "peak resident memory {peak_kb} kB refusing the hostile files"
        );
    }

    #[test]
    fn child_decodes_hostile_files() {
        if std::env::var_os("SSL_LIMITS_CHILD").is_none() {
            return; // run by huge_headers_are_refused_with_little_memory only
        }
        let dir = tempfile::tempdir().unwrap();
        for (path, _) in hostile_files(dir.path()) {
            assert!(decode_gray8(&path, ImageLimits::default()).is_err());
            assert!(decode_native(&path, ImageLimits::default()).is_err());
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let peak = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        println!("{peak}");
    }

    #[test]
    fn the_dicom_frame_count_counts() {
        let spec = DicomSpec::gray8(4, 4, vec![3; 32]); // two frames
        let bytes = dicom_bytes(&spec).unwrap();
        let limits = ImageLimits { max_pixels: 800 };
        assert!(crate::dicom::decode_dicom_bytes(&bytes, limits).is_ok());
        // Number of Frames "2 " → "99": 4 × 4 × 99 = 1584 pixels > 800.
        let mut claim = bytes.clone();
        let is = claim
            .windows(2)
            .enumerate()
            .filter(|(_, w)| *w == b"2 ")
            .map(|(i, _)| i)
            .find(|&i| claim[i - 4..i - 2] == *b"IS")
            .expect("Number of Frames (IS) in the file");
        claim[is..is + 2].copy_from_slice(b"99");
        let e = crate::dicom::decode_dicom_bytes(&claim, limits).unwrap_err();
        assert!(
            e.contains("4 rows × 4 columns × 99 frames × 1 samples per pixel = 1584 pixels"),
            "{e}"
        );
        assert!(e.contains("max_image_pixels = 800"), "{e}");
    }

    #[test]
    fn a_deflated_data_set_that_inflates_past_the_limit_is_refused() {
        let side = 4200; // 17.6 M pixels, more than 1000 pixels × 8 bytes + 16 MiB
        let spec = DicomSpec {
            transfer_syntax: TransferSyntax::DeflatedExplicitVrLittleEndian,
            ..DicomSpec::gray8(side, side, vec![0; (side * side) as usize])
        };
        let bytes = dicom_bytes(&spec).unwrap();
        assert!(bytes.len() < 1 << 20, "{} bytes", bytes.len());
        let e =
            crate::dicom::decode_dicom_bytes(&bytes, ImageLimits { max_pixels: 1000 }).unwrap_err();
        assert!(e.contains("inflates to more than"), "{e}");
        assert!(e.contains("max_image_pixels = 1000"), "{e}");
        let image = crate::dicom::decode_dicom_bytes(&bytes, ImageLimits::default()).unwrap();
        assert_eq!((image.width(), image.height()), (side, side));
    }

    #[test]
    fn the_limit_is_a_dataset_parameter() {
        let params = Params::from_json(r#"{"max_image_pixels": 1234}"#).unwrap();
        let limits = ImageLimits::from_params(&params, "NIHCXR").unwrap();
        assert_eq!(limits.max_pixels, 1234);
        assert_eq!(
            ImageLimits::from_params(&Params::default(), "NIHCXR").unwrap(),
            ImageLimits::default()
        );
        let zero = Params::from_json(r#"{"max_image_pixels": 0}"#).unwrap();
        let e = ImageLimits::from_params(&zero, "NIHCXR")
            .unwrap_err()
            .message();
        assert!(e.contains("NIHCXR: parameter `max_image_pixels`"), "{e}");
        let text = Params::from_json(r#"{"max_image_pixels": "many"}"#).unwrap();
        let e = ImageLimits::from_params(&text, "NIHCXR")
            .unwrap_err()
            .message();
        assert!(
            e.contains("NIHCXR") && e.contains("max_image_pixels"),
            "{e}"
        );
    }
}
