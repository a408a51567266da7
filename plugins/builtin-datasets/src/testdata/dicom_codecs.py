"""Writes DICOM files in the compressed transfer syntaxes that hospital archives hold, and what
the original makes of each (pydicom's pixel_array with its pylibjpeg / openjpeg plugins, the
original's 8-bit scaling, PIL's convert("L")).

    python dicom_codecs.py OUT_DIR

The frames are compressed with imagecodecs (libjpeg-turbo 3, CharLS, OpenJPEG), independently
of the decoders pydicom uses (pylibjpeg-libjpeg, pylibjpeg-openjpeg) and of ours. For each case
NAME it writes NAME.dcm, NAME.L (the original's 8-bit image, row-major bytes), and one line of
OUT_DIR/cases.tsv: NAME, transfer syntax UID, "lossless" or "lossy". For lossless cases it
asserts that pydicom gives back the stored values exactly.
"""

import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def picture(width, height, bits, seed, signed=False):
    """A smooth gradient with disks and noise, spanning most of `bits` bits."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    top = 2.0**bits - 1
    img = 0.15 * top + 0.6 * top * (x / width) * (0.5 + 0.5 * y / height)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(4, width / 3)
        img += np.where((x - cx) ** 2 + (y - cy) ** 2 < r * r, 0.2 * top, 0.0)
    img += rng.normal(0, 0.01 * top, img.shape)
    img = np.clip(np.round(img), 0, top)
    if signed:
        img -= 2.0 ** (bits - 1)
        return img.astype(np.int16)
    return img.astype(np.uint8 if bits <= 8 else np.uint16)


def write(path, uid, frame, pixels, bits_stored, photometric="MONOCHROME2", signed=False):
    colour = pixels.ndim == 3
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = uid
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if pixels.dtype.itemsize == 1 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def original_8bit(path):
    """InnerEyeCXRDatasetBase on top of pydicom, as in the existing acceptance test; colour
    images (which the original's PIL call rejects) through the luma that ssl-host documents,
    (R*299 + G*587 + B*114) / 1000, then the same scaling."""
    ds = pydicom.dcmread(path)
    px = ds.pixel_array
    if px.ndim == 3:
        px = (px[..., 0] * 299.0 + px[..., 1] * 587.0 + px[..., 2] * 114.0) / 1000.0
    if ds.PhotometricInterpretation == "MONOCHROME1":
        px = 2**ds.BitsStored - 1 - px if ds.PixelRepresentation == 0 else -1 * (px + 1)
    img = px.astype(np.float64)
    img = (img - img.min()) * 255.0 / (img.max() - img.min())
    return ds, np.asarray(Image.fromarray(img).convert("L"))


def cases():
    w, h = 67, 45  # not multiples of 8 or 16: partial blocks and tiles
    g8, g12, g16 = picture(w, h, 8, 1), picture(w, h, 12, 2), picture(w, h, 16, 3)
    s16 = picture(w, h, 16, 4, signed=True)
    jpeg = imagecodecs.jpeg8_encode
    yield "jpeg_lossless_sv1_8bit", "1.2.840.10008.1.2.4.70", jpeg(g8, lossless=True, predictor=1), g8, 8, {}
    yield "jpeg_lossless_sv1_12bit", "1.2.840.10008.1.2.4.70", jpeg(g12, lossless=True, predictor=1, bitspersample=12), g12, 12, {}
    yield "jpeg_lossless_sv1_16bit", "1.2.840.10008.1.2.4.70", jpeg(g16, lossless=True, predictor=1, bitspersample=16), g16, 16, {}
    yield "jpeg_lossless_p14_predictor6_12bit", "1.2.840.10008.1.2.4.57", jpeg(g12, lossless=True, predictor=6, bitspersample=12), g12, 12, {}
    yield "jpeg_lossless_sv1_12bit_monochrome1", "1.2.840.10008.1.2.4.70", jpeg(g12, lossless=True, predictor=1, bitspersample=12), g12, 12, {"photometric": "MONOCHROME1"}
    yield "jpeg_extended_12bit", "1.2.840.10008.1.2.4.51", jpeg(g12, level=90, bitspersample=12), g12, 12, {"lossy": True}
    yield "jpeg_extended_12bit_q50", "1.2.840.10008.1.2.4.51", jpeg(g12, level=50, bitspersample=12), g12, 12, {"lossy": True}
    yield "jpeg_baseline_8bit", "1.2.840.10008.1.2.4.50", jpeg(g8, level=85), g8, 8, {"lossy": True}
    yield "jpegls_lossless_8bit", "1.2.840.10008.1.2.4.80", imagecodecs.jpegls_encode(g8), g8, 8, {}
    yield "jpegls_lossless_12bit", "1.2.840.10008.1.2.4.80", imagecodecs.jpegls_encode(g12), g12, 12, {}
    yield "jpegls_lossless_16bit_monochrome1", "1.2.840.10008.1.2.4.80", imagecodecs.jpegls_encode(g16), g16, 16, {"photometric": "MONOCHROME1"}
    yield "jpegls_near_lossless_12bit", "1.2.840.10008.1.2.4.81", imagecodecs.jpegls_encode(g12, level=3), g12, 12, {"lossy": True}
    j2k = imagecodecs.jpeg2k_encode
    yield "j2k_lossless_8bit", "1.2.840.10008.1.2.4.90", j2k(g8, codecformat="J2K", reversible=True), g8, 8, {}
    yield "j2k_lossless_12bit", "1.2.840.10008.1.2.4.90", j2k(g12, codecformat="J2K", reversible=True, bitspersample=12), g12, 12, {}
    yield "j2k_lossless_16bit_signed", "1.2.840.10008.1.2.4.90", j2k(s16, codecformat="J2K", reversible=True), s16, 16, {"signed": True}
    yield "j2k_lossy_12bit", "1.2.840.10008.1.2.4.91", j2k(g12, level=45, codecformat="J2K", reversible=False, bitspersample=12), g12, 12, {"lossy": True}
    rgb = np.stack([picture(w, h, 8, seed) for seed in (5, 6, 7)], -1)
    yield "colour_jpeg_lossless_rgb", "1.2.840.10008.1.2.4.70", jpeg(rgb, lossless=True, predictor=1), rgb, 8, {"photometric": "RGB"}
    yield "colour_jpeg_baseline_ybr_full_422", "1.2.840.10008.1.2.4.50", jpeg(rgb, level=90), rgb, 8, {"photometric": "YBR_FULL_422", "lossy": True}
    yield "colour_jpegls_lossless_rgb", "1.2.840.10008.1.2.4.80", imagecodecs.jpegls_encode(rgb), rgb, 8, {"photometric": "RGB"}
    yield "colour_j2k_lossless_ybr_rct", "1.2.840.10008.1.2.4.90", j2k(rgb, codecformat="J2K", reversible=True), rgb, 8, {"photometric": "YBR_RCT"}
    yield "j2k_lossy_8bit_jp2_wrapped", "1.2.840.10008.1.2.4.91", j2k(g8, level=40, codecformat="JP2", reversible=False), g8, 8, {"lossy": True}


def main(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, uid, frame, pixels, bits, opts in cases():
        path = out / f"{name}.dcm"
        write(path, uid, frame, pixels, bits, opts.get("photometric", "MONOCHROME2"), opts.get("signed", False))
        ds, l8 = original_8bit(path)
        if not opts.get("lossy"):
            got = ds.pixel_array
            assert np.array_equal(got, pixels), f"{name}: pydicom does not give back the stored values"
        (out / f"{name}.L").write_bytes(l8.tobytes())
        lines.append(f"{name}\t{uid}\t{'lossy' if opts.get('lossy') else 'lossless'}\n")
    (out / "cases.tsv").write_text("".join(lines))


if __name__ == "__main__":
    main(sys.argv[1])
