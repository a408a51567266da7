//! DICOM decoding for the chest X-ray datasets (RSNA Kaggle `.dcm` files, and any `.dcm` in
//! the other CXR datasets), with the original's semantics (`InnerEyeCXRDatasetBase.__getitem__`
//! on top of pydicom's `pixel_array`).
//!
//! Parsing uses dicom-rs (`dicom-object`): explicit and implicit VR, little and big endian,
//! deflated explicit VR little endian. Pixel data: native and RLE lossless through
//! `dicom-pixeldata`; JPEG baseline / extended 12-bit / lossless (process 14, SV1), JPEG-LS
//! (lossless, near-lossless) and JPEG 2000 (lossless, lossy) through `dicom_codecs`
//! (libjpeg-turbo, CharLS, OpenJPEG). Other encapsulated syntaxes give an error naming the
//! transfer syntax.

use crate::dicom_codecs::{self, Codec, Expected};
use crate::image_file::ImageLimits;
use dicom_core::value::Value;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{FileMetaTable, OpenFileOptions};
use dicom_pixeldata::{
    DecodedPixelData, PhotometricInterpretation, PixelDecoder, PixelRepresentation,
    PlanarConfiguration,
};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use ssl_plugin_api::{Image, PluginError, Result};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Decodes a DICOM Part-10 file (128-byte preamble + `DICM`) into one 8-bit grey channel,
/// exactly as the original does:
///
/// 1. the raw stored values of the first frame, as pydicom's `pixel_array` gives them: no
///    rescale slope/intercept, no VOI LUT/window; bits above Bits Stored are ignored (signed
///    values are sign-extended from Bits Stored);
/// 2. `MONOCHROME1` is inverted: unsigned `2^BitsStored - 1 - px`, signed `-(px + 1)`;
/// 3. `(px - min) * 255 / (max - min)` in `f64`, then PIL's `fromarray(...).convert("L")`:
///    rounded to `f32`, truncated towards zero and clipped to 0..=255.
///
/// Differences from the original, where it fails: a constant image (`max == min`, where the
/// original divides 0 by 0 and gets NaN) gives all zeros; a multi-frame file uses its first
/// frame (the original's PIL call rejects 3-D arrays); an RGB file (3 samples per pixel) is
/// first converted to grey with PIL's `"L"` luma `(R*299 + G*587 + B*114) / 1000` computed in
/// floating point (the original's PIL call rejects float RGB arrays).
///
/// Errors (never panics): unreadable file, not a DICOM Part-10 file, corrupt or truncated
/// data, missing image attributes, or a transfer syntax that cannot be decoded; each message
/// names the file, and the transfer syntax (UID and name) once it is known.
pub(crate) fn decode_dicom_gray8(path: &Path, limits: ImageLimits) -> Result<Image> {
    let bytes = std::fs::read(path).map_err(|e| {
        PluginError::msg(format!(
            "{}: cannot read the DICOM file: {e}",
            path.display()
        ))
    })?;
    decode_dicom_bytes(&bytes, limits)
        .map_err(|message| PluginError::msg(format!("{}: {message}", path.display())))
}

/// [`decode_dicom_gray8`] of a file's bytes, with errors as messages that the caller prefixes
/// with the path (what the fuzz target calls).
pub(crate) fn decode_dicom_bytes(bytes: &[u8], limits: ImageLimits) -> Result<Image, String> {
    // dicom-rs has been seen to index out of bounds on some malformed encapsulated data;
    // the checks below catch the known cases, and this turns any other panic into an error.
    match catch_unwind(AssertUnwindSafe(|| decode_bytes(bytes, limits))) {
        Ok(result) => result,
        Err(panic) => {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown reason".into());
            Err(format!(
                "the DICOM decoder failed on corrupt data ({reason})"
            ))
        }
    }
}

/// The error chain of a dicom-rs error on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

const RLE_UID: &str = "1.2.840.10008.1.2.5";
const DEFLATED_UID: &str = "1.2.840.10008.1.2.1.99";
const IMPLICIT_UID: &str = "1.2.840.10008.1.2";
const BIG_ENDIAN_UID: &str = "1.2.840.10008.1.2.2";

/// The most bytes a stored sample takes (Bits Allocated 32, or 64 for float data).
const MAX_BYTES_PER_SAMPLE: u64 = 8;

/// What a data set may hold besides its pixels once inflated (headers, overlays, tags).
const NON_PIXEL_BYTES: u64 = 16 << 20;

