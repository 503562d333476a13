r"""Small reference classifiers for tests, benchmarks and experiments (inputs (B, C, H, W) or (B, ...)).

* :class:`MLP` -- flatten, ``depth`` hidden layers of ``width`` units (optional BatchNorm1d).
* :class:`SmallCNN` -- two 3x3 conv blocks (``width``, ``2 width`` channels, optional BatchNorm2d),
  each followed by 2x2 average pooling, then a linear head: for 28x28 inputs, 7x7x(2 width) features.
* :class:`MaxPoolCNN` -- two conv blocks (3x3 by default) with 2x2 *max* pooling, a hidden linear layer, a
  linear head: on zero-background images the pooling windows are full of exact ties (the case where
  a one-sided finite difference is not the autograd derivative).
* :class:`ResidualCNN` -- a BatchNorm residual network (stem conv, ``blocks`` basic blocks of two
  3x3 conv + BatchNorm, global average pooling), SiLU by default, like the small ResNets users train.
* :class:`ResNet` -- a CIFAR-style ResNet with BatchNorm: ``stages`` stages of ``blocks`` basic blocks,
  doubling the channels and halving the map at each stage after the first (projection shortcuts).
* :class:`PaperCNN` -- the BlockMNIST model of the paper's first author (for 56x28 inputs), a
  MaxPoolCNN with 5x5 kernels and a hidden layer of 32 ``width``: ``width=32`` gives its conv 32, conv
  64, fc 1024, fc 10.
* :class:`SmallViT` -- patch embedding, pre-LayerNorm transformer blocks whose attention is
  ``torch.nn.functional.scaled_dot_product_attention``, mean pooling, linear head.

``activation`` is ``"relu"``, ``"softplus"``, ``"gelu"``, ``"silu"`` or ``"tanh"``; smooth ones make R(x) smooth
in x, which the finite-difference convergence tests rely on.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "softplus": nn.Softplus}
Size = Union[int, Tuple[int, int]]


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def _positive(**values: int) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def _pair(image_size: Size) -> Tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    _positive(image_height=h, image_width=w)
    return h, w


class MLP(nn.Sequential):
    """Flatten -> [Linear -> (BatchNorm1d) -> act] x depth -> Linear(num_classes)."""

    def __init__(self, in_features: int, num_classes: int = 10, width: int = 128, depth: int = 2,
                 activation: str = "relu", batchnorm: bool = False) -> None:
        _positive(in_features=in_features, num_classes=num_classes, width=width, depth=depth)
        layers = [nn.Flatten()]
        features = in_features
        for _ in range(depth):
            layers.append(nn.Linear(features, width, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(_activation(activation))
            features = width
        layers.append(nn.Linear(features, num_classes))
        super().__init__(*layers)


class SmallCNN(nn.Module):
    """[Conv3x3 -> (BatchNorm2d) -> act -> AvgPool2x2] for width, 2 width channels -> Linear(num_classes)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, image_size: Size = 28,
                 activation: str = "relu", batchnorm: bool = False) -> None:
        super().__init__()
        _positive(in_channels=in_channels, num_classes=num_classes, width=width)
        h, w = _pair(image_size)
        if h < 4 or w < 4:
            raise ValueError(f"SmallCNN needs images of at least 4x4 (two 2x2 poolings), got {h}x{w}")
        blocks = []
        for c_in, c_out in ((in_channels, width), (width, 2 * width)):
            blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batchnorm))
            if batchnorm:
                blocks.append(nn.BatchNorm2d(c_out))
            blocks += [_activation(activation), nn.AvgPool2d(2)]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(2 * width * (h // 4) * (w // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class MaxPoolCNN(nn.Module):
    """[Conv kxk ("same" padding) -> act -> MaxPool2x2] for width, 2 width channels -> Linear(hidden) -> act
    -> Linear(num_classes); k = ``kernel``, odd."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, image_size: Size = 28,
                 hidden: int = 128, activation: str = "relu", kernel: int = 3) -> None:
        super().__init__()
        _positive(in_channels=in_channels, num_classes=num_classes, width=width, hidden=hidden, kernel=kernel)
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (same padding), got {kernel}")
        h, w = _pair(image_size)
        if h < 4 or w < 4:
            raise ValueError(f"MaxPoolCNN needs images of at least 4x4 (two 2x2 poolings), got {h}x{w}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel, padding=kernel // 2), _activation(activation), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, kernel, padding=kernel // 2), _activation(activation), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Linear(2 * width * (h // 4) * (w // 4), hidden), _activation(activation),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class PaperCNN(MaxPoolCNN):
    """MaxPoolCNN(kernel=5, hidden=32 width): for a 56x28 input the features are 2 width x 14 x 7."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, image_size: Size = (56, 28),
                 activation: str = "relu") -> None:
        _positive(width=width)
        super().__init__(in_channels, num_classes, width, image_size, hidden=32 * width, activation=activation, kernel=5)


class _BasicBlock(nn.Module):
    """act(x + BN(Conv(act(BN(Conv(x))))))."""

    def __init__(self, channels: int, activation: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))))


