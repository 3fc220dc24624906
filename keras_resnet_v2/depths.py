"""Depth tables as data, and the check of a depth against them (no Keras: the CLIs use it first).

The paper's CIFAR nets (Sec. 4 and Appendix; He et al. 2015, Sec. 4.2) have 3 stages of n units
(depth 6n+2 basic, 9n+2 bottleneck, 3n+2 single-conv); ImageNet nets have 4 stages whose unit
counts are listed per depth (He et al. 2015, Table 1; ResNet-200: this paper, Sec. 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from keras_resnet_v2.names import BLOCKS, FAMILIES, check_choice, choices

# Networks with at least this many units in a stage are built stacked (`scan=True`) unless asked
# otherwise: ResNet-1001 (111 a stage) and ResNet-1202 (200). benchmarks/RESULTS.md, "Deep networks":
# the stacked ResNet-1001 builds in 0.5 s instead of 14 s, takes its first step 4.5x sooner on a CPU
# and 7x sooner on an H100, where it also trains 1.54x faster (TensorFlow on a CPU, side by side:
# 0.9-1.0x plain). ResNet-110/164 (18 a stage) stay per-unit: their plain graphs build in seconds and
# train slightly faster under TensorFlow on a CPU (ResNet-164 stacked 0.965x).
STACKED_UNITS = 100


def default_scan(units_per_stage: tuple[int, ...]) -> bool:
    """`scan=None`'s choice: stacked when a stage has `STACKED_UNITS` units or more.

    Example:
        >>> default_scan((111, 111, 111)), default_scan((18, 18, 18))
        (True, False)
    """
    return max(units_per_stage) >= STACKED_UNITS


# The deepest network built here. The paper's deepest is ResNet-1202; far deeper graphs need more
# recursion than Python's C stack safely gives Keras' graph walks (the limit is 40 frames a unit).
MAX_DEPTH = 2_000


@dataclass(frozen=True)
class Family:
    """The fixed parts of a network layout (the paper's Appendix; He et al. 2015, Table 1 and Sec. 4.2)."""

    widths: tuple[int, ...]  # basic-unit width per stage; bottleneck inner width
    stem_kernel: int
    stem_stride: int
    stem_pool: bool  # 3x3/2 max pool after the stem
    bottleneck_stride_conv: int  # which conv of a bottleneck carries the stride (a basic unit's first)
    input_shape: tuple[int, int, int]
    classes: int

    @property
    def total_stride(self) -> int:
        return self.stem_stride * (2 if self.stem_pool else 1) * 2 ** (len(self.widths) - 1)


FAMILY_SPECS: dict[str, Family] = {
    # 3x3 stem, 16 filters; stages at 32/16/8. The authors' CIFAR code puts the
    # stride of a bottleneck on its first 1x1 conv (index 0).
    "cifar": Family((16, 32, 64), 3, 1, False, 0, (32, 32, 3), 10),
    # 7x7/2 stem + 3x3/2 max pool; fb.resnet.torch puts the stride on the 3x3 (index 1).
    "imagenet": Family((64, 128, 256, 512), 7, 2, True, 1, (224, 224, 3), 1000),
}

#: ImageNet depths: block and units per stage (He et al. 2015, Table 1; ResNet-200: this paper).
#: A new depth is one line.
IMAGENET_DEPTHS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}

# CIFAR: depth = 6n + 2 (basic, 2 convs a unit) or 9n + 2 (bottleneck, 3 convs);
# n units in each of the 3 stages. The paper's own choice where both forms fit.
# "single" (one 3x3 conv a unit, depth 3n + 2) is Table 3's "ResNet-110 (1-layer skip)": asked
# for by name only, never picked for a depth.
CIFAR_LAYERS_PER_UNIT = {"basic": 2, "bottleneck": 3, "single": 1}
CIFAR_DEPTH_FORMS = {"basic": "6n+2", "bottleneck": "9n+2", "single": "3n+2"}
CIFAR_DEFAULT_BLOCKS = ("basic", "bottleneck")
CIFAR_PAPER_BLOCKS: dict[int, str] = {
    20: "basic", 32: "basic", 44: "basic", 56: "basic", 110: "basic", 1202: "basic",
    164: "bottleneck", 1001: "bottleneck",
}


