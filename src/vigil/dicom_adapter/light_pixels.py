"""The pixels of a common-case instance, decoded as pydicom decodes them, without pydicom.

:func:`light_pixels` returns the one frame of a
:class:`~vigil.dicom_adapter.light.LightInstance`: native pixels (Explicit VR Little
Endian) as a view of their bytes; RLE Lossless (PS3.5 Annex G: a 64-byte header of
segment offsets, each segment PackBits-coded, segment 0 the most significant bytes)
decoded here; JPEG-LS Lossless (PS3.5 §A.4.3) by CharLS through ``jpeg_ls``, the call
pydicom's own pyjpegls plugin makes. Anything else (signed compressed pixels, signed
native pixels with unused high bits, an RLE frame with padding or another segment
count, a JPEG-LS stream whose size or precision differs from the header's, several
frames) returns None, and the caller decodes the instance with pydicom.
``tests/dicom_adapter/test_light.py`` checks the arrays (values and dtype) against
pydicom's on every scanner variant the project writes.
"""

from __future__ import annotations

import struct

import numpy as np
from numpy.typing import NDArray

from vigil.dicom_adapter.light import EXPLICIT_LE, RLE_LOSSLESS, LightInstance

__all__ = ["light_pixels"]


def _packbits(src: memoryview | bytes) -> bytearray:
    """Decode one RLE segment (PS3.5 §G.3.1: PackBits)."""
    out = bytearray()
    pos, n = 0, len(src)
    while pos < n:
        header = src[pos]
        pos += 1
        if header < 128:  # copy the next header + 1 bytes literally
            out += src[pos:pos + header + 1]
            pos += header + 1
        elif header > 128:  # repeat the next byte 257 - header times
            out += bytes(src[pos:pos + 1]) * (257 - header)
            pos += 1
    return out


def _rle_frame(frame: bytes, rows: int, columns: int, allocated: int) -> NDArray[np.integer] | None:
    """One RLE Lossless frame of one sample (PS3.5 Annex G), or None outside the common case."""
    per = allocated // 8
    if len(frame) < 64:
        return None
    header = struct.unpack_from("<16I", frame)
    count, offsets = header[0], list(header[1:1 + header[0]])
    increasing = all(a < b for a, b in zip(offsets, offsets[1:], strict=False))
    if count != per or offsets[0] != 64 or not increasing or offsets[-1] >= len(frame):
        return None
    bounds = [*offsets, len(frame)]
    n = rows * columns
    planes = [_packbits(memoryview(frame)[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    if any(len(p) != n for p in planes):
        return None  # short, or padded: pydicom warns or fails; its path decides
    out = np.zeros(n, dtype=np.uint16 if per == 2 else np.uint8)
    for k, plane in enumerate(planes):  # segment 0 holds the most significant bytes
        out |= np.frombuffer(plane, dtype=np.uint8).astype(out.dtype) << (8 * (per - 1 - k))
    return out.reshape(rows, columns)


def _jpeg_ls_frame(frame: bytes, rows: int, columns: int, allocated: int
                   ) -> NDArray[np.integer] | None:
    """One JPEG-LS frame decoded by CharLS, as pydicom's pyjpegls plugin does; None otherwise."""
    import jpeg_ls

    try:
        buffer, info = jpeg_ls.decode_pixel_data(frame)
    except Exception:  # noqa: BLE001 - a stream CharLS refuses: pydicom's path gives the reason
        return None
    precision = int(info.get("bits_per_sample", 0))
    per = 1 if 0 < precision <= 8 else 2 if 8 < precision <= 16 else 0
    if (info.get("components") != 1 or per * 8 != allocated or info.get("width") != columns
            or info.get("height") != rows or len(buffer) != rows * columns * per):
        return None
    return np.frombuffer(buffer, dtype=np.uint8 if per == 1 else "<u2").reshape(rows, columns)


def light_pixels(inst: LightInstance) -> NDArray[np.integer] | None:
    """Decode the one frame of a common-case instance to stored values, as pydicom does.

    Returns
    -------
    ndarray of integers, shape (Rows, Columns), or None
        ``uint8``/``uint16`` (``int8``/``int16`` for signed native pixels); None
        outside the common case (module notes): read the instance with pydicom.
    """
    h = inst.header
    rows, columns, allocated = h.get("Rows"), h.get("Columns"), h.get("BitsAllocated")
    stored, signed = h.get("BitsStored"), h.get("PixelRepresentation")
    frames, pixels = h.get("NumberOfFrames", 1), inst.pixels
    if not all(isinstance(v, int) for v in (rows, columns, allocated, stored, signed)) or \
            allocated not in (8, 16) or signed not in (0, 1) or frames not in (1, None) or \
            h.get("SamplesPerPixel") != 1 or not rows or not columns or pixels is None:
        return None
    if inst.syntax == EXPLICIT_LE:
        if not isinstance(pixels, memoryview) or (signed and stored != allocated):
            return None
        n = rows * columns * allocated // 8
        if len(pixels) not in (n, n + (n % 2)):
            return None
        kind = {(8, 0): np.uint8, (8, 1): np.int8, (16, 0): "<u2", (16, 1): "<i2"}[
            (allocated, signed)]
        stored_values = np.frombuffer(pixels[:n], dtype=kind).reshape(rows, columns).copy()
    elif signed or not isinstance(pixels, list) or not pixels:
        return None
    elif inst.syntax == RLE_LOSSLESS:
        stored_values = _rle_frame(b"".join(pixels), rows, columns, allocated)
    else:
        stored_values = _jpeg_ls_frame(b"".join(pixels), rows, columns, allocated)
    if stored_values is not None and not signed and stored < allocated and \
            int(stored_values.max(initial=0)) >> stored:
        return None  # bits set above Bits Stored (damage): pydicom's masking decides them
    return stored_values
