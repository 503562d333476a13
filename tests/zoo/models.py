"""The model zoo: real timm models, random init, small inputs (tests/zoo/test_model_zoo.py).

Each entry builds a fresh model with 10 classes and gives its input shape. ``smooth`` marks the
models whose logits are smooth functions of the input (GELU / SiLU activations, average pooling,
attention): there every finite difference agrees with double backprop at the default step. The
others have ReLU kinks (resnet18, regnetx_002, mobilenetv3's early blocks) or max pooling (resnet18):
see tests/zoo/test_model_zoo.py for how they are judged.

Input sizes: 3x32x32, except EfficientNet and MobileNetV3 at 3x128x128. Those two downsample 32x
and normalise their last stages by train-mode BatchNorm: at 32x32 their last maps are 1x1, each
channel's batch statistics come from 4 numbers, and the held-statistics network at random init has
input gradients orders of magnitude larger than at 128x128 and curves so much over the float32 step
(~1e-2 of the input scale) that every secant leaves the tangent. At 128x128 (4x4 last maps, a
configuration people train) their secant ratios are near 1, as the zoo's default-step test asserts.
"""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Tuple

from torch import nn

from tests.timm_import import import_timm

NUM_CLASSES = 10
BATCH = 4


class ZooModel(NamedTuple):
    build: Callable[[], nn.Module]
    shape: Tuple[int, int, int]
    smooth: bool


def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return import_timm().create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)
    return build


def _groupnorm_resnet() -> nn.Module:
    """timm's resnet18 with GroupNorm (8 groups), SiLU and a strided conv in place of the stem's max pool."""
    timm = import_timm()
    from timm.layers import GroupNorm

    return timm.create_model("resnet18", pretrained=False, num_classes=NUM_CLASSES, act_layer="silu",
                             norm_layer=lambda channels, **kw: GroupNorm(channels, num_groups=8, **kw),
                             replace_stem_pool=True)


#: ViTs at 32x32 with 8x8 patches: 16 tokens (and a class token), every block and width as released.
_VIT = dict(img_size=32, patch_size=8)

ZOO: Dict[str, ZooModel] = {
    "resnet18": ZooModel(_timm("resnet18"), (3, 32, 32), smooth=False),
    "efficientnet_b0": ZooModel(_timm("efficientnet_b0"), (3, 128, 128), smooth=True),
    "mobilenetv3_small_100": ZooModel(_timm("mobilenetv3_small_100"), (3, 128, 128), smooth=False),
    "convnext_atto": ZooModel(_timm("convnext_atto"), (3, 32, 32), smooth=True),
    "regnetx_002": ZooModel(_timm("regnetx_002"), (3, 32, 32), smooth=False),
    "vit_tiny_patch16_224": ZooModel(_timm("vit_tiny_patch16_224", drop_path_rate=0.1, **_VIT), (3, 32, 32),
                                     smooth=True),
    "deit_tiny_patch16_224": ZooModel(_timm("deit_tiny_patch16_224", **_VIT), (3, 32, 32), smooth=True),
    "resnet18_groupnorm_silu": ZooModel(_groupnorm_resnet, (3, 32, 32), smooth=True),
}

#: Deep mobile BatchNorm families (smallest variants), whose input gradients at random init are in the
#: hundreds to thousands: the step rule's curvature bound is for them (margreg_fast/_estimators/steps.py).
MOBILE = ("mobileone_s0", "fbnetc_100", "mnasnet_small", "mobilenetv4_conv_small", "repvgg_a0",
          "efficientnetv2_rw_t")
#: Dropout and drop-path rates of the zoo's stochastic variants.
DROP = dict(drop_rate=0.2, drop_path_rate=0.1)


def build_at(name: str, size: int, drop: bool) -> nn.Module:
    """A fresh zoo or mobile model (10 classes, train mode) for 3 x size x size inputs, with dropout and
    drop-path at :data:`DROP` or without either (ViTs: 16x16 patches, their image size set to ``size``)."""
    timm = import_timm()
    rates = DROP if drop else dict(drop_rate=0.0, drop_path_rate=0.0)
    if name == "resnet18_groupnorm_silu":
        from timm.layers import GroupNorm
        model = timm.create_model("resnet18", pretrained=False, num_classes=NUM_CLASSES, act_layer="silu",
                                  norm_layer=lambda channels, **kw: GroupNorm(channels, num_groups=8, **kw),
                                  replace_stem_pool=True, **rates)
    else:
        extra = dict(img_size=size, patch_size=16) if name.startswith(("vit_", "deit_")) else {}
        model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **rates, **extra)
    return model.train()


#: Every model of the step rule's checks: the zoo and the mobile families.
STEP_RULE_MODELS = tuple(ZOO) + MOBILE
