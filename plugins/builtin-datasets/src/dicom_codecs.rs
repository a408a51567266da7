//! Decoders of the compressed DICOM transfer syntaxes other than RLE, each through the library
//! that pydicom's own plugins use, so that a file decodes as it does in the original:
//!
//! - the JPEG family (baseline 8-bit, extended 12-bit, lossless process 14 and its selection
//!   value 1) through libjpeg-turbo 3 (`turbojpeg-sys`, built from its bundled source): 2–16
//!   bit samples, Huffman or arithmetic coding, sequential or progressive;
//! - JPEG-LS (lossless and near-lossless) through CharLS (`charls`);
//! - JPEG 2000 (lossless and lossy; a bare codestream or a JP2 file) through OpenJPEG
//!   (`jpeg2k` with `openjpeg-sys`), in strict mode, so that a truncated codestream is an
//!   error and not a partly grey image.
//!
//! Every frame header is checked against the DICOM attributes (Rows, Columns, Samples per
//! Pixel, Bits Allocated) before the decoder allocates, and the DICOM header's dimensions have
//! already been checked against `max_image_pixels`; the decoders therefore never allocate more
//! than the image the header declares. dicom-rs' own JPEG-LS and JPEG 2000 adapters wrap the
//! same two libraries, but refuse a large JPEG 2000 frame compressed more than 64:1 (legitimate
//! for lossy chest X-rays) and decode 12-bit extended JPEG not at all, hence this module.

use std::ffi::CStr;
use std::os::raw::c_int;

/// The transfer syntaxes decoded here, with their codec.
const SYNTAXES: [(&str, Codec); 8] = [
    ("1.2.840.10008.1.2.4.50", Codec::Jpeg),
    ("1.2.840.10008.1.2.4.51", Codec::Jpeg),
    ("1.2.840.10008.1.2.4.57", Codec::Jpeg),
    ("1.2.840.10008.1.2.4.70", Codec::Jpeg),
    ("1.2.840.10008.1.2.4.80", Codec::JpegLs),
    ("1.2.840.10008.1.2.4.81", Codec::JpegLs),
    ("1.2.840.10008.1.2.4.90", Codec::Jpeg2000),
    ("1.2.840.10008.1.2.4.91", Codec::Jpeg2000),
];

/// The most tiles a JPEG 2000 codestream may declare: OpenJPEG allocates a coding-parameter
/// record per tile from the SIZ marker alone, so a 1×1 tile size on a large image would take
/// gigabytes. Real files use one tile or tiles of 128 px and more (4096 tiles of 128 px cover
/// 8192 × 8192).
const MAX_J2K_TILES: u64 = 4096;

/// The most scans a JPEG stream may hold (libjpeg-turbo's guard against progressive streams
/// built to take minutes; real progressive JPEGs have about ten).
const MAX_JPEG_SCANS: c_int = 500;

/// The codec of a compressed transfer syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Codec {
    /// ISO 10918 (JPEG), through libjpeg-turbo.
    Jpeg,
    /// ISO 14495 (JPEG-LS), through CharLS.
    JpegLs,
    /// ISO 15444 (JPEG 2000), through OpenJPEG.
    Jpeg2000,
}

impl Codec {
    /// The codec that decodes transfer syntax `uid`, if this module does.
    pub(crate) fn of(uid: &str) -> Option<Codec> {
        SYNTAXES
            .iter()
            .find(|(known, _)| *known == uid)
            .map(|&(_, codec)| codec)
    }

    fn library(self) -> &'static str {
        match self {
            Codec::Jpeg => "libjpeg-turbo",
            Codec::JpegLs => "CharLS",
            Codec::Jpeg2000 => "OpenJPEG",
        }
    }
}

/// What the DICOM attributes say the frame is.
pub(crate) struct Expected {
    pub rows: u16,
    pub cols: u16,
    pub samples: u16,
    pub bits_allocated: u16,
}