/// Refuses an image whose Rows × Columns × Number of Frames × Samples per Pixel exceeds the
/// limit, before its pixel data is decoded. Absent attributes are left to the decoder's own
/// errors; Number of Frames is 1 when absent.
fn check_dimensions(
    object: &dicom_object::DefaultDicomObject,
    limits: ImageLimits,
) -> Result<(), String> {
    let int = |tag: dicom_core::Tag| -> Option<u64> {
        let element = object.element_opt(tag).ok()??;
        // Number of Frames is an IS (text); the others are US.
        element.to_int::<i64>().ok().map(|v| v.max(0) as u64)
    };
    let (Some(rows), Some(columns)) = (int(tags::ROWS), int(tags::COLUMNS)) else {
        return Ok(());
    };
    let frames = int(tags::NUMBER_OF_FRAMES).unwrap_or(1);
    let samples = int(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    limits.check(
        "the DICOM header",
        &[
            ("rows", rows),
            ("columns", columns),
            ("frames", frames),
            ("samples per pixel", samples),
        ],
    )
}

/// Whether an explicit VR element header has the long form (2 reserved bytes, a 32-bit
/// length), as dicom-rs reads it: every VR but the 21 with a 16-bit length, an unknown VR
/// included (dicom-rs reads it as UN).
fn has_long_length(vr: [u8; 2]) -> bool {
    const SHORT_VRS: [[u8; 2]; 21] = [
        *b"AE", *b"AS", *b"AT", *b"CS", *b"DA", *b"DS", *b"DT", *b"FL", *b"FD", *b"IS", *b"LO",
        *b"LT", *b"PN", *b"SH", *b"SL", *b"SS", *b"ST", *b"TM", *b"UI", *b"UL", *b"US",
    ];
    !SHORT_VRS.contains(&vr)
}

/// The VR dicom-rs gives an implicit VR element: Pixel Data and Overlay Data are OW, others
/// the standard dictionary's (relaxed), UN when the tag is unknown.
fn implicit_vr(group: u16, element: u16) -> [u8; 2] {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    if (group, element) == (0x7FE0, 0x0010) || (group >> 8 == 0x60 && element == 0x3000) {
        return *b"OW";
    }
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(dicom_core::Tag(group, element))
        .map(|entry| entry.vr().relaxed().to_bytes())
        .unwrap_or(*b"UN")
}

/// How many bytes of a `length`-byte value dicom-rs actually reads: numbers are read as
/// `length / size` whole values (while its position counter still advances by `length`), so a
/// length that is not a multiple of the number size leaves the stream behind its counter.
fn bytes_read_of_value(vr: [u8; 2], length: u32) -> u32 {
    let size = match &vr {
        b"US" | b"OW" | b"SS" => 2,
        b"AT" | b"FL" | b"OF" | b"SL" | b"OL" | b"UL" => 4,
        b"FD" | b"OD" | b"SV" | b"OV" | b"UV" => 8,
        _ => 1,
    };
    length / size * size
}

/// Refuses a data set in which an element declares more bytes than the file has left, before
/// dicom-rs (which allocates an element's declared length before reading it) reads it: a
/// damaged length field is a clear error instead of a multi-gigabyte allocation. Walks the
/// bytes exactly as dicom-rs' data set reader does (dicom-parser `DataSetReader` and
/// `StatefulDecoder`): an element with VR SQ (explicit VR: its header's; implicit VR: the
/// dictionary's) or an undefined length opens a sequence, undefined-length Pixel Data opens
/// its fragments; inside a sequence only items and the sequence delimiter are read, inside an
/// item elements again; a defined-length sequence or item closes when dicom-rs' position
/// counter reaches its end. Any other element, an item tag outside a sequence included, is a
/// value of its declared length, of which numbers are read whole ([`bytes_read_of_value`]).
/// Where dicom-rs would stop with an error of its own (an unexpected tag among items, a
/// sequence overrun), the walk stops too.
fn check_element_lengths(data: &[u8], explicit: bool, big_endian: bool) -> Result<(), String> {
    const UNDEFINED: u32 = 0xFFFF_FFFF;
    const ITEM: (u16, u16) = (0xFFFE, 0xE000);
    const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
    const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Open {
        Sequence,
        Item,
        Fragments,
    }
    let u16_at = |at: usize| {
        let b = [data[at], data[at + 1]];
        if big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    };
    let u32_at = |at: usize| {
        let b = [data[at], data[at + 1], data[at + 2], data[at + 3]];
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    let too_long = |tag: (u16, u16), length: u32, left: usize| {
        format!(
            "corrupt or truncated DICOM data: element ({:04X},{:04X}) declares {length} bytes but \
             only {left} remain in the file",
            tag.0, tag.1
        )
    };
    // What is open, and where (in dicom-rs' position counter) it ends when its length is
    // defined.
    let mut open: Vec<(Open, Option<u64>)> = Vec::new();
    // Where the next byte is read, and dicom-rs' position counter.
    let (mut at, mut position) = (0usize, 0u64);
    'walk: loop {
        while let Some(&(_, Some(end))) = open.last() {
            match position.cmp(&end) {
                std::cmp::Ordering::Less => break,
                std::cmp::Ordering::Equal => {
                    open.pop();
                }
                // dicom-rs: "inconsistent sequence end".
                std::cmp::Ordering::Greater => break 'walk,
            }
        }
        // Stop where a header no longer fits: dicom-rs reports the truncation itself.
        if data.len() - at < 8 {
            break;
        }
        let tag = (u16_at(at), u16_at(at + 2));
        let within = open.last().map(|&(kind, _)| kind);
        if matches!(within, Some(Open::Sequence | Open::Fragments)) {
            // Items (or fragments) and the sequence delimiter: tag and 32-bit length.
            let length = u32_at(at + 4);
            at += 8;
            position += 8;
            let left = data.len() - at;
            match tag {
                SEQUENCE_END => {
                    open.pop();
                }
                ITEM if within == Some(Open::Fragments) => {
                    if length == UNDEFINED {
                        break;
                    }
                    if length as usize > left {
                        return Err(too_long(tag, length, left));
                    }
                    at += length as usize;
                    position += length as u64;
                }
                ITEM if length == UNDEFINED => open.push((Open::Item, None)),
                ITEM => {
                    if length as usize > left {
                        return Err(too_long(tag, length, left));
                    }
                    open.push((Open::Item, Some(position + length as u64)));
                }
                _ => break,
            }
            continue;
        }
        // An element, at the top level or inside an item.
        let (group, element) = tag;
        let (vr, length, header) = if group == 0xFFFE {
            (*b"UN", u32_at(at + 4), 8)
        } else if explicit {
            let vr = [data[at + 4], data[at + 5]];
            if has_long_length(vr) {
                if data.len() - at < 12 {
                    break;
                }
                (vr, u32_at(at + 8), 12)
            } else {
                (vr, u16_at(at + 6) as u32, 8)
            }
        } else {
            (implicit_vr(group, element), u32_at(at + 4), 8)
        };
        at += header;
        position += header as u64;
        let left = data.len() - at;
        if tag == ITEM_END {
            if within == Some(Open::Item) {
                open.pop();
            }
            continue;
        }
        if length != UNDEFINED && length as usize > left {
            return Err(too_long(tag, length, left));
        }
        if vr == *b"SQ" {
            let end = (length != UNDEFINED).then(|| position + length as u64);
            open.push((Open::Sequence, end));
        } else if length == UNDEFINED {
            let kind = if tag == (0x7FE0, 0x0010) {
                Open::Fragments
            } else {
                Open::Sequence
            };
            open.push((kind, None));
        } else {
            at += bytes_read_of_value(vr, length) as usize;
            position += length as u64;
        }
    }
    Ok(())
}

/// [`check_element_lengths`] for the file meta group, which dicom-rs also reads by declared
/// lengths; returns where the group ends (where the data set starts) as dicom-rs finds it:
/// after the File Meta Information Group Length element (0002,0000), elements (explicit VR
/// little endian, of any group) are read while fewer bytes than that length have been read,
/// so the last one may end past it. A group that does not start with (0002,0000) is left to
/// dicom-rs, which refuses it.
fn check_meta_lengths(data: &[u8]) -> Result<usize, String> {
    // (0002,0000) with a 4-byte value, whatever its VR says (dicom-rs checks only these).
    if data.len() < 16 || data[..4] != [0x02, 0x00, 0x00, 0x00] {
        return Ok(0);
    }
    let header = if has_long_length([data[4], data[5]]) {
        12
    } else {
        8
    };
    let length = if header == 12 {
        u32::from_le_bytes([data[8], data[9], data[10], data[11]])
    } else {
        u16::from_le_bytes([data[6], data[7]]) as u32
    };
    if length != 4 || data.len() < header + 4 {
        return Ok(0);
    }
    let group_length = u32::from_le_bytes([
        data[header],
        data[header + 1],
        data[header + 2],
        data[header + 3],
    ]) as u64;
    let mut at = header + 4;
    let mut total = 0u64;
    while total < group_length && data.len() - at >= 8 {
        let (group, element) = (
            u16::from_le_bytes([data[at], data[at + 1]]),
            u16::from_le_bytes([data[at + 2], data[at + 3]]),
        );
        let vr = [data[at + 4], data[at + 5]];
        let (length, header) = if group == 0xFFFE {
            (
                u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]),
                8,
            )
        } else if has_long_length(vr) {
            if data.len() - at < 12 {
                break;
            }
            let l = &data[at + 8..at + 12];
            (u32::from_le_bytes([l[0], l[1], l[2], l[3]]), 12)
        } else {
            (u16::from_le_bytes([data[at + 6], data[at + 7]]) as u32, 8)
        };
        if length == u32::MAX {
            // Undefined length: dicom-rs refuses it.
            break;
        }
        at += header;
        let left = data.len() - at;
        if length as usize > left {
            return Err(format!(
                "invalid DICOM file meta group (0002,xxxx): element ({group:04X},{element:04X}) \
                 declares {length} bytes but only {left} remain in the file"
            ));
        }
        at += length as usize;
        total += header as u64 + length as u64;
    }
    Ok(at)
}

/// Inflates a deflated data set, refusing one that would inflate past what an image within
/// the limit needs (a "zip bomb") before dicom-rs inflates it into memory. A stream that
/// breaks off gives what inflated before the break (what dicom-rs will read too, so that its
/// element lengths are checked as well); one of which nothing inflates is an error (dicom-rs,
/// inflating it the same way, would read garbage by declared lengths). `None` when the file
/// ends before its data set.
fn inflate_bounded(
    bytes: &[u8],
    start: usize,
    limits: ImageLimits,
) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    let Some(deflated) = bytes.get(start..) else {
        return Ok(None);
    };
    let budget = limits
        .max_pixels
        .saturating_mul(MAX_BYTES_PER_SAMPLE)
        .saturating_add(NON_PIXEL_BYTES);
    let mut inflater = flate2::read::DeflateDecoder::new(deflated).take(budget.saturating_add(1));
    let mut data_set = Vec::new();
    // On a read error, `read_to_end` keeps the bytes read before it.
    if let Err(error) = inflater.read_to_end(&mut data_set) {
        if data_set.is_empty() {
            return Err(format!(
                "corrupt DICOM data: the deflated data set does not inflate ({error})"
            ));
        }
    }
    if data_set.len() as u64 > budget {
        return Err(format!(
            "the deflated data set inflates to more than {budget} bytes, more than an image \
             within the limit max_image_pixels = {} needs (refused before decoding; raise the \
             dataset parameter `max_image_pixels` if the image is genuine)",
            limits.max_pixels
        ));
    }
    Ok(Some(data_set))
}

