"""What one frame may cost: at most MAX_FRAME_PIXELS, whatever the source delivers.

A 10000x10000 photo in an image folder takes 300 MB as a BGR array, and the decoder, the frame handed
over and the detector's copies took the daemon to about 700 MB: more than a small Pi can spare. Here:

- a JPEG larger than the limit is decoded scaled down by libjpeg itself (1/2, 1/4 or 1/8), so the full
  image is never in memory; its size comes from the header, so ordinary frames are decoded once as before;
- a PNG larger than the limit is refused: libpng cannot decode scaled, so the decoder alone would need the
  whole image;
- any other frame larger than the limit (video, stream, other image formats) is shrunk right after it is
  read, before it is handed to the pipeline.

4K (3840x2160) is far more than the detector and the expression model use: the detector works on a copy
`detector.detect_width` (320) pixels wide, the model on 48-pixel faces.
"""

from __future__ import annotations

import math
import struct

import cv2
import numpy as np

MAX_FRAME_PIXELS = 3840 * 2160

_REDUCED_COLOR = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
# Start-of-frame markers (baseline, progressive, lossless, arithmetic); they carry the image size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FrameTooLarge(Exception):
    """The image cannot be read within MAX_FRAME_PIXELS; the message says how large it is."""


def decode_bounded(data: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Decode an encoded image (uint8 bytes) within the limit: (image or None if undecodable, a note when it
    was read smaller than it is). Raises FrameTooLarge for an image that cannot be read within the limit."""
    head = data[:65536].tobytes()  # a JPEG's size can sit behind an EXIF thumbnail, rarely further
    size = _png_size(head) if head.startswith(_PNG_SIGNATURE) else _jpeg_size(head)
    if size is None or size[0] * size[1] <= MAX_FRAME_PIXELS:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if image is None or image.shape[0] * image.shape[1] <= MAX_FRAME_PIXELS:
            return image, None
        return shrunk(image), f"{image.shape[1]}x{image.shape[0]}, shrunk"
    width, height = size
    if head.startswith(_PNG_SIGNATURE):
        raise FrameTooLarge(f"a {width}x{height} PNG cannot be decoded in less memory than the whole image")
    factor = next((f for f in (2, 4, 8) if math.ceil(width / f) * math.ceil(height / f) <= MAX_FRAME_PIXELS), None)
    if factor is None:
        raise FrameTooLarge(f"{width}x{height} is more than 64 times the limit even read at 1/8 scale")
    return cv2.imdecode(data, _REDUCED_COLOR[factor]), f"{width}x{height}, read at 1/{factor} scale"


def shrunk(image: np.ndarray) -> np.ndarray:
    """`image` scaled down (area averaging) to at most MAX_FRAME_PIXELS; unchanged if already within."""
    height, width = image.shape[:2]
    if width * height <= MAX_FRAME_PIXELS:
        return image
    scale = math.sqrt(MAX_FRAME_PIXELS / (width * height))
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def limit_text() -> str:
    return f"frames are limited to {MAX_FRAME_PIXELS / 1e6:.1f} megapixels"


def _png_size(head: bytes) -> tuple[int, int] | None:
    # The IHDR chunk comes first: width and height right after its type.
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment; None for anything that is not a JPEG."""
    if not head.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 9 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", head[at + 5 : at + 9])
            return width, height
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
        else:
            at += 2 + struct.unpack(">H", head[at + 2 : at + 4])[0]
    return None
