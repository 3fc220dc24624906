"""Many requests at once against an exported model, as a server sends them; prints one JSON line.

    python serve_concurrently.py VERSION_DIR MODEL.onnx THREADS REQUESTS

Every request's answer is compared with the same input answered alone, before any thread starts:
THREADS threads each send REQUESTS requests to each SavedModel signature (`serving_default`,
`serve_uint8`, `serve_image_bytes`) and to one ONNX Runtime session shared by all threads, each
request an input of its own (1 to 3 images). The `serve_image_bytes` stream mixes valid PNG and JPEG
images with oversized ones (a PNG header declaring 20000 x 20000 pixels) and broken ones (random
bytes, a PNG cut short): these must be refused with `InvalidArgumentError`, the rest answered.

Resident memory (`/proc/self/statm`) is read after a first warm-up round of every input and after
the run: the growth in between is what serving many requests costs beyond the first ones.
"""

import concurrent.futures
import io
import json
import os
import sys
import zlib

import numpy as np
import onnxruntime as ort
import tensorflow as tf
from PIL import Image

version, onnx_path, threads, requests = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
DISTINCT = 48  # inputs per signature; request i of thread t sends input (t * requests + i) % DISTINCT


def rss_mib() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG signature and header chunk that declare `width` x `height` pixels, and no pixels."""
    header = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + header + zlib.crc32(header).to_bytes(4, "big")


loaded = tf.saved_model.load(version)
signatures = {name: loaded.signatures[name] for name in ("serving_default", "serve_uint8", "serve_image_bytes")}
session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
height, width, channels = signatures["serving_default"].structured_input_signature[1]["images"].shape[1:]
rng = np.random.default_rng(0)
pixels = [rng.uniform(0, 255, (1 + i % 3, height, width, channels)).astype("float32") for i in range(DISTINCT)]
bad = 0
streams = {"serving_default": [{"images": tf.constant(x)} for x in pixels],
           "serve_uint8": [{"images": tf.constant(x.astype("uint8"))} for x in pixels],
           "serve_image_bytes": []}
for i, x in enumerate(pixels):  # one valid request, and (every third) a refused one in the same stream
    images = [encoded(image.astype("uint8"), "PNG" if i % 2 else "JPEG") for image in x]
    streams["serve_image_bytes"].append({"image_bytes": tf.constant(images)})
    if i % 3 == 0:
        harm = (png_declaring(20000, 20000), rng.bytes(500), images[0][: len(images[0]) // 2])[bad % 3]
        streams["serve_image_bytes"].append({"image_bytes": tf.constant([images[0], harm])})
        bad += 1


def answer(signature: str, request):
    """The probabilities, or the refusal's kind."""
    if signature == "onnx":
        return session.run(["probabilities"], {"images": request})[0]
    try:
        return signatures[signature](**request)["probabilities"].numpy()
    except tf.errors.InvalidArgumentError:
        return "refused"


streams["onnx"] = pixels
alone = {name: [answer(name, request) for request in stream] for name, stream in streams.items()}
before = rss_mib()


def client(signature: str, thread: int) -> dict:
    stream, expected = streams[signature], alone[signature]
    worst, wrong = 0.0, 0
    for i in range(requests):
        k = (thread * requests + i) % len(stream)
        got = answer(signature, stream[k])
        if isinstance(expected[k], str) or isinstance(got, str):
            wrong += not (isinstance(got, str) and isinstance(expected[k], str))
            continue
        error = float(np.max(np.abs(got - expected[k])) / np.max(np.abs(expected[k])))
        worst = max(worst, error)
        wrong += bool(error > 1e-6) or not np.array_equal(got.argmax(-1), expected[k].argmax(-1))
    return {"worst_relative_error": worst, "wrong": wrong}


report = {"threads": threads, "requests_per_thread": requests, "rss_mib_after_one_round": round(before, 1)}
with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for name in streams:
        results = list(pool.map(client, [name] * threads, range(threads)))
        report[name] = {"worst_relative_error": max(r["worst_relative_error"] for r in results),
                        "wrong": sum(r["wrong"] for r in results), "requests": threads * requests,
                        "rss_mib": round(rss_mib(), 1)}
report["refused_alone"] = sum(isinstance(a, str) for a in alone["serve_image_bytes"])
report["bad_requests"] = bad
# Different inputs answer differently: a request answered with another's output would be seen.
report["distinct_answers"] = len({a.tobytes() for a in alone["serving_default"]})
report["rss_mib_after"] = round(rss_mib(), 1)
print(json.dumps(report))
