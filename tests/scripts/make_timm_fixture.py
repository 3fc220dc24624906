"""Writes the offline fixtures of tests/test_pretrained.py: tiny random timm ResNetV2 networks and
timm's outputs on fixed images. Run with timm installed (not needed by the tests or CI):

    python3 -m venv /tmp/timm && /tmp/timm/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    /tmp/timm/bin/python tests/scripts/make_timm_fixture.py

Made with timm 1.0.31, torch 2.14.1 (CPU). Each network has the layout of a timm name but widths
/8 (bottleneck, resnetv2_50's [3, 4, 6, 3]; timm rounds widths to multiples of 8) or /8 (basic,
resnetv2_18's [2, 2, 2, 2]), 7 classes, and random BatchNorm statistics and affine parameters, so that every
weight changes the outputs.
For each, `<name>.safetensors` (the state dict, as timm saves it) and `<name>.npz`: `images`
(uint8, NHWC, 64x64 so every stride-2 layer sees an even size, where PyTorch's padding differs from
Keras' "same"), `logits` (timm's `model.eval()(x)`), `features` (`forward_features`: after the final
BN-ReLU, NHWC) and `stage{i}` (each stage's raw output, NHWC), x = (images / 255 - mean) / std.
"""

import os

import numpy as np
import timm
import torch
from safetensors.torch import save_file
from timm.layers import BatchNormAct2d, create_conv2d
from timm.models.resnetv2 import ResNetV2

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
NETWORKS = {
    "timm_resnetv2_50_tiny": dict(layers=(3, 4, 6, 3), channels=(32, 64, 128, 256), stem_chs=8),
    "timm_resnetv2_18_tiny": dict(layers=(2, 2, 2, 2), channels=(8, 16, 32, 64), stem_chs=8, basic=True,
                                  bottle_ratio=1.0),
}


def randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = 0.5 + torch.rand(n, generator=generator)
            module.bias.data = 0.2 * torch.randn(n, generator=generator)
            module.running_mean.data = 0.2 * torch.randn(n, generator=generator)
            module.running_var.data = 0.5 + torch.rand(n, generator=generator)
        elif isinstance(module, torch.nn.Conv2d):  # timm zero-initializes the last conv of each block
            fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
            module.weight.data = torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_out) ** 0.5
            if module.bias is not None:
                module.bias.data = 0.1 * torch.randn(module.bias.shape, generator=generator)


def main() -> None:
    os.makedirs(HERE, exist_ok=True)
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(((images / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32))
    for seed, (name, kwargs) in enumerate(NETWORKS.items()):
        generator = torch.Generator().manual_seed(seed)
        model = ResNetV2(num_classes=7, conv_layer=create_conv2d, norm_layer=BatchNormAct2d, **kwargs)
        randomize(model, generator)
        model.eval()
        stages: dict = {}
        hooks = [stage.register_forward_hook(lambda _m, _i, out, i=i, seen=stages: seen.__setitem__(f"stage{i}", out))
                 for i, stage in enumerate(model.stages)]
        with torch.no_grad():
            logits = model(x)
            features = model.forward_features(x)
        for hook in hooks:
            hook.remove()
        nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)  # noqa: E731
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(HERE, f"{name}.safetensors"),
                  metadata={"timm": timm.__version__, "torch": torch.__version__})
        np.savez_compressed(os.path.join(HERE, f"{name}.npz"), images=images, logits=logits.numpy(),
                            features=nhwc(features), **{k: nhwc(v) for k, v in stages.items()})
        print(name, sum(p.numel() for p in model.parameters()), "parameters; logits", logits.shape)


if __name__ == "__main__":
    main()
