"""Peak memory when the package is handed a hostile or unlucky file (issue 50, items 2-4), each case in a
fresh process, with the outcome's first line.

    python benchmarks/untrusted_memory.py [--cases header_overflow,header_zero_axes,bomb,huge_png,big_folder]

Another checkout's code (an older commit, for a before/after table) runs with its package folders laid
out as an install lays them (`keras_resnet_v2/`, its `training/` and `export/` inside) on PYTHONPATH:

    git worktree add /tmp/old COMMIT && mkdir -p /tmp/oldpkg && cp -r /tmp/old/keras_resnet_v2 /tmp/oldpkg/ \\
      && cp -r /tmp/old/training /tmp/oldpkg/keras_resnet_v2/ && cp -r /tmp/old/export /tmp/oldpkg/keras_resnet_v2/
    PYTHONPATH=/tmp/oldpkg python benchmarks/untrusted_memory.py

Cases (files written under a temporary folder):
- header_overflow: a 1 KB `.safetensors` whose stem declares shape [2**32, 2**32, 7, 7] (its byte count
  overflows int64 in NumPy), through `from_timm`.
- header_zero_axes: a 20 KB header of a ResNet-50 whose first stage is 2048 wide, every convolution with a
  zero-length axis (no data), through `from_timm`.
- bomb: `ResNet20(weights=F)`, F a 1.5 MB zip whose `model.weights.h5` inflates to 1.5 GiB.
- huge_png: int8 calibration images from a folder holding one 20000 x 20000 PNG of 48 KB.
- big_folder: calibration images for a 224 x 224 network from a folder of 3,000 small PNGs.
Peak resident memory is the child's `ru_maxrss`; the interpreter with TensorFlow and Keras imported
takes about 0.7-0.8 GB of it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib

CASES = ("header_overflow", "header_zero_axes", "bomb", "huge_png", "big_folder")


def _header_file(path: str, header: dict, body: bytes = b"") -> None:
    text = json.dumps(header).encode()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text + body)


def _zero_axes_header(path: str) -> None:
    """timm ResNetV2-50 names and shapes, stage 1 and the stem 2048 wide, convolutions with a zero axis."""
    header, offset = {}, 0

    def tensor(key: str, shape: list) -> None:
        nonlocal offset
        size = 4 * (0 if 0 in shape else __import__("math").prod(shape))
        header[key] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size

    def norm(prefix: str, channels: int) -> None:
        for field in ("weight", "bias", "running_mean", "running_var"):
            tensor(f"{prefix}.{field}", [channels])

    widths, units = (2048, 128, 256, 512), (3, 4, 6, 3)
    tensor("stem.conv.weight", [widths[0], 0, 7, 7])
    channels = widths[0]
    for s, (width, n) in enumerate(zip(widths, units, strict=True)):
        for b in range(n):
            prefix = f"stages.{s}.blocks.{b}"
            norm(f"{prefix}.norm1", channels)
            tensor(f"{prefix}.conv1.weight", [width, 0, 1, 1])
            norm(f"{prefix}.norm2", width)
            tensor(f"{prefix}.conv2.weight", [width, 0, 3, 3])
            norm(f"{prefix}.norm3", width)
            tensor(f"{prefix}.conv3.weight", [4 * width, 0, 1, 1])
            if b == 0:
                tensor(f"{prefix}.downsample.conv.weight", [4 * width, 0, 1, 1])
            channels = 4 * width
    norm("norm", channels)
    tensor("head.fc.weight", [1000, 0, 1, 1])
    tensor("head.fc.bias", [1000])
    _header_file(path, header, b"\0" * offset)


def _bomb(path: str, inflated: int = 1536 << 20) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", "{}")
        with archive.open("model.weights.h5", "w", force_zip64=True) as member:
            block = b"\0" * (1 << 20)
            for _ in range(inflated >> 20):
                member.write(block)


def _png(width: int, height: int, rows: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def _huge_png(folder: str) -> None:
    os.makedirs(folder)
    compressor = zlib.compressobj(9)
    row = b"\0" + b"\0" * (20000 * 3)
    data = b"".join(compressor.compress(row) for _ in range(20000)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    with open(os.path.join(folder, "huge.png"), "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _big_folder(folder: str, count: int = 3000) -> None:
    os.makedirs(folder)
    for i in range(count):
        rows = b"".join(b"\0" + bytes((i + r + c) % 256 for c in range(16 * 3)) for r in range(16))
        with open(os.path.join(folder, f"{i:05d}.png"), "wb") as handle:
            handle.write(_png(16, 16, rows))


CALIBRATION = ("from keras_resnet_v2.export import calibration as c; from keras_resnet_v2.plumbing import images as i; "
               "r = c.folder_images({path!r}, (224, 224, 3), i.as_preprocessing('resize')); "
               "print('images', (r[0] if isinstance(r, tuple) else r).shape)")
CHILD = {
    "header_overflow": "import keras_resnet_v2 as k; k.from_timm({path!r})",
    "header_zero_axes": "import keras_resnet_v2 as k; k.from_timm({path!r})",
    "bomb": "import keras_resnet_v2 as k; k.ResNet20(weights={path!r})",
    "huge_png": CALIBRATION,
    "big_folder": CALIBRATION,
}


def run_case(name: str, folder: str) -> dict:
    path = os.path.join(folder, name + {"bomb": ".keras", "huge_png": "", "big_folder": ""}.get(name, ".safetensors"))
    if name == "header_overflow":
        _header_file(path, {"stem.conv.weight": {"dtype": "F32", "shape": [2**32, 2**32, 7, 7],
                                                 "data_offsets": [0, 0]}})
    elif name == "header_zero_axes":
        _zero_axes_header(path)
    elif name == "bomb":
        _bomb(path)
    elif name == "huge_png":
        _huge_png(path)
    else:
        _big_folder(path)
    size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files) \
        if os.path.isdir(path) else os.path.getsize(path)
    code = ("import resource, sys\ntry:\n    " + CHILD[name].format(path=path).replace("; ", "\n    ")
            + "\nexcept Exception as error:"
            + "\n    print('refused:', type(error).__name__, str(error).splitlines()[0][:160])"
            + "\nprint('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800)
    lines = result.stdout.strip().splitlines()
    peak = next((int(line.split()[1]) for line in lines if line.startswith("peak_kib")), None)
    if peak is None:  # killed, or a traceback outside the try: the child's own peak
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    outcome = next((line for line in lines if not line.startswith("peak_kib")), "")
    if result.returncode:
        outcome = f"exit {result.returncode}: " + ((result.stderr.strip().splitlines() or [""])[-1])[:160]
    return {"case": name, "input_bytes": size, "peak_rss_mb": round(peak / 1024), "outcome": outcome}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args(argv)
    import keras_resnet_v2

    print(f"# {platform.processor() or platform.machine()}, package at {os.path.dirname(keras_resnet_v2.__file__)}")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.cases.split(","):
            print(json.dumps(run_case(name, folder)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
