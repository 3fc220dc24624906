"""What `serve_image_bytes` decodes: the size an image declares, checked first, and one GIF frame.

An encoded image says how large it is in its first bytes, and a decoder allocates that much: a 49 KB
1-bit PNG of 20000 x 20000 pixels decodes to 1.2 GB of RGB, and TensorFlow's GIF decoder expands every
frame of an animation although the signature uses the first. So before decoding, these graph ops
(TensorFlow ops only: a SavedModel signature cannot call Python)

- read the declared height and width from the header of a PNG, JPEG, GIF, BMP or WebP
  (`declared_size`) and refuse an image above `max_pixels` with an `InvalidArgumentError`;
- cut a GIF after its first frame (`first_gif_frame`), walking its blocks (at most `GIF_MAX_BLOCKS`).

Example:
    >>> data = checked(tf.io.read_file("cat.png"), max_pixels=max_pixels(224, 224))  # doctest: +SKIP
    >>> image = tf.io.decode_image(data, channels=3, expand_animations=False)  # doctest: +SKIP
"""

from __future__ import annotations

import tensorflow as tf

# A photo of 4096 x 4096 is 48 MiB decoded (RGB): the bound for inputs of up to 256 x 256; larger
# inputs allow 256 times their own area.
MIN_MAX_PIXELS = 4096 * 4096
# Blocks a GIF's first frame may take to reach its end: encoders write 255-byte sub-blocks (a 5 MB
# frame); a file of tiny sub-blocks, which would keep the walk busy, is refused beyond this.
GIF_MAX_BLOCKS = 20_000


def max_pixels(height: int, width: int) -> int:
    """The most pixels `serve_image_bytes` decodes for a network with this input size."""
    return max(MIN_MAX_PIXELS, 256 * height * width)


def _byte(data, offset):
    return tf.cast(tf.io.decode_raw(tf.strings.substr(data, offset, 1), tf.uint8)[0], tf.int64)


def _little(data, offset, count: int):
    return sum(_byte(data, offset + i) * (256 ** i) for i in range(count))


def _big(data, offset, count: int):
    return sum(_byte(data, offset + i) * (256 ** (count - 1 - i)) for i in range(count))


def _starts(data, prefix: bytes, offset: int = 0):
    return tf.equal(tf.strings.substr(data, offset, len(prefix)), prefix)


def _webp_size(data):
    chunk = tf.strings.substr(data, 12, 4)
    lossless = _little(data, 21, 4)
    return tf.case([
        (tf.equal(chunk, b"VP8X"), lambda: tf.stack([1 + _little(data, 27, 3), 1 + _little(data, 24, 3)])),
        (tf.equal(chunk, b"VP8L"), lambda: tf.stack([1 + (lossless // 2 ** 14) % 2 ** 14, 1 + lossless % 2 ** 14])),
        (tf.equal(chunk, b"VP8 "), lambda: tf.stack([_little(data, 28, 2) % 2 ** 14, _little(data, 26, 2) % 2 ** 14])),
    ], default=lambda: tf.constant([0, 0], tf.int64))


def declared_size(data: tf.Tensor) -> tf.Tensor:
    """[height, width] (int64) that an encoded image's header declares; [0, 0] for a format it does
    not know, which the decoder then refuses. Reads a few header bytes, decodes nothing."""
    # The first 32 bytes hold every size but JPEG's (whose SOF marker may follow a long EXIF block);
    # padded with zeros, a short file reads zeros instead of past its end, and the image is not copied.
    head = tf.strings.join([tf.strings.substr(data, 0, 32), tf.constant(b"\0" * 32)])
    return tf.case([
        (_starts(head, b"\x89PNG\r\n\x1a\n"), lambda: tf.stack([_big(head, 20, 4), _big(head, 16, 4)])),
        (tf.io.is_jpeg(data), lambda: tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64)),
        (_starts(head, b"GIF8"), lambda: tf.stack([_little(head, 8, 2), _little(head, 6, 2)])),
        (_starts(head, b"BM"), lambda: tf.abs(tf.stack([_little(head, 22, 4), _little(head, 18, 4)])
                                              - tf.stack([2 ** 32 * (_byte(head, 25) // 128), 0]))),
        (tf.logical_and(_starts(head, b"RIFF"), _starts(head, b"WEBP", 8)), lambda: _webp_size(head)),
    ], default=lambda: tf.constant([0, 0], tf.int64))


def _color_table(flags):
    """Bytes of a GIF colour table that a (global or local) flags byte announces."""
    return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), flags % 8),
                    tf.constant(0, tf.int64))


def first_gif_frame(data: tf.Tensor) -> tf.Tensor:
    """A GIF cut after its first image and closed with a trailer, so the decoder expands one frame.

    Walks the blocks (extensions, then the first image descriptor and its data sub-blocks); refuses
    a file whose first frame takes more than `GIF_MAX_BLOCKS` blocks or ends before it is complete.
    """
    length = tf.cast(tf.strings.length(data), tf.int64)
    padded = tf.strings.join([data, tf.constant(b"\0" * 16)])
    start = 13 + _color_table(_byte(padded, 10))

    def body(position, mode, end):
        # mode 0: at a block; 1: in an extension's sub-blocks; 2: in the first image's sub-blocks
        byte = _byte(padded, position)
        at_block = tf.equal(mode, 0)
        image = tf.logical_and(at_block, tf.equal(byte, 0x2C))
        extension = tf.logical_and(at_block, tf.equal(byte, 0x21))
        image_data = position + 10 + _color_table(_byte(padded, position + 9)) + 1  # + LZW code size byte
        closing = tf.logical_and(tf.logical_not(at_block), tf.equal(byte, 0))
        new_position = tf.case([(image, lambda: image_data), (extension, lambda: position + 2),
                                (closing, lambda: position + 1)], default=lambda: position + byte + 1)
        new_mode = tf.case([(image, lambda: tf.constant(2, tf.int64)), (extension, lambda: tf.constant(1, tf.int64)),
                            (closing, lambda: tf.constant(0, tf.int64))], default=lambda: mode)
        stray = tf.logical_and(at_block, tf.logical_not(tf.logical_or(image, extension)))
        failed = tf.where(stray, tf.constant(-2, tf.int64), end)  # -2: no image where one must start
        new_end = tf.where(tf.logical_and(closing, tf.equal(mode, 2)), position + 1, failed)
        return new_position, new_mode, new_end

    _, _, end = tf.while_loop(lambda position, mode, end: tf.logical_and(end == -1, position < length), body,
                              (start, tf.constant(0, tf.int64), tf.constant(-1, tf.int64)),
                              maximum_iterations=GIF_MAX_BLOCKS)
    complete = tf.debugging.assert_positive(end, message=f"`image_bytes`: a GIF whose first frame is incomplete, "
                                                         f"malformed or longer than {GIF_MAX_BLOCKS} blocks")
    with tf.control_dependencies([complete]):
        return tf.strings.join([tf.strings.substr(data, tf.constant(0, tf.int64), end), tf.constant(b"\x3b")])


def checked(data: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """`data` if its declared size is at most `max_pixels` (a GIF: its first frame), else an
    `InvalidArgumentError` naming the size and the bound."""
    size = declared_size(data)
    small_enough = tf.debugging.Assert(size[0] * size[1] <= max_pixels, [
        f"`image_bytes`: an image declares more than {max_pixels:,} pixels, which this signature does not "
        "decode; its height and width:", size])
    with tf.control_dependencies([small_enough]):  # checked before anything downstream decodes
        return tf.cond(_starts(data, b"GIF8"), lambda: first_gif_frame(data), lambda: tf.identity(data))