/// A decoded frame: `width × height × samples` samples of `bytes_per_sample` bytes (1 when the
/// codestream's precision is at most 8 bits, else 2, little-endian, two's complement for
/// signed JPEG 2000 data), pixel-interleaved unless `planar`.
pub(crate) struct Frame {
    pub width: u32,
    pub height: u32,
    pub samples: u16,
    pub bytes_per_sample: u8,
    pub planar: bool,
    pub data: Vec<u8>,
}

/// Decodes one frame of compressed pixel data (all its fragments concatenated). Errors name
/// what is wrong and the library that found it; the caller adds the file and transfer syntax.
pub(crate) fn decode_frame(
    codec: Codec,
    data: &[u8],
    expected: &Expected,
) -> Result<Frame, String> {
    let frame = match codec {
        Codec::Jpeg => {
            check_jpeg_header(data, expected, false)?;
            decode_jpeg(data)
        }
        Codec::JpegLs => {
            let planar = check_jpeg_header(data, expected, true)?;
            decode_jpeg_ls(data, planar)
        }
        Codec::Jpeg2000 => {
            check_j2k_header(data, expected)?;
            decode_j2k(data)
        }
    }
    .map_err(|e| format!("{} could not decode the frame: {e}", codec.library()))?;
    let want = expected.rows as usize * expected.cols as usize * expected.samples as usize;
    if (frame.width, frame.height, frame.samples)
        != (expected.cols as u32, expected.rows as u32, expected.samples)
        || frame.data.len() != want * frame.bytes_per_sample as usize
    {
        return Err(format!(
            "{} decoded a {}×{} frame with {} samples per pixel ({} bytes), expected {}×{} with {}",
            codec.library(),
            frame.width,
            frame.height,
            frame.samples,
            frame.data.len(),
            expected.cols,
            expected.rows,
            expected.samples
        ));
    }
    Ok(frame)
}

/// Checks the frame header of a JPEG or JPEG-LS stream (SOF, or SOF55 for JPEG-LS) against
/// Rows, Columns, Samples per Pixel and Bits Allocated, so that a mismatching or damaged
/// stream is an error instead of a short or overflowing buffer in the decoder. Returns whether
/// the first scan holds a single component of several (JPEG-LS "no interleave": the decoded
/// samples come plane by plane).
fn check_jpeg_header(data: &[u8], expected: &Expected, jpeg_ls: bool) -> Result<bool, String> {
    let kind = if jpeg_ls { "JPEG-LS" } else { "JPEG" };
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return Err(format!(
            "the {kind} data does not start with an SOI marker (FFD8)"
        ));
    }
    let mut at = 2;
    let mut frame_seen = false;
    loop {
        // Skip fill bytes up to the next marker.
        while at < data.len() && data[at] != 0xFF {
            at += 1;
        }
        while at < data.len() && data[at] == 0xFF {
            at += 1;
        }
        let Some(&marker) = data.get(at) else {
            return Err(format!(
                "the {kind} data ends before its frame header (SOF)"
            ));
        };
        at += 1;
        if marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            continue;
        }
        if marker == 0xD9 || (marker == 0xDA && !frame_seen) {
            return Err(format!(
                "the {kind} data has no frame header (SOF) before its scan"
            ));
        }
        let Some(length) = data
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        else {
            return Err(format!(
                "the {kind} data is truncated inside a marker segment"
            ));
        };
        if marker == 0xDA {
            // The first scan header (frame_seen): its component count.
            let Some(&components) = data.get(at + 2) else {
                return Err(format!("the {kind} scan header (SOS) is truncated"));
            };
            return Ok(components == 1 && expected.samples > 1);
        }
        let is_sof = if jpeg_ls {
            marker == 0xF7
        } else {
            (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker)
        };
        if is_sof && !frame_seen {
            let Some(sof) = data.get(at + 2..at + 8) else {
                return Err(format!("the {kind} frame header (SOF) is truncated"));
            };
            let precision = sof[0] as u16;
            let height = u16::from_be_bytes([sof[1], sof[2]]);
            let width = u16::from_be_bytes([sof[3], sof[4]]);
            let components = sof[5] as u16;
            if height != expected.rows || width != expected.cols {
                return Err(format!(
                    "the {kind} frame is {width}×{height} but Columns×Rows is {}×{}",
                    expected.cols, expected.rows
                ));
            }
            if components != expected.samples {
                return Err(format!(
                    "the {kind} frame has {components} components but Samples per Pixel is {}",
                    expected.samples
                ));
            }
            if !(2..=16).contains(&precision) {
                return Err(format!(
                    "the {kind} frame has {precision}-bit samples (expected 2 to 16)"
                ));
            }
            let needed = if precision <= 8 { 8 } else { 16 };
            if needed != expected.bits_allocated {
                return Err(format!(
                    "the {kind} frame has {precision}-bit samples but Bits Allocated is {}",
                    expected.bits_allocated
                ));
            }
            frame_seen = true;
        }
        at += length;
    }
}

