//! Writers of real DICOM Part-10 files (128-byte preamble, `DICM`, file meta group, data set)
//! from a pixel array, in the transfer syntaxes the chest X-ray datasets meet: uncompressed
//! (implicit/explicit VR little endian, explicit VR big endian, deflated), JPEG baseline and
//! RLE lossless (encapsulated: basic offset table item, fragments, sequence delimiter).
//!
//! The bytes are written here, element by element, independently of the dicom-rs reader that
//! `dicom.rs` uses, so the tests check one against the other (and against pydicom).
//!
//! ```ignore
//! write_dicom(&dir.join("1.dcm"), &DicomSpec::gray8(256, 256, vec![1; 256 * 256]))?;
//! ```

use ssl_plugin_api::{bail, PluginError, Result};
use std::io::Write;
use std::path::Path;

/// Photometric Interpretation (0028,0004) of the written image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Photometric {
    /// Grey, 0 is white (the decoder inverts it).
    Monochrome1,
    /// Grey, 0 is black.
    Monochrome2,
    /// 3 samples per pixel, `pixels` interleaved `R, G, B`; written as `YBR_FULL_422` when JPEG
    /// compressed (the JPEG holds YCbCr, as DICOM requires).
    Rgb,
}

/// Transfer syntax of the written data set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferSyntax {
    /// 1.2.840.10008.1.2
    ImplicitVrLittleEndian,
    /// 1.2.840.10008.1.2.1
    ExplicitVrLittleEndian,
    /// 1.2.840.10008.1.2.2 (retired, still met in old archives).
    ExplicitVrBigEndian,
    /// 1.2.840.10008.1.2.1.99: explicit VR little endian data set, raw-deflated after the meta group.
    DeflatedExplicitVrLittleEndian,
    /// 1.2.840.10008.1.2.4.50 (the Kaggle RSNA files): 8-bit unsigned only, quality 95; a
    /// single frame is split over 2 fragments, several frames take a fragment each.
    JpegBaseline,
    /// 1.2.840.10008.1.2.5: 8 or 16 bits allocated, PackBits segments per byte plane and row.
    RleLossless,
    /// Any other UID (e.g. JPEG 2000 `1.2.840.10008.1.2.4.90`, or an unknown one): an explicit
    /// VR little endian data set whose encapsulated Pixel Data holds the uncompressed bytes as
    /// one fragment, for testing how readers reject it.
    Encapsulated(String),
}

impl TransferSyntax {
    /// The transfer syntax UID.
    pub fn uid(&self) -> &str {
        match self {
            TransferSyntax::ImplicitVrLittleEndian => "1.2.840.10008.1.2",
            TransferSyntax::ExplicitVrLittleEndian => "1.2.840.10008.1.2.1",
            TransferSyntax::ExplicitVrBigEndian => "1.2.840.10008.1.2.2",
            TransferSyntax::DeflatedExplicitVrLittleEndian => "1.2.840.10008.1.2.1.99",
            TransferSyntax::JpegBaseline => "1.2.840.10008.1.2.4.50",
            TransferSyntax::RleLossless => "1.2.840.10008.1.2.5",
            TransferSyntax::Encapsulated(uid) => uid,
        }
    }
}

/// What to write: `pixels` holds `frames × height × width × samples` values (row-major,
/// samples interleaved; the number of frames is inferred), each within the range of
/// `bits_allocated` bits (signed or not). Values may use bits above `bits_stored` (readers
/// ignore them), which tests use to check that readers do.
#[derive(Clone, Debug)]
pub struct DicomSpec {
    /// Columns (0028,0011).
    pub width: u32,
    /// Rows (0028,0010).
    pub height: u32,
    /// Bits Allocated (0028,0100): 8 or 16.
    pub bits_allocated: u16,
    /// Bits Stored (0028,0101), 1..=bits_allocated; High Bit is `bits_stored - 1`.
    pub bits_stored: u16,
    /// Pixel Representation (0028,0103): two's complement when true.
    pub signed: bool,
    /// Photometric Interpretation.
    pub photometric: Photometric,
    /// Transfer syntax of the data set.
    pub transfer_syntax: TransferSyntax,
    /// The sample values.
    pub pixels: Vec<i32>,
}