/// The whole decoding, with errors as messages that the caller prefixes with the path.
fn decode_bytes(bytes: &[u8], limits: ImageLimits) -> Result<Image, String> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err(format!(
            "not a DICOM Part-10 file: expected a 128-byte preamble followed by \"DICM\" \
             (file of {} bytes)",
            bytes.len()
        ));
    }
    let data_set_start = 132 + check_meta_lengths(&bytes[132..])?;
    let meta = FileMetaTable::from_reader(&bytes[128..])
        .map_err(|e| format!("invalid DICOM file meta group (0002,xxxx): {}", chain(&e)))?;
    let uid = meta.transfer_syntax().to_string();
    let Some(ts) = TransferSyntaxRegistry.get(&uid) else {
        return Err(format!(
            "unsupported transfer syntax {uid} (not a transfer syntax known to the DICOM decoder)"
        ));
    };
    let ts_desc = format!("transfer syntax {uid} ({})", ts.name());
    let codec = Codec::of(&uid);
    if codec.is_none() && !ts.can_decode_all() {
        return Err(format!(
            "unsupported {ts_desc}: its pixel data cannot be decoded (supported: implicit/explicit \
             VR little endian, explicit VR big endian, deflated, JPEG baseline/extended 12-bit/\
             lossless, JPEG-LS, JPEG 2000, RLE lossless)"
        ));
    }
    if uid == DEFLATED_UID {
        if let Some(data_set) = inflate_bounded(bytes, data_set_start, limits)
            .map_err(|e| format!("{e} ({ts_desc})"))?
        {
            check_element_lengths(&data_set, true, false)
                .map_err(|e| format!("{e} ({ts_desc})"))?;
        }
    } else {
        // dicom-rs allocates an element's declared length before reading it.
        if let Some(data_set) = bytes.get(data_set_start..) {
            let explicit = uid != IMPLICIT_UID;
            check_element_lengths(data_set, explicit, uid == BIG_ENDIAN_UID)
                .map_err(|e| format!("{e} ({ts_desc})"))?;
        }
    }
    let object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(&bytes[128..])
        .map_err(|e| format!("corrupt or truncated DICOM data ({ts_desc}): {}", chain(&e)))?;
    check_dimensions(&object, limits).map_err(|e| format!("{e} ({ts_desc})"))?;

    let pixel_data = object
        .element_opt(tags::PIXEL_DATA)
        .map_err(|e| format!("cannot read Pixel Data (7FE0,0010): {}", chain(&e)))?
        .ok_or_else(|| format!("no Pixel Data element (7FE0,0010) ({ts_desc}; truncated file?)"))?;
    let encapsulated = match pixel_data.value() {
        Value::PixelSequence(sequence) => Some(sequence.fragments()),
        _ => None,
    };
    if let Some(fragments) = encapsulated {
        if fragments.is_empty() {
            return Err(format!(
                "the encapsulated Pixel Data has no fragments ({ts_desc}; truncated file?)"
            ));
        }
        let expected = Expected {
            rows: read_u16(&object, tags::ROWS, "Rows")?,
            cols: read_u16(&object, tags::COLUMNS, "Columns")?,
            samples: read_u16(&object, tags::SAMPLES_PER_PIXEL, "Samples per Pixel")?,
            bits_allocated: read_u16(&object, tags::BITS_ALLOCATED, "Bits Allocated")?,
        };
        if let Some(codec) = codec {
            // One fragment per frame when there are as many fragments as frames; otherwise a
            // single frame spread over all fragments.
            let frames = object
                .element_opt(tags::NUMBER_OF_FRAMES)
                .ok()
                .flatten()
                .and_then(|e| e.to_int::<i64>().ok())
                .unwrap_or(1);
            // Borrowed when one fragment holds the frame (the usual case): no copy per image.
            let frame: std::borrow::Cow<[u8]> =
                if fragments.len() == 1 || (frames > 1 && fragments.len() as i64 == frames) {
                    fragments[0].as_slice().into()
                } else {
                    fragments.concat().into()
                };
            let decoded = dicom_codecs::decode_frame(codec, &frame, &expected)
                .map_err(|e| format!("{e} ({ts_desc})"))?;
            let pixels = Pixels::from_codec(&object, &decoded)?;
            return to_gray8(&pixels).map_err(|e| format!("{e} ({ts_desc})"));
        }
        if uid == RLE_UID {
            check_rle_header(&fragments[0], &expected).map_err(|e| format!("{e} ({ts_desc})"))?;
        }
    }

    let decoded = object
        .decode_pixel_data_frame(0)
        .map_err(|e| format!("cannot decode the pixel data ({ts_desc}): {}", chain(&e)))?;
    // The RLE decoder writes little-endian samples; native data comes back in the machine's
    // byte order.
    let little_endian = ts.is_encapsulated_pixel_data() || cfg!(target_endian = "little");
    to_gray8(&Pixels::from_decoded(&decoded, little_endian)).map_err(|e| format!("{e} ({ts_desc})"))
}

fn read_u16(
    object: &dicom_object::DefaultDicomObject,
    tag: dicom_core::Tag,
    name: &str,
) -> Result<u16, String> {
    let element = object
        .element_opt(tag)
        .map_err(|e| format!("cannot read {name} {tag}: {}", chain(&e)))?
        .ok_or_else(|| format!("missing {name} {tag}"))?;
    element
        .to_int::<u16>()
        .map_err(|e| format!("invalid {name} {tag}: {}", chain(&e)))
}

/// Checks the RLE segment table of a frame's fragment (PS3.5 G.3).
fn check_rle_header(fragment: &[u8], geometry: &Expected) -> Result<(), String> {
    if fragment.len() < 64 {
        return Err(format!(
            "the RLE fragment holds {} bytes, less than its 64-byte header",
            fragment.len()
        ));
    }
    let word = |i: usize| {
        u32::from_le_bytes([
            fragment[4 * i],
            fragment[4 * i + 1],
            fragment[4 * i + 2],
            fragment[4 * i + 3],
        ]) as usize
    };
    let segments = word(0);
    let expected = geometry.samples as usize * (geometry.bits_allocated as usize).div_ceil(8);
    // The 64-byte header has room for 15 offsets (PS3.5 G.5).
    if segments > 15 {
        return Err(format!(
            "the RLE header declares {segments} segments, more than the 15 it can hold"
        ));
    }
    if segments != expected {
        return Err(format!(
            "the RLE header declares {segments} segments, expected {expected} \
             (Samples per Pixel × Bits Allocated / 8)"
        ));
    }
    let mut previous = 64;
    for i in 1..=segments {
        let offset = word(i);
        if offset < previous || offset > fragment.len() || (i == 1 && offset != 64) {
            return Err(format!(
                "the RLE header's segment offset #{i} ({offset}) is invalid for a fragment of {} bytes",
                fragment.len()
            ));
        }
        previous = offset;
    }
    // Each segment must decode to at least Rows × Columns bytes (the decoder indexes them).
    let needed = geometry.rows as usize * geometry.cols as usize;
    for i in 1..=segments {
        let end = if i == segments {
            fragment.len()
        } else {
            word(i + 1)
        };
        let decoded = packbits_len(&fragment[word(i)..end]);
        if decoded < needed {
            return Err(format!(
                "RLE segment #{i} decodes to {decoded} bytes, expected {needed} (Rows × Columns; \
                 truncated or corrupt data)"
            ));
        }
    }
    Ok(())
}

/// The number of bytes a PackBits segment decodes to (a truncated last literal counts what
/// is there).
fn packbits_len(segment: &[u8]) -> usize {
    let (mut at, mut len) = (0, 0);
    while at < segment.len() {
        let header = segment[at] as i8;
        at += 1;
        if header >= 0 {
            let n = (header as usize + 1).min(segment.len() - at);
            len += n;
            at += n;
        } else if header != -128 {
            if at < segment.len() {
                len += (1 - header as isize) as usize;
            }
            at += 1;
        }
    }
    len
}

/// A decoded first frame and the attributes that say how to read its samples.
struct Pixels<'a> {
    data: &'a [u8],
    rows: usize,
    cols: usize,
    samples: usize,
    bits_allocated: u32,
    bits_stored: u32,
    signed: bool,
    /// For messages.
    photometric: String,
    monochrome1: bool,
    /// Whether 3 samples per pixel are R, G, B.
    rgb: bool,
    /// Plane by plane rather than pixel by pixel.
    planar: bool,
    little_endian: bool,
}

impl<'a> Pixels<'a> {
    /// A frame decoded by dicom-pixeldata (native or RLE data).
    fn from_decoded(decoded: &'a DecodedPixelData, little_endian: bool) -> Self {
        let photometric = decoded.photometric_interpretation();
        Pixels {
            data: decoded.data(),
            rows: decoded.rows() as usize,
            cols: decoded.columns() as usize,
            samples: decoded.samples_per_pixel() as usize,
            bits_allocated: decoded.bits_allocated() as u32,
            bits_stored: decoded.bits_stored() as u32,
            signed: decoded.pixel_representation() == PixelRepresentation::Signed,
            photometric: photometric.to_string(),
            monochrome1: *photometric == PhotometricInterpretation::Monochrome1,
            rgb: *photometric == PhotometricInterpretation::Rgb,
            planar: decoded.planar_configuration() == PlanarConfiguration::PixelFirst,
            little_endian,
        }
    }

    /// A frame decoded by [`dicom_codecs`]: its own sample size; Bits Stored (at most the
    /// sample size), Pixel Representation and Photometric Interpretation from the data set.
    /// Colour frames come out as RGB (the decoders undo YBR and the JPEG 2000 colour
    /// transforms, as pydicom's plugins do).
    fn from_codec(
        object: &dicom_object::DefaultDicomObject,
        frame: &'a dicom_codecs::Frame,
    ) -> Result<Self, String> {
        let container = 8 * frame.bytes_per_sample as u32;
        let bits_stored = read_u16(object, tags::BITS_STORED, "Bits Stored")? as u32;
        let representation = read_u16(object, tags::PIXEL_REPRESENTATION, "Pixel Representation")?;
        let photometric = object
            .element_opt(tags::PHOTOMETRIC_INTERPRETATION)
            .map_err(|e| format!("cannot read Photometric Interpretation: {}", chain(&e)))?
            .ok_or("missing Photometric Interpretation (0028,0004)")?
            .to_str()
            .map_err(|e| format!("invalid Photometric Interpretation: {}", chain(&e)))?
            .trim()
            .to_string();
        Ok(Pixels {
            data: &frame.data,
            rows: frame.height as usize,
            cols: frame.width as usize,
            samples: frame.samples as usize,
            bits_allocated: container,
            bits_stored: bits_stored.min(container),
            signed: representation == 1,
            monochrome1: photometric == "MONOCHROME1",
            rgb: frame.samples == 3,
            photometric,
            planar: frame.planar,
            little_endian: true,
        })
    }
}