def cifar_units_per_stage(depth: int, block: str) -> Optional[int]:
    """n for a CIFAR depth of `block` units, or None if `depth` is not of that form."""
    per_unit = 3 * CIFAR_LAYERS_PER_UNIT[block]
    n, rest = divmod(depth - 2, per_unit)
    return n if rest == 0 and n >= 1 else None


def _nearest_cifar_depths(depth: int, block: str) -> tuple[int, ...]:
    per_unit = 3 * CIFAR_LAYERS_PER_UNIT[block]
    below = (depth - 2) // per_unit * per_unit + 2
    return tuple(d for d in (below, below + per_unit) if d >= per_unit + 2)


def resolve_depth(depth, family=None, block=None) -> tuple[str, str, tuple[int, ...]]:
    """(family, block, units per stage) of a depth, or a one-line ValueError naming the nearest depths.

    Example:
        >>> resolve_depth(1001)
        ('cifar', 'bottleneck', (111, 111, 111))
        >>> resolve_depth(110, block="single")
        ('cifar', 'single', (36, 36, 36))
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"`depth` must be a positive integer. Received: depth={depth!r}")
    if depth > MAX_DEPTH:
        raise ValueError(f"`depth` must be at most {MAX_DEPTH:,} (the paper's deepest is 1202). "
                         f"Received: depth={depth!r}")
    check_choice("family", family, (None,) + FAMILIES)
    check_choice("block", block, (None,) + BLOCKS)
    if family is None:  # the named depth sets of the two families do not overlap
        family = "imagenet" if depth in IMAGENET_DEPTHS else "cifar"

    if family == "imagenet":
        if depth not in IMAGENET_DEPTHS:
            raise ValueError(
                f"`depth` for family='imagenet' must be one of {choices(sorted(IMAGENET_DEPTHS))}. "
                f"Received: depth={depth!r}"
            )
        table_block, units = IMAGENET_DEPTHS[depth]
        if block not in (None, table_block):
            raise ValueError(
                f"ImageNet ResNet-{depth} uses {table_block!r} units. Received: block={block!r}"
            )
        return family, table_block, units

    candidates = [block] if block else [CIFAR_PAPER_BLOCKS.get(depth, "basic"), *CIFAR_DEFAULT_BLOCKS]
    for candidate in candidates:
        n = cifar_units_per_stage(depth, candidate)
        if n:
            return family, candidate, (n,) * len(FAMILY_SPECS["cifar"].widths)
    forms = [
        f"{b} units need {CIFAR_DEPTH_FORMS[b]} "
        f"(nearest: {' or '.join(map(str, _nearest_cifar_depths(depth, b)))})"
        for b in ([block] if block else CIFAR_DEFAULT_BLOCKS)
    ]
    raise ValueError(
        f"`depth` {depth} is not a CIFAR ResNet depth: {'; '.join(forms)}. "
        f"ImageNet depths are {choices(sorted(IMAGENET_DEPTHS))}. Received: depth={depth!r}"
    )


#: timm architectures that are this paper's network, and the checkpoint tag a bare name downloads.
TIMM_MODELS: dict[str, str] = {
    "resnetv2_18": "ra4_e3600_r224_in1k", "resnetv2_34": "ra4_e3600_r224_in1k",
    "resnetv2_50": "a1h_in1k", "resnetv2_101": "a1h_in1k", "resnetv2_152": "",  # untrained in timm
}
# The depths `ResNet(..., weights="imagenet")` loads: timm's trained checkpoint of each, as "name.tag".
IMAGENET_DEPTHS_TRAINED: dict[int, str] = {int(name.split("_")[1]): f"{name}.{tag}"
                                           for name, tag in TIMM_MODELS.items() if tag}