impl DicomSpec {
    /// An 8-bit unsigned MONOCHROME2 image, explicit VR little endian.
    pub fn gray8(width: u32, height: u32, pixels: Vec<i32>) -> Self {
        DicomSpec {
            width,
            height,
            bits_allocated: 8,
            bits_stored: 8,
            signed: false,
            photometric: Photometric::Monochrome2,
            transfer_syntax: TransferSyntax::ExplicitVrLittleEndian,
            pixels,
        }
    }

    /// A 16-bit unsigned MONOCHROME2 image (`bits_stored` of them used), explicit VR little
    /// endian.
    pub fn gray16(width: u32, height: u32, bits_stored: u16, pixels: Vec<i32>) -> Self {
        DicomSpec {
            bits_allocated: 16,
            bits_stored,
            ..DicomSpec::gray8(width, height, pixels)
        }
    }

    fn samples(&self) -> usize {
        if self.photometric == Photometric::Rgb {
            3
        } else {
            1
        }
    }
}

/// Writes `spec` as a DICOM Part-10 file at `path` (see [`dicom_bytes`]).
pub fn write_dicom(path: &Path, spec: &DicomSpec) -> Result<()> {
    let bytes = dicom_bytes(spec)?;
    std::fs::write(path, bytes)
        .map_err(|e| PluginError::msg(format!("{}: cannot write: {e}", path.display())))
}

const SOP_CLASS_CR: &str = "1.2.840.10008.5.1.4.1.1.1";
const SOP_INSTANCE: &str = "1.2.826.0.1.3680043.10.1561.1.1";
const IMPLEMENTATION_CLASS: &str = "1.2.826.0.1.3680043.10.1561.0";

/// The bytes of a DICOM Part-10 file holding `spec`; errors on an inconsistent spec.
pub fn dicom_bytes(spec: &DicomSpec) -> Result<Vec<u8>> {
    let frames = check(spec)?;
    let ts = &spec.transfer_syntax;

    let mut meta = Writer::new(true, false);
    meta.element(0x0002, 0x0001, b"OB", &[0, 1]);
    meta.string(0x0002, 0x0002, b"UI", SOP_CLASS_CR);
    meta.string(0x0002, 0x0003, b"UI", SOP_INSTANCE);
    meta.string(0x0002, 0x0010, b"UI", ts.uid());
    meta.string(0x0002, 0x0012, b"UI", IMPLEMENTATION_CLASS);
    meta.string(0x0002, 0x0013, b"SH", "SSLHOST_TEST");

    let mut file = vec![0u8; 128];
    file.extend_from_slice(b"DICM");
    let mut group_length = Writer::new(true, false);
    group_length.element(
        0x0002,
        0x0000,
        b"UL",
        &(meta.buf.len() as u32).to_le_bytes(),
    );
    file.extend_from_slice(&group_length.buf);
    file.extend_from_slice(&meta.buf);

    let (explicit, big_endian) = match ts {
        TransferSyntax::ImplicitVrLittleEndian => (false, false),
        TransferSyntax::ExplicitVrBigEndian => (true, true),
        _ => (true, false),
    };
    let mut data = Writer::new(explicit, big_endian);
    let photometric = match (&spec.photometric, ts) {
        (Photometric::Monochrome1, _) => "MONOCHROME1",
        (Photometric::Monochrome2, _) => "MONOCHROME2",
        (Photometric::Rgb, TransferSyntax::JpegBaseline) => "YBR_FULL_422",
        (Photometric::Rgb, _) => "RGB",
    };
    data.string(0x0008, 0x0016, b"UI", SOP_CLASS_CR);
    data.string(0x0008, 0x0018, b"UI", SOP_INSTANCE);
    data.string(0x0008, 0x0060, b"CS", "CR");
    data.us(0x0028, 0x0002, spec.samples() as u16);
    data.string(0x0028, 0x0004, b"CS", photometric);
    if spec.samples() == 3 {
        data.us(0x0028, 0x0006, 0);
    }
    if frames > 1 {
        data.string(0x0028, 0x0008, b"IS", &frames.to_string());
    }
    data.us(0x0028, 0x0010, spec.height as u16);
    data.us(0x0028, 0x0011, spec.width as u16);
    data.us(0x0028, 0x0100, spec.bits_allocated);
    data.us(0x0028, 0x0101, spec.bits_stored);
    data.us(0x0028, 0x0102, spec.bits_stored - 1);
    data.us(0x0028, 0x0103, spec.signed as u16);

    let frame_len = spec.pixels.len() / frames;
    let frames_of = |f: usize| &spec.pixels[f * frame_len..(f + 1) * frame_len];
    match ts {
        TransferSyntax::JpegBaseline => {
            let mut fragments = Vec::new();
            for f in 0..frames {
                let jpeg = encode_jpeg(spec, frames_of(f))?;
                if frames == 1 {
                    let half = (jpeg.len() / 2) & !1;
                    fragments.push(jpeg[..half].to_vec());
                    fragments.push(jpeg[half..].to_vec());
                } else {
                    fragments.push(jpeg);
                }
            }
            data.encapsulated(&fragments, frames > 1);
        }
        TransferSyntax::RleLossless => {
            let fragments: Vec<Vec<u8>> = (0..frames)
                .map(|f| encode_rle(spec, frames_of(f)))
                .collect();
            data.encapsulated(&fragments, frames > 1);
        }
        TransferSyntax::Encapsulated(_) => {
            let raw = native_bytes(spec, false);
            data.encapsulated(&[raw], false);
        }
        _ => {
            let vr = if spec.bits_allocated == 8 {
                b"OB"
            } else {
                b"OW"
            };
            let raw = native_bytes(spec, big_endian);
            data.element(0x7FE0, 0x0010, vr, &raw);
        }
    }

    if *ts == TransferSyntax::DeflatedExplicitVrLittleEndian {
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&data.buf)?;
        file.extend_from_slice(&encoder.finish()?);
    } else {
        file.extend_from_slice(&data.buf);
    }
    Ok(file)
}

