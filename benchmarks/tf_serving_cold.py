"""The SavedModel's first request after load, with and without TF Serving's warmup replay (issue 40).

    python benchmarks/tf_serving_cold.py                      # ResNet-20 at 32x32 and ResNet-50 at 224x224
    python benchmarks/tf_serving_cold.py --model resnet20 --rounds 5
    python benchmarks/tf_serving_cold.py --baseline /tmp/base   # /tmp/base: pip install --no-deps --target

Each model (BatchNorm calibrated on one batch, as after training; benchmarks/serve.py's `build`) is
exported (`export_and_verify`, SavedModel) in a fresh process per round by this checkout and, with
`--baseline DIR`, by an earlier commit installed there, in turns: the export time the warmup records,
the classify signature and the stand-in's checks cost. Then, in
fresh processes that alternate (these machines are noisy), the version is loaded as TF Serving loads
it (`keras_resnet_v2.export.stand_in.StandIn`: TF1 session, `serve` tag), the warmup records are
replayed or not, and ten batch-1 `serving_default` gRPC requests are timed, then the first request of
a batch size the records do not hold (4). Prints the CPU flags and a Markdown table: medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from serve import MODELS, cpu_flags  # noqa: E402

CHILD = r"""
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from keras_resnet_v2.export import stand_in, tf_serving
version, warm = sys.argv[1], sys.argv[2] == "warm"
tf.constant(1.0) + 1.0  # the server's process has TensorFlow's runtime up before it loads a model
start = time.perf_counter()
server = stand_in.StandIn(version)
load_s = time.perf_counter() - start
start = time.perf_counter()
if warm:
    server.replay(os.path.join(version, tf_serving.WARMUP_FILE))
replay_s = time.perf_counter() - start
height, width = stand_in.server_input_size(server)
def request(batch):
    r = predict_pb2.PredictRequest()
    r.model_spec.signature_name = "serving_default"
    r.inputs["images"].CopyFrom(tf.make_tensor_proto(
        np.random.default_rng(batch).uniform(0, 255, (batch, height, width, 3)).astype("float32")))
    start = time.perf_counter()
    server.predict(r)
    return time.perf_counter() - start
times = [request(1) for _ in range(10)]
print(json.dumps({"load_s": load_s, "replay_s": replay_s, "first_ms": 1e3 * times[0], "tenth_ms": 1e3 * times[9],
                  "first_batch4_ms": 1e3 * request(4), "second_batch4_ms": 1e3 * request(4)}))
"""


EXPORT = r"""
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(1, sys.argv[1])
from serve import MODELS, build
from keras_resnet_v2 import export
model = build(*MODELS[sys.argv[2]])
start = time.perf_counter()
result = export.export_and_verify(model, sys.argv[3])
print(json.dumps({"export_s": time.perf_counter() - start, "stage_s": result["report"]["savedmodel_s"],
                  "version": result["savedmodel"]}))
"""


def exports(name: str, folder: str, rounds: int, baseline: str) -> dict:
    """Seconds of `export_and_verify` (SavedModel) of the same model by this checkout and, where given, by
    the `baseline` installation (`pip install --no-deps --target DIR` of an earlier commit), in turns,
    each in a fresh process; returns the medians and a version written by this checkout."""
    seconds, version = {"now": [], "baseline": [], "now_stage": [], "baseline_stage": []}, None
    for index in range(rounds):
        for kind in ("baseline", "now") if baseline else ("now",):
            env = {**os.environ, "PYTHONPATH": baseline} if kind == "baseline" else dict(os.environ)
            out = subprocess.run([sys.executable, "-c", EXPORT, os.path.dirname(os.path.abspath(__file__)), name,
                                  os.path.join(folder, f"{kind}{index}")],
                                 capture_output=True, text=True, check=True, timeout=1800, env=env)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            seconds[kind].append(result["export_s"])
            seconds[f"{kind}_stage"].append(result["stage_s"])
            version = result["version"] if kind == "now" else version
    return {"export_s": {k: statistics.median(v) for k, v in seconds.items() if v}, "version": version}


def cold(version: str, rounds: int) -> dict:
    runs = {"warm": [], "cold": []}
    for _ in range(rounds):
        for kind in ("cold", "warm"):
            out = subprocess.run([sys.executable, "-c", CHILD, version, kind], capture_output=True, text=True,
                                 check=True, timeout=900)
            runs[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {kind: {key: statistics.median(r[key] for r in values) for key in values[0]}
            for kind, values in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", choices=tuple(MODELS), help="default: both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", help="an installation of an earlier commit (pip install --no-deps --target "
                                           "DIR): its export time is measured side by side")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    print(cpu_flags())
    figures = {}
    for name in args.model or list(MODELS):
        size = MODELS[name][1]
        with tempfile.TemporaryDirectory() as folder:
            exported = exports(name, folder, args.rounds, args.baseline)
            figures[name] = {**cold(exported["version"], args.rounds), "export_s": exported["export_s"]}
        f = figures[name]
        print(f"\n{name} ({size}x{size}), medians of {args.rounds} rounds")
        print("| | load s | replay s | first batch-1 ms | tenth ms | first / tenth | first batch-4 ms | second |")
        print("|---|---|---|---|---|---|---|---|")
        for kind in ("cold", "warm"):
            r = f[kind]
            print(f"| {'with warmup replay' if kind == 'warm' else 'no warmup'} | {r['load_s']:.2f} | "
                  f"{r['replay_s']:.2f} | {r['first_ms']:.1f} | {r['tenth_ms']:.1f} | "
                  f"{r['first_ms'] / r['tenth_ms']:.2f}x | {r['first_batch4_ms']:.1f} | {r['second_batch4_ms']:.1f} |")
        e = f["export_s"]
        print(f"SavedModel export_and_verify s: {e['now']:.1f} (writing {e['now_stage']:.1f})" + (
            f"; baseline {e['baseline']:.1f} (writing {e['baseline_stage']:.1f}): {e['now'] / e['baseline']:.2f}x "
            f"(writing {e['now_stage'] / e['baseline_stage']:.2f}x)" if "baseline" in e else ""))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"cpu": cpu_flags(), **figures}, handle, indent=2)


if __name__ == "__main__":
    main()