/// The raw sample values of a decoded frame, as pydicom's `pixel_array` gives them.
fn raw_samples(pixels: &Pixels, count: usize) -> Result<Vec<i64>, String> {
    let data = pixels.data;
    let bits_allocated = pixels.bits_allocated;
    let bits_stored = pixels.bits_stored;
    let signed = pixels.signed;
    let little_endian = pixels.little_endian;
    if bits_stored == 0 || bits_stored > bits_allocated.max(1) {
        return Err(format!(
            "Bits Stored {bits_stored} is not within 1..=Bits Allocated ({bits_allocated})"
        ));
    }
    if bits_allocated == 1 {
        // dicom-pixeldata expands 1-bit samples to 0/255 bytes.
        return data
            .get(..count)
            .map(|d| d.iter().map(|&b| (b != 0) as i64).collect())
            .ok_or_else(|| short_data(data.len(), count));
    }
    let width = match bits_allocated {
        8 => 1,
        16 => 2,
        32 => 4,
        other => {
            return Err(format!(
                "Bits Allocated {other} is not supported (expected 1, 8, 16 or 32)"
            ))
        }
    };
    let bytes = data
        .get(..count * width)
        .ok_or_else(|| short_data(data.len(), count * width))?;
    // pydicom shifts the unused high bits out: left, then right (arithmetic when signed).
    let shift = 64 - bits_stored;
    let word = |chunk: &[u8]| -> u64 {
        let mut buf = [0u8; 8];
        if little_endian {
            buf[..width].copy_from_slice(chunk);
            u64::from_le_bytes(buf)
        } else {
            buf[8 - width..].copy_from_slice(chunk);
            u64::from_be_bytes(buf)
        }
    };
    Ok(bytes
        .chunks_exact(width)
        .map(|chunk| {
            let raw = word(chunk) << shift;
            if signed {
                (raw as i64) >> shift
            } else {
                (raw >> shift) as i64
            }
        })
        .collect())
}

fn short_data(have: usize, need: usize) -> String {
    format!("the pixel data holds {have} bytes, expected at least {need} for the first frame")
}

/// Steps 2 and 3 of [`decode_dicom_gray8`] on a decoded first frame.
fn to_gray8(p: &Pixels) -> Result<Image, String> {
    let (rows, cols, samples) = (p.rows, p.cols, p.samples);
    if rows == 0 || cols == 0 {
        return Err(format!("the image is empty (Rows {rows}, Columns {cols})"));
    }
    let pixels = rows * cols;
    if p.bits_stored == 0 || p.bits_stored > p.bits_allocated.max(1) {
        return Err(format!(
            "Bits Stored {} is not within 1..=Bits Allocated ({})",
            p.bits_stored, p.bits_allocated
        ));
    }
    let out = match samples {
        1 => {
            let top = (1i64 << p.bits_stored) - 1;
            let (monochrome1, signed) = (p.monochrome1, p.signed);
            let value = |v: i64| match (monochrome1, signed) {
                (false, _) => v,
                (true, true) => -(v + 1),
                (true, false) => top - v,
            };
            let plain_bytes = p.bits_allocated == 8 && p.bits_stored == 8 && !signed;
            match p.data.get(..pixels) {
                // 8-bit unsigned samples are the bytes themselves.
                Some(bytes) if plain_bytes => {
                    normalise_integers(bytes.iter().map(|&b| value(b as i64)), pixels)
                }
                _ => {
                    let raw = raw_samples(p, pixels)?;
                    normalise_integers(raw.iter().map(|&v| value(v)), pixels)
                }
            }
        }
        3 => {
            if !p.rgb {
                return Err(format!(
                    "3 samples per pixel with Photometric Interpretation {} is not \
                     supported (expected RGB)",
                    p.photometric
                ));
            }
            let raw = raw_samples(p, pixels * samples)?;
            let planar = p.planar;
            let values: Vec<f64> = (0..pixels)
                .map(|i| {
                    let (r, g, b) = if planar {
                        (raw[i], raw[pixels + i], raw[2 * pixels + i])
                    } else {
                        (raw[3 * i], raw[3 * i + 1], raw[3 * i + 2])
                    };
                    (r as f64 * 299.0 + g as f64 * 587.0 + b as f64 * 114.0) / 1000.0
                })
                .collect();
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if max > min {
                values
                    .iter()
                    .map(|&v| pil_float_to_l((v - min) * 255.0 / (max - min)))
                    .collect()
            } else {
                vec![0u8; pixels]
            }
        }
        other => {
            return Err(format!(
                "Samples per Pixel {other} is not supported (expected 1 or 3)"
            ))
        }
    };
    Image::from_u8(cols as u32, rows as u32, 1, out).map_err(|e| e.message())
}