/// Validates the spec; returns the number of frames.
fn check(spec: &DicomSpec) -> Result<usize> {
    if spec.width == 0 || spec.height == 0 || spec.width > 65535 || spec.height > 65535 {
        bail!(
            "DicomSpec: width and height must be 1..=65535, got {}×{}",
            spec.width,
            spec.height
        );
    }
    if spec.bits_allocated != 8 && spec.bits_allocated != 16 {
        bail!(
            "DicomSpec: bits_allocated must be 8 or 16, got {}",
            spec.bits_allocated
        );
    }
    if spec.bits_stored == 0 || spec.bits_stored > spec.bits_allocated {
        bail!(
            "DicomSpec: bits_stored must be 1..={}, got {}",
            spec.bits_allocated,
            spec.bits_stored
        );
    }
    let frame = spec.width as usize * spec.height as usize * spec.samples();
    if spec.pixels.is_empty() || !spec.pixels.len().is_multiple_of(frame) {
        bail!(
            "DicomSpec: {} pixel values are not a whole number of {}×{}×{} frames",
            spec.pixels.len(),
            spec.width,
            spec.height,
            spec.samples()
        );
    }
    let bits = spec.bits_allocated as u32;
    let (lo, hi) = if spec.signed {
        (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
    } else {
        (0, (1i64 << bits) - 1)
    };
    if let Some((i, v)) = spec
        .pixels
        .iter()
        .enumerate()
        .find(|(_, &v)| (v as i64) < lo || (v as i64) > hi)
    {
        bail!("DicomSpec: pixel #{i} = {v} is outside {lo}..={hi} ({bits} bits allocated)");
    }
    if spec.transfer_syntax == TransferSyntax::JpegBaseline
        && (spec.bits_allocated != 8 || spec.bits_stored != 8 || spec.signed)
    {
        bail!(
            "DicomSpec: JPEG baseline needs 8-bit unsigned samples (8 bits allocated and stored)"
        );
    }
    Ok(spec.pixels.len() / frame)
}

/// The samples as stored uncompressed, two's complement in `bits_allocated` bits.
fn native_bytes(spec: &DicomSpec, big_endian: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(spec.pixels.len() * 2);
    for &v in &spec.pixels {
        if spec.bits_allocated == 8 {
            out.push(v as u8);
        } else if big_endian {
            out.extend_from_slice(&(v as u16).to_be_bytes());
        } else {
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
    }
    out
}

fn encode_jpeg(spec: &DicomSpec, frame: &[i32]) -> Result<Vec<u8>> {
    let bytes: Vec<u8> = frame.iter().map(|&v| v as u8).collect();
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, 95);
    let color = if spec.samples() == 3 {
        encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_1);
        jpeg_encoder::ColorType::Rgb
    } else {
        jpeg_encoder::ColorType::Luma
    };
    encoder
        .encode(&bytes, spec.width as u16, spec.height as u16, color)
        .map_err(|e| PluginError::msg(format!("JPEG encoding failed: {e}")))?;
    Ok(out)
}