/// Where the JPEG 2000 codestream starts: at once (a bare codestream, as DICOM asks), or
/// inside the `jp2c` box of a JP2 file (which some writers store).
fn j2k_codestream(data: &[u8]) -> Result<&[u8], String> {
    if data.starts_with(&[0xFF, 0x4F, 0xFF, 0x51]) {
        return Ok(data);
    }
    if !data.starts_with(&[0, 0, 0, 12, b'j', b'P', b' ', b' ']) {
        return Err("the data is neither a JPEG 2000 codestream (FF4F FF51) nor a JP2 file".into());
    }
    let mut at = 0usize;
    while at + 8 <= data.len() {
        let length = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let kind = &data[at + 4..at + 8];
        let (header, size) = match length {
            0 => (8, data.len() - at),
            1 => {
                let Some(b) = data.get(at + 8..at + 16) else {
                    break;
                };
                let size = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                (16, usize::try_from(size).unwrap_or(usize::MAX))
            }
            n => (8, n as usize),
        };
        if size < header {
            break;
        }
        if kind == b"jp2c" {
            let body = data.get(at + header..).unwrap_or(&[]);
            return if body.starts_with(&[0xFF, 0x4F, 0xFF, 0x51]) {
                Ok(body)
            } else {
                Err("the JP2 file's codestream box does not start with FF4F FF51".into())
            };
        }
        at = at.saturating_add(size);
    }
    Err("the JP2 file has no codestream box (jp2c)".into())
}

/// Checks the SIZ marker of a JPEG 2000 codestream against Rows, Columns, Samples per Pixel
/// and Bits Allocated, and its tile count, before OpenJPEG allocates from it.
fn check_j2k_header(data: &[u8], expected: &Expected) -> Result<(), String> {
    let cs = j2k_codestream(data)?;
    let be32 = |at: usize| -> Option<u64> {
        cs.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64)
    };
    // SOC (2) SIZ (2) Lsiz (2) Rsiz (2), then eight 32-bit fields and Csiz.
    let fields: Option<Vec<u64>> = (0..8).map(|i| be32(8 + 4 * i)).collect();
    let (Some(fields), Some(csiz)) = (
        fields,
        cs.get(40..42).map(|b| u16::from_be_bytes([b[0], b[1]])),
    ) else {
        return Err("the JPEG 2000 image header (SIZ) is truncated".into());
    };
    let [xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz] = fields[..] else {
        unreachable!("eight fields")
    };
    if xsiz <= xosiz
        || ysiz <= yosiz
        || xtsiz == 0
        || ytsiz == 0
        || xtosiz > xosiz
        || ytosiz > yosiz
    {
        return Err(format!(
            "the JPEG 2000 image header (SIZ) is invalid: image {xsiz}×{ysiz} from ({xosiz}, \
             {yosiz}), tiles {xtsiz}×{ytsiz} from ({xtosiz}, {ytosiz})"
        ));
    }
    let (width, height) = (xsiz - xosiz, ysiz - yosiz);
    if (width, height) != (expected.cols as u64, expected.rows as u64) {
        return Err(format!(
            "the JPEG 2000 image is {width}×{height} but Columns×Rows is {}×{}",
            expected.cols, expected.rows
        ));
    }
    if csiz != expected.samples {
        return Err(format!(
            "the JPEG 2000 image has {csiz} components but Samples per Pixel is {}",
            expected.samples
        ));
    }
    let tiles = (xsiz - xtosiz).div_ceil(xtsiz) * (ysiz - ytosiz).div_ceil(ytsiz);
    if tiles > MAX_J2K_TILES {
        return Err(format!(
            "the JPEG 2000 image declares {tiles} tiles of {xtsiz}×{ytsiz}, more than the \
             {MAX_J2K_TILES} this reader accepts"
        ));
    }
    for c in 0..csiz as usize {
        let Some(component) = cs.get(42 + 3 * c..45 + 3 * c) else {
            return Err("the JPEG 2000 image header (SIZ) is truncated".into());
        };
        let precision = (component[0] & 0x7F) as u16 + 1;
        if precision > 16 {
            return Err(format!(
                "the JPEG 2000 component {c} has {precision}-bit samples (expected at most 16)"
            ));
        }
        let needed = if precision <= 8 { 8 } else { 16 };
        if needed != expected.bits_allocated {
            return Err(format!(
                "the JPEG 2000 component {c} has {precision}-bit samples but Bits Allocated is {}",
                expected.bits_allocated
            ));
        }
        if component[1] != 1 || component[2] != 1 {
            return Err(format!(
                "the JPEG 2000 component {c} is subsampled ({}×{}), which DICOM does not allow",
                component[1], component[2]
            ));
        }
    }
    Ok(())
}