/// Integer samples stretched to 0..=255 as `(v - min) * 255 / (max - min)` in `f64`, then PIL's
/// float-to-8-bit conversion; through a table of every value in `min..=max` when that range
/// is not larger than the image (the same numbers, one formula per distinct value).
fn normalise_integers(values: impl Iterator<Item = i64> + Clone, pixels: usize) -> Vec<u8> {
    let (min, max) = values
        .clone()
        .fold((i64::MAX, i64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if max <= min {
        return vec![0u8; pixels];
    }
    let (lo, hi) = (min as f64, max as f64);
    let stretch = |v: i64| pil_float_to_l((v as f64 - lo) * 255.0 / (hi - lo));
    let range = max.abs_diff(min);
    if range < pixels as u64 {
        let table: Vec<u8> = (min..=max).map(stretch).collect();
        values.map(|v| table[(v - min) as usize]).collect()
    } else {
        values.map(stretch).collect()
    }
}

/// PIL's `Image.fromarray(float64 array).convert("L")` on one value: the array becomes
/// `float32` ("F" mode), then each value is truncated towards zero and clipped to 0..=255.
fn pil_float_to_l(value: f64) -> u8 {
    (value as f32).clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pil_conversion_truncates_and_clips() {
        assert_eq!(pil_float_to_l(0.99), 0);
        assert_eq!(pil_float_to_l(1.5), 1);
        assert_eq!(pil_float_to_l(254.6), 254);
        assert_eq!(pil_float_to_l(255.0), 255);
        assert_eq!(pil_float_to_l(300.0), 255);
        assert_eq!(pil_float_to_l(-3.0), 0);
        // Rounds to f32 first: 254.99999999 becomes 255.0.
        assert_eq!(pil_float_to_l(254.999_999_99), 255);
    }

    #[test]
    fn packbits_length_counts_runs_literals_and_no_ops() {
        // literal of 3, run of 5, no-op, run of 2
        assert_eq!(
            packbits_len(&[2, 1, 2, 3, 0xFC, 9, 0x80, 0xFF, 4]),
            3 + 5 + 2
        );
        // truncated literal counts what is there
        assert_eq!(packbits_len(&[5, 1, 2]), 2);
    }

    /// Regression (found by fuzzing): an element whose length field claims ~4 GB, more than
    /// the file holds; dicom-rs allocated the declared length before reading (out of memory).
    #[test]
    fn regression_element_length_past_the_end_is_an_error() {
        let bytes =
            include_bytes!("../../../fuzz/corpus/dicom/regression-oom-element-length-past-end");
        let e = decode_dicom_bytes(bytes, ImageLimits::default()).unwrap_err();
        assert!(
            e.contains("corrupt or truncated DICOM data: element ("),
            "{e}"
        );
        assert!(e.contains("remain in the file"), "{e}");
    }

    /// Regression (found by fuzzing): the same in a deflated data set, where dicom-rs filled
    /// the declared length byte by byte from the inflater (a timeout, then out of memory).
    #[test]
    fn regression_deflated_element_length_past_the_end_is_an_error() {
        let bytes =
            include_bytes!("../../../fuzz/corpus/dicom/regression-timeout-deflated-element-length");
        let e = decode_dicom_bytes(bytes, ImageLimits::default()).unwrap_err();
        assert!(e.contains("corrupt or truncated DICOM data"), "{e}");
    }

    /// Regression (found by fuzzing): the same in the file meta group, which dicom-rs reads
    /// first (out of memory).
    #[test]
    fn regression_meta_element_length_past_the_end_is_an_error() {
        let bytes = include_bytes!("../../../fuzz/corpus/dicom/regression-oom-meta-element-length");
        let e = decode_dicom_bytes(bytes, ImageLimits::default()).unwrap_err();
        assert!(e.contains("invalid DICOM file meta group"), "{e}");
        assert!(e.contains("remain in the file"), "{e}");
    }

    /// Regression (found by fuzzing): a deflated file whose meta group length is wrong; the
    /// data set is found by the meta elements, as dicom-rs finds it (out of memory).
    #[test]
    fn regression_deflated_file_with_a_wrong_group_length_is_checked() {
        let bytes =
            include_bytes!("../../../fuzz/corpus/dicom/regression-oom-deflated-group-length");
        let e = decode_dicom_bytes(bytes, ImageLimits::default()).unwrap_err();
        assert!(e.contains("corrupt or truncated DICOM data"), "{e}");
    }

    /// Regression (fuzzing, 2026-11-30): a deflated data set whose stream breaks off; the
    /// elements that did inflate were not checked, and dicom-rs spent seconds and a gigabyte
    /// on an element declaring 2.8 GB before failing.
    #[test]
    fn regression_broken_deflate_stream_is_checked_up_to_the_break() {
        let bytes =
            include_bytes!("../../../fuzz/corpus/dicom/regression-oom-deflated-group-length");
        let started = std::time::Instant::now();
        let e = decode_dicom_bytes(
            bytes,
            ImageLimits {
                max_pixels: 1 << 20,
            },
        )
        .unwrap_err();
        assert!(
            e.contains("declares") && e.contains("remain in the file"),
            "{e}"
        );
        assert!(
            started.elapsed().as_secs_f64() < 1.0,
            "{:?}",
            started.elapsed()
        );
    }

    /// Regression (fuzzing, 2026-11-30): an element with an unknown VR ("CM") has a 32-bit
    /// length for dicom-rs (read as UN), which the length check read as 16-bit; dicom-rs then
    /// zero-filled 1.2 GB for it (a second per file).
    #[test]
    fn regression_unknown_vr_has_a_32_bit_length() {
        let bytes =
            include_bytes!("../../../fuzz/corpus/dicom/regression-slow-unknown-vr-long-length");
        let started = std::time::Instant::now();
        let e = decode_dicom_bytes(bytes, ImageLimits::default()).unwrap_err();
        assert!(e.contains("declares 1280638976 bytes"), "{e}");
        assert!(
            started.elapsed().as_secs_f64() < 0.5,
            "{:?}",
            started.elapsed()
        );
        assert!(has_long_length(*b"CM") && has_long_length(*b"OB") && !has_long_length(*b"US"));
    }

    /// Regression (fuzzing, 2026-11-30): the file meta group ends where dicom-rs stops reading
    /// it (elements of any group while fewer bytes than its group length were read), not at
    /// the first element of another group; the length check inflated from the wrong place
    /// and missed a deflated element declaring 1.1 GB, which dicom-rs then read.
    #[test]
    fn regression_meta_group_ends_where_dicom_rs_ends_it() {
        let bytes = include_bytes!("../../../fuzz/corpus/dicom/regression-slow-meta-group-end");
        let started = std::time::Instant::now();
        let e = decode_dicom_bytes(bytes, ImageLimits::default()).unwrap_err();
        assert!(e.contains("declares 1129534721 bytes"), "{e}");
        assert!(
            started.elapsed().as_secs_f64() < 0.5,
            "{:?}",
            started.elapsed()
        );
        let oom =
            include_bytes!("../../../fuzz/corpus/dicom/regression-oom-off-group-meta-element");
        let e = decode_dicom_bytes(oom, ImageLimits::default()).unwrap_err();
        assert!(e.contains("(7FE0,0010) declares 2145386560 bytes"), "{e}");
    }

    /// Regression (fuzzing, 2026-11-30): Pixel Data (OB) with a defined length whose value
    /// starts with an item tag: the length check walked into it as a sequence, dicom-rs reads
    /// it as bytes (only VR SQ or an undefined length is a sequence) and then the next element,
    /// declaring 2 GB, which it allocated.
    #[test]
    fn regression_only_sq_values_are_walked_into() {
        let bytes =
            include_bytes!("../../../fuzz/corpus/dicom/regression-oom-defined-length-pixel-data");
        let e = decode_dicom_bytes(bytes, ImageLimits::default()).unwrap_err();
        assert!(e.contains("(0D20,870A) declares 2037671444 bytes"), "{e}");
        assert_eq!(&implicit_vr(0x0008, 0x1140), b"SQ"); // Referenced Image Sequence
        assert_eq!(&implicit_vr(0x7FE0, 0x0010), b"OW");
        assert_eq!(&implicit_vr(0x0009, 0x1001), b"UN");
    }

    /// Regression (fuzzing, 2026-11-30): Bits Stored 64 or more overflowed a shift (a panic
    /// with overflow checks, a wrong value without).
    #[test]
    fn regression_bits_stored_beyond_bits_allocated_is_an_error() {
        let bytes =
            include_bytes!("../../../fuzz/corpus/dicom/regression-crash-bits-stored-over-64");
        let e = decode_dicom_bytes(bytes, ImageLimits::default()).unwrap_err();
        assert!(e.contains("is not within 1..=Bits Allocated"), "{e}");
        assert!(!e.contains("decoder failed"), "{e}");
    }

    /// Regression (fuzzing, 2026-11-30): an item tag outside any sequence is a plain value for
    /// dicom-rs; the length check walked into it and missed the 822 MB element after it
    /// (950 MB resident per file).
    #[test]
    fn regression_an_item_outside_a_sequence_is_a_plain_value() {
        let bytes =
            include_bytes!("../../../fuzz/corpus/dicom/regression-mem-item-outside-a-sequence");
        let e = decode_dicom_bytes(bytes, ImageLimits::default()).unwrap_err();
        assert!(e.contains("(0000,0000) declares 822091849 bytes"), "{e}");
    }

    /// Regression (fuzzing, 2026-11-30): a UL element of 26 bytes: dicom-rs reads 6 whole
    /// numbers (24 bytes) and goes on 2 bytes early, into a 775 MB "element"; the length check
    /// now reads values as dicom-rs does.
    #[test]
    fn regression_numbers_are_read_whole_as_dicom_rs_does() {
        let bytes = include_bytes!("../../../fuzz/corpus/dicom/regression-mem-odd-length-ul");
        let e = decode_dicom_bytes(bytes, ImageLimits::default()).unwrap_err();
        assert!(e.contains("(0031,0008) declares 774963232 bytes"), "{e}");
        assert_eq!(bytes_read_of_value(*b"UL", 26), 24);
        assert_eq!(bytes_read_of_value(*b"US", 5), 4);
        assert_eq!(bytes_read_of_value(*b"FD", 12), 8);
        assert_eq!(bytes_read_of_value(*b"UI", 25), 25);
    }

    /// Regression (fuzzing, 2026-11-30): a group length element (0002,0000) whose VR is not
    /// UL is still read by dicom-rs; the meta length check skipped such a group and dicom-rs
    /// allocated a declared length inside it (2.6 GB).
    #[test]
    fn regression_meta_group_length_with_another_vr_is_checked() {
        let bytes =
            include_bytes!("../../../fuzz/corpus/dicom/regression-oom-meta-group-length-vr");
        let started = std::time::Instant::now();
        let e = decode_dicom_bytes(bytes, ImageLimits::default()).unwrap_err();
        assert!(
            e.contains("invalid DICOM file meta group") && e.contains("declares"),
            "{e}"
        );
        assert!(
            started.elapsed().as_secs_f64() < 0.5,
            "{:?}",
            started.elapsed()
        );
    }

    /// Regression: an RLE header declaring more segments than its 15 offset slots (with
    /// Samples per Pixel to match) indexed past the header.
    #[test]
    fn regression_rle_header_with_more_than_15_segments_is_an_error() {
        let mut fragment = vec![0u8; 64];
        fragment[..4].copy_from_slice(&20u32.to_le_bytes());
        let geometry = Expected {
            rows: 1,
            cols: 1,
            samples: 20,
            bits_allocated: 8,
        };
        let e = check_rle_header(&fragment, &geometry).unwrap_err();
        assert!(e.contains("20 segments, more than the 15"), "{e}");
    }
}

#[cfg(all(test, feature = "testdata"))]
mod file_tests {
    use super::*;
    use crate::testdata::dicom::{
        dicom_bytes, write_dicom, DicomSpec, Photometric, TransferSyntax,
    };
    use std::path::PathBuf;

    /// The original's result computed directly from the spec: stored values (bits above Bits
    /// Stored masked off, sign-extended when signed), MONOCHROME1 inversion, RGB luma, min-max
    /// scaling, truncation.
    fn expected(spec: &DicomSpec) -> Vec<u8> {
        let samples = if spec.photometric == Photometric::Rgb {
            3
        } else {
            1
        };
        let n = (spec.width * spec.height) as usize;
        let (allocated, stored) = (spec.bits_allocated as u32, spec.bits_stored as u32);
        let values: Vec<f64> = spec.pixels[..n * samples]
            .iter()
            .map(|&v| {
                let bits = (v as i64) & ((1 << allocated) - 1) & ((1 << stored) - 1);
                let value = if spec.signed && bits >= 1 << (stored - 1) {
                    bits - (1 << stored)
                } else {
                    bits
                };
                match (&spec.photometric, spec.signed) {
                    (Photometric::Monochrome1, false) => ((1 << stored) - 1 - value) as f64,
                    (Photometric::Monochrome1, true) => (-(value + 1)) as f64,
                    _ => value as f64,
                }
            })
            .collect();
        let grey: Vec<f64> = if samples == 3 {
            values
                .chunks(3)
                .map(|p| (p[0] * 299.0 + p[1] * 587.0 + p[2] * 114.0) / 1000.0)
                .collect()
        } else {
            values
        };
        let min = grey.iter().cloned().fold(f64::MAX, f64::min);
        let max = grey.iter().cloned().fold(f64::MIN, f64::max);
        if max == min {
            return vec![0; n];
        }
        grey.iter()
            .map(|v| (((v - min) * 255.0 / (max - min)) as f32).clamp(0.0, 255.0) as u8)
            .collect()
    }

    fn gray(image: &Image) -> Vec<u8> {
        assert_eq!(image.channels(), 1);
        match image.pixels() {
            ssl_plugin_api::Pixels::U8(v) => v.to_vec(),
            other => panic!("expected 8-bit pixels, got {other:?}"),
        }
    }

    /// A deterministic pseudo-random sequence in `lo..=hi`.
    fn noise(count: usize, lo: i32, hi: i32, seed: u64) -> Vec<i32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..count)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                lo + ((state >> 33) % (hi - lo + 1) as u64) as i32
            })
            .collect()
    }

    /// A smooth gradient with a bright disc, `lo..=hi`, as an X-ray-like test image.
    fn smooth(width: u32, height: u32, lo: i32, hi: i32) -> Vec<i32> {
        let mut out = Vec::new();
        for y in 0..height {
            for x in 0..width {
                let (fx, fy) = (x as f64 / width as f64, y as f64 / height as f64);
                let disc = if (fx - 0.6).powi(2) + (fy - 0.4).powi(2) < 0.04 {
                    0.3
                } else {
                    0.0
                };
                let t = (0.5 * fx + 0.2 * fy + disc).min(1.0);
                out.push(lo + ((hi - lo) as f64 * t) as i32);
            }
        }
        out
    }

    fn spec(
        bits_allocated: u16,
        bits_stored: u16,
        signed: bool,
        photometric: Photometric,
        transfer_syntax: TransferSyntax,
        pixels: Vec<i32>,
    ) -> DicomSpec {
        DicomSpec {
            width: 23,
            height: 17,
            bits_allocated,
            bits_stored,
            signed,
            photometric,
            transfer_syntax,
            pixels,
        }
    }

    /// Files whose decoding is exact (everything but JPEG), named for messages.
    fn exact_cases() -> Vec<(&'static str, DicomSpec)> {
        use Photometric::*;
        use TransferSyntax::*;
        let n = 23 * 17;
        let mut high_bits = noise(n, 0, 4095, 7);
        for (i, v) in high_bits.iter_mut().enumerate() {
            *v |= ((i as i32 * 5) % 16) << 12; // garbage above Bits Stored
        }
        let mut signed12 = noise(n, 0, 4095, 8); // 12-bit two's complement, not sign-extended
        signed12[0] = 0x800; // -2048
        signed12[1] = 0x7FF; // 2047
        vec![
            (
                "u8 explicit LE",
                spec(
                    8,
                    8,
                    false,
                    Monochrome2,
                    ExplicitVrLittleEndian,
                    noise(n, 0, 255, 1),
                ),
            ),
            (
                "u8 implicit LE",
                spec(
                    8,
                    8,
                    false,
                    Monochrome2,
                    ImplicitVrLittleEndian,
                    noise(n, 3, 200, 2),
                ),
            ),
            (
                "u8 explicit BE",
                spec(
                    8,
                    8,
                    false,
                    Monochrome2,
                    ExplicitVrBigEndian,
                    noise(n, 0, 255, 3),
                ),
            ),
            (
                "u16/12 implicit LE",
                spec(
                    16,
                    12,
                    false,
                    Monochrome2,
                    ImplicitVrLittleEndian,
                    noise(n, 0, 4095, 4),
                ),
            ),
            (
                "i16 explicit BE",
                spec(
                    16,
                    16,
                    true,
                    Monochrome2,
                    ExplicitVrBigEndian,
                    noise(n, -32768, 32767, 5),
                ),
            ),
            (
                "u16 deflated",
                spec(
                    16,
                    16,
                    false,
                    Monochrome2,
                    DeflatedExplicitVrLittleEndian,
                    smooth(23, 17, 100, 60000),
                ),
            ),
            (
                "u16/12 high bits set",
                spec(
                    16,
                    12,
                    false,
                    Monochrome2,
                    ExplicitVrLittleEndian,
                    high_bits,
                ),
            ),
            (
                "i16/12 not sign-extended",
                spec(16, 12, true, Monochrome2, ExplicitVrLittleEndian, signed12),
            ),
            (
                "u16/12 MONOCHROME1",
                spec(
                    16,
                    12,
                    false,
                    Monochrome1,
                    ExplicitVrLittleEndian,
                    noise(n, 10, 3000, 9),
                ),
            ),
            (
                "u16/16 MONOCHROME1",
                spec(
                    16,
                    16,
                    false,
                    Monochrome1,
                    ImplicitVrLittleEndian,
                    noise(n, 0, 65535, 10),
                ),
            ),
            (
                "i16 MONOCHROME1",
                spec(
                    16,
                    16,
                    true,
                    Monochrome1,
                    ExplicitVrLittleEndian,
                    noise(n, -32768, 32767, 11),
                ),
            ),
            (
                "i8 MONOCHROME1",
                spec(
                    8,
                    8,
                    true,
                    Monochrome1,
                    ExplicitVrLittleEndian,
                    noise(n, -128, 127, 12),
                ),
            ),
            (
                "u8 RLE",
                spec(
                    8,
                    8,
                    false,
                    Monochrome2,
                    RleLossless,
                    smooth(23, 17, 0, 255),
                ),
            ),
            (
                "i16 RLE",
                spec(
                    16,
                    16,
                    true,
                    Monochrome2,
                    RleLossless,
                    noise(n, -1000, 1000, 13),
                ),
            ),
            (
                "u16/12 RLE MONOCHROME1",
                spec(
                    16,
                    12,
                    false,
                    Monochrome1,
                    RleLossless,
                    smooth(23, 17, 0, 4095),
                ),
            ),
            (
                "RGB explicit LE",
                spec(
                    8,
                    8,
                    false,
                    Rgb,
                    ExplicitVrLittleEndian,
                    noise(3 * n, 0, 255, 14),
                ),
            ),
            (
                "RGB RLE",
                spec(8, 8, false, Rgb, RleLossless, noise(3 * n, 0, 255, 15)),
            ),
            (
                "3 frames",
                spec(
                    16,
                    16,
                    false,
                    Monochrome2,
                    ExplicitVrLittleEndian,
                    noise(3 * n, 0, 65535, 16),
                ),
            ),
            (
                "2 frames RLE",
                spec(
                    8,
                    8,
                    false,
                    Monochrome2,
                    RleLossless,
                    noise(2 * n, 0, 255, 17),
                ),
            ),
        ]
    }

    fn write_cases(dir: &Path, cases: &[(&str, DicomSpec)]) -> Vec<PathBuf> {
        cases
            .iter()
            .enumerate()
            .map(|(i, (_, spec))| {
                let path = dir.join(format!("case{i}.dcm"));
                write_dicom(&path, spec).unwrap();
                path
            })
            .collect()
    }

    #[test]
    fn each_variant_decodes_to_the_expected_values() {
        let dir = tempfile::tempdir().unwrap();
        let cases = exact_cases();
        for ((name, spec), path) in cases.iter().zip(write_cases(dir.path(), &cases)) {
            let image = decode_dicom_gray8(&path, ImageLimits::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (image.width(), image.height()),
                (spec.width, spec.height),
                "{name}"
            );
            let (got, want) = (gray(&image), expected(spec));
            assert_eq!(got, want, "{name}");
            assert_eq!(*want.iter().max().unwrap(), 255, "{name}: full range");
            assert_eq!(*want.iter().min().unwrap(), 0, "{name}: full range");
        }
    }

    #[test]
    fn monochrome1_inverts_16_bit_unsigned_and_signed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m1.dcm");
        let mut spec = DicomSpec::gray16(4, 1, 12, vec![0, 1000, 4000, 4095]);
        spec.photometric = Photometric::Monochrome1;
        write_dicom(&path, &spec).unwrap();
        // 4095 - px: [4095, 3095, 95, 0] -> scaled by 255/4095
        let want: Vec<u8> = [4095.0, 3095.0, 95.0, 0.0]
            .iter()
            .map(|v: &f64| (v * 255.0 / 4095.0) as u8)
            .collect();
        assert_eq!(
            gray(&decode_dicom_gray8(&path, ImageLimits::default()).unwrap()),
            want
        );
        assert_eq!(want, vec![255, 192, 5, 0]);

        spec.signed = true;
        spec.bits_stored = 16;
        spec.pixels = vec![-32768, -1, 0, 32767];
        write_dicom(&path, &spec).unwrap();
        // -(px + 1): [32767, 0, -1, -32768]
        assert_eq!(
            gray(&decode_dicom_gray8(&path, ImageLimits::default()).unwrap()),
            vec![255, 127, 127, 0]
        );
        spec.photometric = Photometric::Monochrome2;
        write_dicom(&path, &spec).unwrap();
        assert_eq!(
            gray(&decode_dicom_gray8(&path, ImageLimits::default()).unwrap()),
            vec![0, 127, 127, 255]
        );
    }

    #[test]
    fn a_constant_image_gives_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.dcm");
        // The original's test fixture: np.ones([256, 256], uint16), MONOCHROME2.
        write_dicom(&path, &DicomSpec::gray16(256, 256, 16, vec![1; 256 * 256])).unwrap();
        let image = decode_dicom_gray8(&path, ImageLimits::default()).unwrap();
        assert_eq!((image.width(), image.height()), (256, 256));
        assert!(gray(&image).iter().all(|&v| v == 0));
    }

    fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(&x, &y)| (x as f64 - y as f64).abs())
            .sum::<f64>()
            / a.len() as f64
    }

    #[test]
    fn jpeg_baseline_decodes_within_a_small_tolerance() {
        let dir = tempfile::tempdir().unwrap();
        let mut grey = DicomSpec::gray8(64, 48, smooth(64, 48, 20, 230));
        grey.transfer_syntax = TransferSyntax::JpegBaseline;
        let mut frames = grey.clone();
        frames.pixels.extend(smooth(64, 48, 0, 100));
        let mut rgb = grey.clone();
        rgb.photometric = Photometric::Rgb;
        rgb.pixels = grey.pixels.iter().flat_map(|&v| [v, v, v]).collect();
        for (name, spec) in [("grey", &grey), ("2 frames", &frames), ("RGB", &rgb)] {
            let path = dir.path().join(format!("{name}.dcm"));
            write_dicom(&path, spec).unwrap();
            let got = gray(
                &decode_dicom_gray8(&path, ImageLimits::default())
                    .unwrap_or_else(|e| panic!("{name}: {e}")),
            );
            let want = expected(&grey);
            let mad = mean_abs_diff(&got, &want);
            assert!(mad <= 1.5, "{name}: mean abs difference {mad}");
            let max = got
                .iter()
                .zip(&want)
                .map(|(&a, &b)| a.abs_diff(b))
                .max()
                .unwrap();
            assert!(max <= 12, "{name}: max difference {max}");
        }
    }

    fn assert_error(path: &Path, what: &[&str]) -> String {
        let error = decode_dicom_gray8(path, ImageLimits::default())
            .expect_err("expected an error")
            .to_string();
        assert!(
            error.contains(&path.display().to_string()),
            "no file name in: {error}"
        );
        for w in what {
            assert!(error.contains(w), "{w:?} not in: {error}");
        }
        error
    }

    #[test]
    fn non_dicom_missing_and_unsupported_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.dcm");
        std::fs::write(&text, "patientId,Target\n".repeat(20)).unwrap();
        assert_error(&text, &["not a DICOM Part-10 file"]);
        let tiny = dir.path().join("tiny.dcm");
        std::fs::write(&tiny, b"DICM").unwrap();
        assert_error(&tiny, &["not a DICOM Part-10 file"]);
        assert_error(&dir.path().join("missing.dcm"), &["cannot read"]);

        let mut spec = DicomSpec::gray8(8, 8, vec![7; 64]);
        spec.transfer_syntax = TransferSyntax::Encapsulated("1.2.840.10008.1.2.4.201".into());
        let htj2k = dir.path().join("htj2k.dcm");
        write_dicom(&htj2k, &spec).unwrap();
        assert_error(
            &htj2k,
            &[
                "1.2.840.10008.1.2.4.201",
                "High-Throughput JPEG 2000",
                "cannot be decoded",
            ],
        );
        spec.transfer_syntax = TransferSyntax::Encapsulated("1.2.3.4.5.6".into());
        let unknown = dir.path().join("unknown.dcm");
        write_dicom(&unknown, &spec).unwrap();
        assert_error(&unknown, &["1.2.3.4.5.6", "unsupported transfer syntax"]);
    }

    /// A deflated data set of which nothing inflates is an error of ours (dicom-rs would read
    /// garbage by declared lengths from it).
    #[test]
    fn a_deflated_data_set_that_does_not_inflate_is_an_error() {
        let mut spec = DicomSpec::gray8(8, 8, vec![7; 64]);
        spec.transfer_syntax = TransferSyntax::DeflatedExplicitVrLittleEndian;
        let mut bytes = dicom_bytes(&spec).unwrap();
        let start = 132 + check_meta_lengths(&bytes[132..]).unwrap();
        bytes[start] = 0xFF; // final block of the reserved (invalid) type 3
        let e = decode_dicom_bytes(&bytes, ImageLimits::default()).unwrap_err();
        assert!(e.contains("the deflated data set does not inflate"), "{e}");
    }

    #[test]
    fn truncated_files_are_errors_without_panics() {
        let dir = tempfile::tempdir().unwrap();
        let mut jpeg = DicomSpec::gray8(32, 32, smooth(32, 32, 0, 255));
        jpeg.transfer_syntax = TransferSyntax::JpegBaseline;
        let mut rle = DicomSpec::gray16(32, 32, 16, smooth(32, 32, 0, 65535));
        rle.transfer_syntax = TransferSyntax::RleLossless;
        let mut deflated = rle.clone();
        deflated.transfer_syntax = TransferSyntax::DeflatedExplicitVrLittleEndian;
        let plain = DicomSpec::gray16(32, 32, 12, smooth(32, 32, 0, 4095));
        let path = dir.path().join("cut.dcm");
        for (name, spec) in [
            ("jpeg", jpeg),
            ("rle", rle),
            ("deflated", deflated),
            ("plain", plain),
        ] {
            let bytes = dicom_bytes(&spec).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            let full = decode_dicom_gray8(&path, ImageLimits::default()).unwrap();
            let mut decoded = 0;
            for cut in (0..bytes.len())
                .step_by(7)
                .chain([bytes.len() - 9, bytes.len() - 1])
            {
                std::fs::write(&path, &bytes[..cut]).unwrap();
                match decode_dicom_gray8(&path, ImageLimits::default()) {
                    // What may go missing unnoticed is the end of the file after the pixels:
                    // the sequence delimiter, or the end of the deflate stream.
                    Ok(image) => {
                        assert_eq!(image, full, "{name} cut at {cut} decoded to other pixels");
                        assert!(
                            cut + 16 >= bytes.len(),
                            "{name} cut at {cut} of {} decoded",
                            bytes.len()
                        );
                        decoded += 1;
                    }
                    Err(error) => {
                        let error = error.to_string();
                        assert!(error.contains(&path.display().to_string()), "{error}");
                        assert!(
                            !error.contains("decoder failed"),
                            "{name} cut at {cut} panicked: {error}"
                        );
                    }
                }
            }
            assert!(decoded <= 2, "{name}: {decoded} truncated files decoded");
        }
        let bytes = dicom_bytes(&DicomSpec::gray8(16, 16, vec![3; 256])).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let error = assert_error(&path, &["corrupt or truncated", "1.2.840.10008.1.2.1"]);
        assert!(error.contains("Explicit VR Little Endian"), "{error}");
    }

    #[test]
    fn corrupt_compressed_data_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corrupt.dcm");
        let mut jpeg = DicomSpec::gray8(32, 24, smooth(32, 24, 0, 255));
        jpeg.transfer_syntax = TransferSyntax::JpegBaseline;
        let mut rle = DicomSpec::gray16(32, 24, 16, noise(32 * 24, 0, 65535, 3));
        rle.transfer_syntax = TransferSyntax::RleLossless;
        for spec in [jpeg, rle] {
            let clean = dicom_bytes(&spec).unwrap();
            let pixel_start = clean.len() - 600;
            for (k, flip) in noise(300, 0, 599, 42).into_iter().enumerate() {
                let mut bytes = clean.clone();
                let at = pixel_start + flip as usize;
                bytes[at] ^= [0xFF, 0x01, 0x80, 0x3C][k % 4];
                std::fs::write(&path, &bytes).unwrap();
                if let Err(error) = decode_dicom_gray8(&path, ImageLimits::default()) {
                    let error = error.to_string();
                    assert!(
                        !error.contains("decoder failed"),
                        "byte {at} panicked: {error}"
                    );
                }
            }
        }
    }

    /// The acceptance check: the same files through pydicom + the original's formula + PIL,
    /// in the venv python.
    #[test]
    fn matches_pydicom_and_pil() {
        let python =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.deps/torch-venv/bin/python");
        assert!(
            python.exists(),
            "the venv python {} is missing: create it (torch venv with numpy, pillow, pydicom) \
             to run this acceptance test",
            python.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let mut cases = exact_cases();
        // Multi-frame and RGB files make the original fail (PIL rejects 3-D float arrays).
        cases.retain(|(name, _)| !name.contains("frames") && !name.contains("RGB"));
        let mut jpeg = DicomSpec::gray8(64, 48, smooth(64, 48, 20, 230));
        jpeg.transfer_syntax = TransferSyntax::JpegBaseline;
        cases.push(("JPEG baseline", jpeg));
        let paths = write_cases(dir.path(), &cases);

        const SCRIPT: &str = r#"
import sys, numpy as np, pydicom
from PIL import Image
for src in sys.argv[1:]:
    ds = pydicom.dcmread(src)
    px = ds.pixel_array
    if ds.PhotometricInterpretation == "MONOCHROME1":
        px = 2 ** ds.BitsStored - 1 - px if ds.PixelRepresentation == 0 else -1 * (px + 1)
    img = px.astype(np.float64)
    img = (img - img.min()) * 255. / (img.max() - img.min())
    out = np.asarray(Image.fromarray(img).convert("L"))
    open(src + ".L", "wb").write(out.tobytes())
"#;
        let output = std::process::Command::new(&python)
            .arg("-c")
            .arg(SCRIPT)
            .args(&paths)
            .output()
            .expect("run the venv python");
        assert!(
            output.status.success(),
            "pydicom failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for ((name, _), path) in cases.iter().zip(&paths) {
            let theirs = std::fs::read(path.with_extension("dcm.L")).unwrap();
            let ours = gray(&decode_dicom_gray8(path, ImageLimits::default()).unwrap());
            if name.starts_with("JPEG") {
                let mad = mean_abs_diff(&ours, &theirs);
                assert!(mad <= 1.0, "{name}: mean abs difference {mad} from pydicom");
            } else {
                assert_eq!(ours, theirs, "{name}: differs from pydicom");
            }
        }
    }

    /// Writes the compressed-syntax cases of `testdata/dicom_codecs.py` (imagecodecs encodes,
    /// pydicom + pylibjpeg/openjpeg decode as the original) into `dir`; returns (name, uid,
    /// lossless) per case.
    fn codec_cases(dir: &Path) -> Vec<(String, String, bool)> {
        let python =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.deps/torch-venv/bin/python");
        assert!(
            python.exists(),
            "the venv python {} is missing: run scripts/setup-libtorch.sh (it installs \
             pydicom, pylibjpeg and imagecodecs for this acceptance test)",
            python.display()
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/testdata/dicom_codecs.py");
        let output = std::process::Command::new(&python)
            .arg(&script)
            .arg(dir)
            .output()
            .expect("run the venv python");
        assert!(
            output.status.success(),
            "dicom_codecs.py failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::read_to_string(dir.join("cases.tsv"))
            .unwrap()
            .lines()
            .map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                (f[0].to_string(), f[1].to_string(), f[2] == "lossless")
            })
            .collect()
    }

    /// The acceptance check of the compressed syntaxes: JPEG lossless (process 14 and SV1,
    /// 8/12/16-bit), JPEG extended 12-bit, JPEG baseline, JPEG-LS lossless and near-lossless,
    /// JPEG 2000 lossless (signed too) and lossy (bare and JP2-wrapped), and colour files
    /// (RGB JPEG lossless, JPEG-LS and JPEG 2000 with its colour transform, YBR_FULL_422
    /// baseline): exact for the lossless ones, within a mean of 1 grey level for the lossy
    /// ones, after the original's 8-bit scaling (colour: our luma, which the original lacks).
    #[test]
    fn compressed_syntaxes_match_pydicom() {
        let dir = tempfile::tempdir().unwrap();
        let cases = codec_cases(dir.path());
        assert!(cases.len() >= 21, "only {} cases", cases.len());
        for uid in [
            "4.50", "4.51", "4.57", "4.70", "4.80", "4.81", "4.90", "4.91",
        ] {
            assert!(
                cases
                    .iter()
                    .any(|(_, u, _)| *u == format!("1.2.840.10008.1.2.{uid}")),
                "no case of 1.2.840.10008.1.2.{uid}"
            );
        }
        for (name, uid, lossless) in &cases {
            let path = dir.path().join(format!("{name}.dcm"));
            let theirs = std::fs::read(dir.path().join(format!("{name}.L"))).unwrap();
            let ours = decode_dicom_gray8(&path, ImageLimits::default())
                .unwrap_or_else(|e| panic!("{name} ({uid}): {e}"));
            let ours = gray(&ours);
            assert_eq!(ours.len(), theirs.len(), "{name}: size");
            let mad = mean_abs_diff(&ours, &theirs);
            eprintln!("{name} ({uid}): mean abs difference from pydicom {mad:.4}");
            if *lossless {
                assert_eq!(
                    ours, theirs,
                    "{name} ({uid}): differs from pydicom (mad {mad})"
                );
            } else {
                assert!(
                    mad <= 1.0,
                    "{name} ({uid}): mean abs difference {mad} from pydicom"
                );
            }
        }
    }

    /// The frame headers of the compressed syntaxes are checked against the DICOM attributes
    /// before decoding; damaged streams are errors, never panics.
    #[test]
    fn compressed_syntax_headers_are_checked_and_corruption_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cases = codec_cases(dir.path());
        let limits = ImageLimits::default();
        for (name, uid, _) in &cases {
            let clean = std::fs::read(dir.path().join(format!("{name}.dcm"))).unwrap();
            // The frame header sits near the start of the Pixel Data; find the fragment's
            // start after the (FFFE,E000) item tags (offset table, then first fragment).
            let item = [0xFEu8, 0xFF, 0x00, 0xE0];
            let first = clean.windows(4).position(|w| w == item).unwrap();
            let fragment = first
                + 8
                + clean[first + 8..]
                    .windows(4)
                    .position(|w| w == item)
                    .unwrap()
                + 8;
            // Truncating the codestream is an error naming the syntax.
            let cut = fragment + (clean.len() - fragment) / 2;
            let mut truncated = clean[..cut].to_vec();
            // Keep the item's declared length consistent with the bytes left, so that the
            // codec (not the DICOM parser) meets the truncation.
            let new_len = (cut - fragment) as u32;
            truncated[fragment - 4..fragment].copy_from_slice(&new_len.to_le_bytes());
            truncated.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
            let error = decode_dicom_bytes(&truncated, limits)
                .err()
                .unwrap_or_else(|| panic!("{name}: a half codestream decoded"));
            assert!(error.contains(uid.as_str()), "{name}: {error}");
            assert!(
                !error.contains("decoder failed"),
                "{name} panicked: {error}"
            );
            // Flipped bytes all through the codestream: errors or images, never panics.
            for (k, flip) in noise(200, 0, (clean.len() - fragment - 1) as i32, 7)
                .into_iter()
                .enumerate()
            {
                let mut bytes = clean.clone();
                bytes[fragment + flip as usize] ^= [0xFF, 0x01, 0x80, 0x3C][k % 4];
                if let Err(error) = decode_dicom_bytes(&bytes, limits) {
                    assert!(
                        !error.contains("decoder failed"),
                        "{name} panicked: {error}"
                    );
                }
            }
        }
        // A frame header that disagrees with Rows/Columns is refused before decoding.
        for name in [
            "jpeg_lossless_sv1_12bit",
            "jpegls_lossless_12bit",
            "j2k_lossless_12bit",
        ] {
            let mut bytes = std::fs::read(dir.path().join(format!("{name}.dcm"))).unwrap();
            // Rows (0028,0010) US 2 bytes: 45 → 44.
            let rows = bytes
                .windows(6)
                .position(|w| w == [0x28, 0x00, 0x10, 0x00, b'U', b'S'])
                .unwrap();
            assert_eq!(bytes[rows + 8], 45);
            bytes[rows + 8] = 44;
            let error = decode_dicom_bytes(&bytes, limits).unwrap_err();
            assert!(
                error.contains("but Columns×Rows is 67×44"),
                "{name}: {error}"
            );
        }
    }

    #[test]
    fn j2k_tile_count_and_jp2_boxes_are_checked() {
        let expected = Expected {
            rows: 4000,
            cols: 4000,
            samples: 1,
            bits_allocated: 16,
        };
        // SOC, SIZ with 1×1 tiles on a 4000×4000 image.
        let mut siz = vec![0xFF, 0x4F, 0xFF, 0x51, 0, 41, 0, 0];
        for v in [4000u32, 4000, 0, 0, 1, 1, 0, 0] {
            siz.extend_from_slice(&v.to_be_bytes());
        }
        siz.extend_from_slice(&[0, 1, 11, 1, 1]);
        let error = match dicom_codecs::decode_frame(Codec::Jpeg2000, &siz, &expected) {
            Err(e) => e,
            Ok(_) => panic!("16 M tiles accepted"),
        };
        assert!(error.contains("16000000 tiles"), "{error}");
        let error =
            match dicom_codecs::decode_frame(Codec::Jpeg2000, b"\0\0\0\x0cjP  junk", &expected) {
                Err(e) => e,
                Ok(_) => panic!("junk accepted"),
            };
        assert!(error.contains("no codestream box"), "{error}");
    }
}