/// One RLE fragment (PS3.5 G): a 64-byte header, then a PackBits segment per sample and
/// byte plane (most significant byte first), each row encoded separately.
fn encode_rle(spec: &DicomSpec, frame: &[i32]) -> Vec<u8> {
    let samples = spec.samples();
    let bytes = spec.bits_allocated as usize / 8;
    let width = spec.width as usize;
    let mut segments = Vec::new();
    for sample in 0..samples {
        for byte in (0..bytes).rev() {
            let plane: Vec<u8> = frame
                .iter()
                .skip(sample)
                .step_by(samples)
                .map(|&v| ((v as u32) >> (8 * byte)) as u8)
                .collect();
            let mut segment = Vec::new();
            for row in plane.chunks(width) {
                packbits(row, &mut segment);
            }
            if segment.len() % 2 == 1 {
                segment.push(0x80); // PackBits no-op, pads to an even length
            }
            segments.push(segment);
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(&(segments.len() as u32).to_le_bytes());
    let mut offset = 64u32;
    for i in 0..15 {
        if let Some(segment) = segments.get(i) {
            out.extend_from_slice(&offset.to_le_bytes());
            offset += segment.len() as u32;
        } else {
            out.extend_from_slice(&0u32.to_le_bytes());
        }
    }
    for segment in segments {
        out.extend_from_slice(&segment);
    }
    out
}

/// PackBits: runs of 2..=128 equal bytes as `257 - n, byte`; other bytes as literals of
/// up to 128 (`n - 1, bytes...`).
fn packbits(data: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < data.len() {
        let mut run = 1;
        while i + run < data.len() && run < 128 && data[i + run] == data[i] {
            run += 1;
        }
        if run >= 2 {
            out.push((257 - run) as u8);
            out.push(data[i]);
            i += run;
            continue;
        }
        let start = i;
        i += 1;
        while i < data.len() && i - start < 128 && !(i + 1 < data.len() && data[i] == data[i + 1]) {
            i += 1;
        }
        out.push((i - start - 1) as u8);
        out.extend_from_slice(&data[start..i]);
    }
}

/// Data element encoder for one transfer syntax.
struct Writer {
    buf: Vec<u8>,
    explicit: bool,
    big_endian: bool,
}

impl Writer {
    fn new(explicit: bool, big_endian: bool) -> Self {
        Writer {
            buf: Vec::new(),
            explicit,
            big_endian,
        }
    }

    fn u16(&mut self, v: u16) {
        let b = if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.buf.extend_from_slice(&b);
    }

    fn u32(&mut self, v: u32) {
        let b = if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.buf.extend_from_slice(&b);
    }

    fn header(&mut self, group: u16, element: u16, vr: &[u8; 2], length: u32) {
        self.u16(group);
        self.u16(element);
        if !self.explicit {
            self.u32(length);
        } else if matches!(vr, b"OB" | b"OW" | b"OF" | b"SQ" | b"UT" | b"UN") {
            self.buf.extend_from_slice(vr);
            self.buf.extend_from_slice(&[0, 0]);
            self.u32(length);
        } else {
            self.buf.extend_from_slice(vr);
            self.u16(length as u16);
        }
    }

    /// An element whose value is already encoded; odd values are padded with a zero byte.
    fn element(&mut self, group: u16, element: u16, vr: &[u8; 2], value: &[u8]) {
        let padded = value.len() + value.len() % 2;
        self.header(group, element, vr, padded as u32);
        self.buf.extend_from_slice(value);
        if value.len() % 2 == 1 {
            self.buf.push(0);
        }
    }

    /// A text element, padded to an even length with NUL (UI) or space (others).
    fn string(&mut self, group: u16, element: u16, vr: &[u8; 2], text: &str) {
        let mut value = text.as_bytes().to_vec();
        if value.len() % 2 == 1 {
            value.push(if vr == b"UI" { 0 } else { b' ' });
        }
        self.element(group, element, vr, &value);
    }

    fn us(&mut self, group: u16, element: u16, v: u16) {
        let b = if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.element(group, element, b"US", &b);
    }

    /// Encapsulated Pixel Data: undefined length, a basic offset table item (empty, or one
    /// offset per fragment when `offsets`), the fragment items, a sequence delimiter.
    fn encapsulated(&mut self, fragments: &[Vec<u8>], offsets: bool) {
        self.header(0x7FE0, 0x0010, b"OB", 0xFFFF_FFFF);
        let mut table = Vec::new();
        if offsets {
            let mut at = 0u32;
            for fragment in fragments {
                table.extend_from_slice(&at.to_le_bytes());
                at += 8 + (fragment.len() + fragment.len() % 2) as u32;
            }
        }
        self.item(&table);
        for fragment in fragments {
            self.item(fragment);
        }
        self.u16(0xFFFE);
        self.u16(0xE0DD);
        self.u32(0);
    }

    fn item(&mut self, value: &[u8]) {
        self.u16(0xFFFE);
        self.u16(0xE000);
        self.u32((value.len() + value.len() % 2) as u32);
        self.buf.extend_from_slice(value);
        if value.len() % 2 == 1 {
            self.buf.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PackBits decoding, to check the encoder round-trips.
    fn unpackbits(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < data.len() {
            let n = data[i] as i8;
            i += 1;
            if n >= 0 {
                out.extend_from_slice(&data[i..i + n as usize + 1]);
                i += n as usize + 1;
            } else if n != -128 {
                out.extend(std::iter::repeat_n(data[i], (1 - n as i32) as usize));
                i += 1;
            }
        }
        out
    }

    #[test]
    fn packbits_round_trips_runs_and_literals() {
        let mut data: Vec<u8> = (0..300).map(|i| (i * 7 % 256) as u8).collect();
        data.extend(std::iter::repeat_n(9u8, 200));
        data.extend([1, 2, 2, 3, 3, 3, 4]);
        let mut packed = Vec::new();
        packbits(&data, &mut packed);
        assert!(packed.len() < data.len());
        assert_eq!(unpackbits(&packed), data);
    }

    #[test]
    fn file_layout_has_preamble_magic_and_group_length() {
        let bytes = dicom_bytes(&DicomSpec::gray8(3, 1, vec![1, 2, 3])).unwrap();
        assert_eq!(&bytes[128..132], b"DICM");
        // (0002,0000) UL 4 <length of the rest of group 2>
        assert_eq!(&bytes[132..140], &[2, 0, 0, 0, b'U', b'L', 4, 0]);
        let group_len = u32::from_le_bytes(bytes[140..144].try_into().unwrap()) as usize;
        let rest = &bytes[144 + group_len..];
        assert_eq!(
            &rest[..2],
            &[0x08, 0x00],
            "the data set starts after group 2"
        );
        // Odd-length pixel data is padded to an even length.
        assert_eq!(&bytes[bytes.len() - 4..], &[1, 2, 3, 0]);
    }

    #[test]
    fn inconsistent_specs_are_errors() {
        let mut spec = DicomSpec::gray8(2, 2, vec![0, 1, 2]);
        assert!(dicom_bytes(&spec)
            .unwrap_err()
            .message()
            .contains("whole number"));
        spec.pixels = vec![0, 1, 2, 256];
        assert!(dicom_bytes(&spec)
            .unwrap_err()
            .message()
            .contains("pixel #3 = 256"));
        let mut spec = DicomSpec::gray16(2, 2, 12, vec![0; 4]);
        spec.transfer_syntax = TransferSyntax::JpegBaseline;
        assert!(dicom_bytes(&spec)
            .unwrap_err()
            .message()
            .contains("JPEG baseline"));
    }
}