class ResidualCNN(nn.Module):
    """Conv3x3 -> BN -> act -> ``blocks`` basic residual blocks -> global average pool -> Linear."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16, blocks: int = 2,
                 activation: str = "silu") -> None:
        super().__init__()
        _positive(in_channels=in_channels, num_classes=num_classes, width=width, blocks=blocks)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  _activation(activation))
        self.blocks = nn.Sequential(*[_BasicBlock(width, activation) for _ in range(blocks)])
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class _DownBlock(nn.Module):
    """act(P(x) + BN(Conv(act(BN(Conv_s2(x)))))): the first block of a stage, stride 2 and ``c_out``
    channels, its shortcut P a stride-2 1x1 conv + BN (ResNet's projection shortcut)."""

    def __init__(self, c_in: int, c_out: int, activation: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out))
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shortcut(x) + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))))


class ResNet(nn.Module):
    """A small CIFAR-style ResNet with BatchNorm: Conv3x3(width) -> BN -> act, then ``stages`` stages of
    ``blocks`` basic blocks at width, 2 width, 4 width, ... channels (every stage after the first opens
    with a stride-2 block), global average pooling, Linear. ``stages=3, blocks=2, width=16`` on 1x56x28
    BlockMNIST: maps 56x28, 28x14, 14x7, about 0.17M parameters."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, stages: int = 3, blocks: int = 2,
                 activation: str = "relu") -> None:
        super().__init__()
        _positive(in_channels=in_channels, num_classes=num_classes, width=width, stages=stages, blocks=blocks)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  _activation(activation))
        layers, channels = [], width
        for stage in range(stages):
            out = width * 2 ** stage
            first = _BasicBlock(out, activation) if stage == 0 else _DownBlock(channels, out, activation)
            layers += [first] + [_BasicBlock(out, activation) for _ in range(blocks - 1)]
            channels = out
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))


class _Block(nn.Module):
    """Pre-LN transformer block: x + SDPA(LN x), then x + MLP(LN x) with a 2x GELU MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class SmallViT(nn.Module):
    """Patch embedding (Conv p x p, stride p) + learned positions -> ``depth`` SDPA blocks -> LN -> mean -> Linear.

    ``patch_size=None`` picks the largest of 4, 2, 1 dividing both image sides while leaving at
    least 4 patches per side (4 for 28x28, 2 for 8x8).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, dim: int = 64, image_size: Size = 28,
                 patch_size: Optional[int] = None, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        _positive(in_channels=in_channels, num_classes=num_classes, dim=dim, depth=depth, heads=heads)
        h, w = _pair(image_size)
        if patch_size is None:
            patch_size = next(p for p in (4, 2, 1) if h % p == 0 and w % p == 0 and (p == 1 or min(h, w) // p >= 4))
        _positive(patch_size=patch_size)
        if h % patch_size or w % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide the image size {h}x{w}")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.pos = nn.Parameter(0.02 * torch.randn(1, (h // patch_size) * (w // patch_size), dim))
        self.blocks = nn.Sequential(*[_Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))
