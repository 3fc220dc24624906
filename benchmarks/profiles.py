"""Reading the training benchmarks' profiles: TensorFlow's trace and `torch.profiler`, time per step by kind of work.

`tf_kernels(logdir)` reads the XPlane file `tf.profiler.experimental` wrote for one `fit`;
`torch_ops(profile)` reads a finished `torch.profiler.profile`. `tally(records, steps)` gives
`{key: (ms per step, runs per step)}`, keyed by op type, or by `work(...)`'s kind of work when
`by_work=True`, so the two frameworks' steps can be read side by side (`tf_op_times` does both steps).

What the times mean: TensorFlow's are the kernels' durations on its executor threads (a kernel's
intra-op workers, oneDNN's or Eigen's, are inside its duration; two kernels run concurrently by
the inter-op pool both count, so the sum can exceed the step's wall time). PyTorch's are each
operator's self time on the threads that ran it (the wrappers' own overhead counts as "other").
"""

from __future__ import annotations

import collections
import glob
import os

WORK = ("convolution forward", "convolution backward", "BatchNorm forward", "BatchNorm backward",
        "ReLU forward", "ReLU backward", "addition", "padding", "optimizer update", "other")


def work(op: str, node: str = "") -> str:
    """The kind of work of an op: `op` its type (TensorFlow) or name (PyTorch); `node` TensorFlow's node path,
    where the optimizer's update ops are found (their types are the element-wise ones used everywhere)."""
    name, path = op.lower(), node.lower()
    if "_foreach" in name or "optimizer.step" in name or any(k in path for k in ("sgd", "optimizer", "/momentum")):
        return "optimizer update"
    if "conv" in name:
        return "convolution backward" if "backprop" in name or "backward" in name else "convolution forward"
    if "batchnorm" in name or "batch_norm" in name:
        return "BatchNorm backward" if "grad" in name or "backward" in name else "BatchNorm forward"
    if "relugrad" in name or "threshold_backward" in name:
        return "ReLU backward"
    if "relu" in name or "clamp_min" in name:
        return "ReLU forward"
    if "pad" in name:
        return "padding"
    if name in ("addv2", "addn", "add", "aten::add", "aten::add_"):
        return "addition"
    return "other"


def tf_kernels(logdir: str) -> list[tuple[str, str, float]]:
    """`(node path, op type, ms)` of every kernel on the TensorFlow executor's threads in the profile in `logdir`."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
        space.ParseFromString(f.read())
    kernels = []
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name  # "node/name:OpType" for a kernel
                if ":" in name and "::" not in name:
                    node, op = name.rsplit(":", 1)
                    kernels.append((node, op, event.duration_ps / 1e9))
    return kernels


def torch_ops(profile) -> list[tuple[str, str, float, int]]:
    """`("", operator name, self ms, runs)` of each operator of a finished `torch.profiler.profile`."""
    return [("", event.key, event.self_cpu_time_total / 1e3, event.count) for event in profile.key_averages()]


def tally(records, steps: int, by_work: bool = False) -> dict[str, tuple[float, float]]:
    """Op (or kind of work) -> (ms per step, runs per step) of `tf_kernels`' or `torch_ops`' records."""
    totals = collections.defaultdict(lambda: [0.0, 0])
    for node, op, ms, *runs in records:
        total = totals[work(op, node) if by_work else op]
        total[0] += ms
        total[1] += runs[0] if runs else 1
    return {key: (ms / steps, count / steps) for key, (ms, count) in totals.items()}


def tf_op_times(logdir: str, steps: int, by_work: bool = False) -> dict[str, tuple[float, float]]:
    """Op type (or kind of work) -> (ms per step, runs per step) from the profile in `logdir`."""
    return tally(tf_kernels(logdir), steps, by_work)


def print_table(profiles: dict[str, dict[str, tuple[float, float]]], rows: int = 25, order=None,
                label: str = "op type") -> None:
    """A markdown table, one column pair per profile: ms and runs per step of each key (the `rows` keys with
    the most time in any profile, or the keys of `order` in that order), the total first."""
    names = list(profiles)
    keys = list(order) if order else sorted({k for p in profiles.values() for k in p},
                                            key=lambda k: -max(p.get(k, (0, 0))[0] for p in profiles.values()))[:rows]
    print(f"| {label} | " + " | ".join(f"{n} ms/step | {n} runs/step" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    print("| all | " + " | ".join(f"{sum(ms for ms, _ in p.values()):.1f} | {sum(n for _, n in p.values()):.0f}"
                                  for p in profiles.values()) + " |")
    for key in keys:
        cells = ("{:.1f} | {:.0f}".format(*profiles[n].get(key, (0, 0))) for n in names)
        print(f"| {key} | " + " | ".join(cells) + " |")