/// A libjpeg-turbo decompressor, destroyed on drop.
struct Turbo(turbojpeg_sys::tjhandle);

impl Drop for Turbo {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { turbojpeg_sys::tj3Destroy(self.0) }
    }
}

impl Turbo {
    fn error(&self) -> String {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle.
        unsafe { CStr::from_ptr(turbojpeg_sys::tj3GetErrorStr(self.0)) }
            .to_string_lossy()
            .trim()
            .to_string()
    }

    fn check(&self, status: c_int) -> Result<(), String> {
        if status == 0 {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    fn get(&self, param: turbojpeg_sys::TJPARAM) -> c_int {
        // SAFETY: a valid handle and a parameter of the enumeration.
        unsafe { turbojpeg_sys::tj3Get(self.0, param as c_int) }
    }

    fn set(&self, param: turbojpeg_sys::TJPARAM, value: c_int) -> Result<(), String> {
        // SAFETY: as `get`.
        self.check(unsafe { turbojpeg_sys::tj3Set(self.0, param as c_int, value) })
    }
}

fn decode_jpeg(data: &[u8]) -> Result<Frame, String> {
    use turbojpeg_sys as tj;
    // SAFETY: tj3Init returns a new handle or NULL.
    let handle = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as c_int) };
    if handle.is_null() {
        return Err("cannot create a decompressor".into());
    }
    let turbo = Turbo(handle);
    // A damaged or truncated stream is an error, as with PIL, not a grey-filled image.
    turbo.set(tj::TJPARAM_TJPARAM_STOPONWARNING, 1)?;
    turbo.set(tj::TJPARAM_TJPARAM_SCANLIMIT, MAX_JPEG_SCANS)?;
    // SAFETY: the buffer and its length are valid for the call.
    turbo.check(unsafe { tj::tj3DecompressHeader(turbo.0, data.as_ptr(), data.len() as _) })?;
    let width = turbo.get(tj::TJPARAM_TJPARAM_JPEGWIDTH);
    let height = turbo.get(tj::TJPARAM_TJPARAM_JPEGHEIGHT);
    let precision = turbo.get(tj::TJPARAM_TJPARAM_PRECISION);
    let lossless = turbo.get(tj::TJPARAM_TJPARAM_LOSSLESS) == 1;
    let colorspace = turbo.get(tj::TJPARAM_TJPARAM_COLORSPACE);
    if width <= 0 || height <= 0 {
        return Err(format!("invalid image size {width}×{height}"));
    }
    let (samples, format) = if colorspace == tj::TJCS_TJCS_GRAY as c_int {
        (1u16, tj::TJPF_TJPF_GRAY)
    } else if colorspace == tj::TJCS_TJCS_RGB as c_int || colorspace == tj::TJCS_TJCS_YCbCr as c_int
    {
        // YCbCr (DICOM's YBR_FULL / YBR_FULL_422) is converted to RGB, as pydicom does.
        (3u16, tj::TJPF_TJPF_RGB)
    } else {
        return Err("CMYK and YCCK JPEGs are not supported (DICOM uses grey, RGB or YBR)".into());
    };
    let count = width as usize * height as usize * samples as usize;
    let (bytes_per_sample, data_out) = match precision {
        2..=8 => {
            let mut out = vec![0u8; count];
            // SAFETY: `out` holds width × height × samples bytes, what the format needs with
            // pitch 0 (tightly packed rows).
            turbo.check(unsafe {
                tj::tj3Decompress8(
                    turbo.0,
                    data.as_ptr(),
                    data.len() as _,
                    out.as_mut_ptr(),
                    0,
                    format as c_int,
                )
            })?;
            (1u8, out)
        }
        9..=12 => {
            let mut out = vec![0i16; count];
            // SAFETY: as above, in 16-bit samples.
            turbo.check(unsafe {
                tj::tj3Decompress12(
                    turbo.0,
                    data.as_ptr(),
                    data.len() as _,
                    out.as_mut_ptr(),
                    0,
                    format as c_int,
                )
            })?;
            (2, out.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
        13..=16 if lossless => {
            let mut out = vec![0u16; count];
            // SAFETY: as above.
            turbo.check(unsafe {
                tj::tj3Decompress16(
                    turbo.0,
                    data.as_ptr(),
                    data.len() as _,
                    out.as_mut_ptr(),
                    0,
                    format as c_int,
                )
            })?;
            (2, out.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
        other => {
            return Err(format!(
                "{other}-bit samples are not supported{}",
                if lossless {
                    ""
                } else {
                    " in a lossy JPEG (at most 12)"
                }
            ))
        }
    };
    Ok(Frame {
        width: width as u32,
        height: height as u32,
        samples,
        bytes_per_sample,
        planar: false,
        data: data_out,
    })
}

fn decode_jpeg_ls(data: &[u8], planar: bool) -> Result<Frame, String> {
    // One decoder reads the header, a fresh one decodes (CharLS decoders are single-use).
    let info = charls::CharLS::default()
        .get_frame_info(data)
        .map_err(|e| e.to_string())?;
    if !(2..=16).contains(&info.bits_per_sample) || !(1..=4).contains(&info.component_count) {
        return Err(format!(
            "{}-bit samples with {} components are not supported",
            info.bits_per_sample, info.component_count
        ));
    }
    let bytes = charls::CharLS::default()
        .decode(data)
        .map_err(|e| e.to_string())?;
    Ok(Frame {
        width: info.width,
        height: info.height,
        samples: info.component_count as u16,
        bytes_per_sample: if info.bits_per_sample <= 8 { 1 } else { 2 },
        planar,
        data: bytes,
    })
}

fn decode_j2k(data: &[u8]) -> Result<Frame, String> {
    let params = jpeg2k::DecodeParameters::new().strict(true);
    let image = jpeg2k::Image::from_bytes_with(data, params).map_err(|e| e.to_string())?;
    let components = image.components();
    let Some(first) = components.first() else {
        return Err("the image has no components".into());
    };
    let (width, height) = (first.width(), first.height());
    let bytes_per_sample: u8 = if first.precision() <= 8 { 1 } else { 2 };
    let pixels = width as usize * height as usize;
    let mut out = Vec::with_capacity(pixels * components.len() * bytes_per_sample as usize);
    for component in components {
        if (component.width(), component.height()) != (width, height)
            || component.data().len() != pixels
        {
            return Err("the components differ in size".into());
        }
    }
    for i in 0..pixels {
        for component in components {
            let v = component.data()[i];
            if bytes_per_sample == 1 {
                out.push(v as u8);
            } else {
                out.extend_from_slice(&(v as u16).to_le_bytes());
            }
        }
    }
    Ok(Frame {
        width,
        height,
        samples: components.len() as u16,
        bytes_per_sample,
        planar: false,
        data: out,
    })
}
