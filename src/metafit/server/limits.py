"""Per-image and per-request pixel caps, checked from the images' headers before any
pixel is decoded.

A small 1-bit PNG can declare 12000 x 12000 pixels (PIL warns only past ~89 megapixels):
decoding it costs far more CPU than its size suggests. :func:`decode_images` reads each
posted image's base64 (:func:`check_images` takes uploaded files' bytes), then its width
and height from the header alone (``PIL.Image.open`` is lazy), and refuses an image over
``max_image_pixels`` or a request whose images add up to more than ``max_request_pixels``,
naming the input. Only PNG and JPEG are accepted (the API's documented formats: the
other decoders are never reached by a client).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Sequence

from metafit.data.image_folder import ImageTooLarge, image_dimensions
from metafit.server.errors import ApiError

__all__ = ["decode_images", "check_images", "decode_base64", "IMAGE_FORMATS"]

#: The image formats the server accepts (PIL format names).
IMAGE_FORMATS = ("PNG", "JPEG")


def decode_base64(data: str, where: str) -> bytes:
    """The bytes of base64 ``data``.

    Raises:
        ValueError: not valid base64 (the message names ``where``).
    """
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"{where}: not valid base64 ({e})") from e


def decode_images(images: Sequence[str], where: str, max_image_pixels: int,
                  max_request_pixels: int, prefix: str = "") -> list[bytes]:
    """The file bytes of base64 ``images`` (the field ``where``, e.g. ``inputs``), each a
    PNG or JPEG within the pixel caps (:func:`check_images`; an image's base64 is decoded
    only once the images before it passed). Blocking (base64 decoding): run it in a thread.

    Raises:
        ApiError: 422, invalid base64 or as :func:`check_images`, naming the input
            (``inputs[3].image``).
    """
    def files() -> Iterator[tuple[str, bytes]]:
        for i, data in enumerate(images):
            name = f"{where}[{i}].image"
            try:
                yield name, decode_base64(data, name)
            except ValueError as e:
                raise ApiError(422, str(e)) from None

    return check_images(files(), where, max_image_pixels, max_request_pixels, prefix)


def check_images(files: Iterable[tuple[str, bytes]], where: str, max_image_pixels: int,
                 max_request_pixels: int, prefix: str = "") -> list[bytes]:
    """The bytes of ``files`` (``(name, bytes)``: ``inputs[3].image``, ``file[3]``; all of
    the field ``where``), once each is known to be a PNG or JPEG of at most
    ``max_image_pixels`` pixels, together at most ``max_request_pixels``: checked from the
    headers, nothing decoded. ``files`` is read one at a time, so an iterator's later
    items are not made once an earlier one is refused.

    Raises:
        ApiError: 422 naming the input (``inputs[3].image: 12000x12000 pixels, over the
            server's limit of 16777216 per image``); ``prefix`` starts messages about an
            image's content (``"support set: "``).
    """
    checked: list[bytes] = []
    total = 0
    for name, raw in files:
        try:
            width, height = image_dimensions(raw, IMAGE_FORMATS)
        except ImageTooLarge as e:  # past PIL's own bomb limit: it gives no size
            raise ApiError(422, f"{prefix}{name}: {e}, over the server's limit of "
                           f"{max_image_pixels} per image") from None
        except Exception as e:  # whatever PIL raises on hostile bytes: not an image
            raise ApiError(422, f"{prefix}{name}: cannot decode the image ({e})") from None
        pixels = width * height
        if pixels > max_image_pixels:
            raise ApiError(422, f"{prefix}{name}: {width}x{height} pixels, over the server's "
                           f"limit of {max_image_pixels} per image")
        total += pixels
        if total > max_request_pixels:
            raise ApiError(422, f"{prefix}{where}: more than {max_request_pixels} pixels in "
                           f"all (the server's limit per request), {total} by {name}")
        checked.append(raw)
    return checked
