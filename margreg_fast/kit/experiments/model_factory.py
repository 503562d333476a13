"""Build the experiment's classifier from the config (architectures live in margreg_fast.kit.models)."""
from __future__ import annotations

import math

import torch

from .. import models
from .config import ExperimentConfig


def build_model(cfg: ExperimentConfig, *, in_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """A fresh model for inputs of shape ``in_shape`` = (C, H, W); call after seeding torch."""
    c, h, w = in_shape
    if cfg.model == "papercnn":
        return models.PaperCNN(in_channels=c, num_classes=num_classes, width=cfg.width, image_size=(h, w),
                               activation=cfg.activation)
    if cfg.model == "mlp":
        return models.MLP(in_features=math.prod(in_shape), num_classes=num_classes, width=cfg.width,
                          activation=cfg.activation)
    if cfg.model == "cnn":
        return models.SmallCNN(in_channels=c, num_classes=num_classes, width=cfg.width, image_size=(h, w),
                               activation=cfg.activation)
    if cfg.model == "resnet":
        return models.ResNet(in_channels=c, num_classes=num_classes, width=cfg.width, activation=cfg.activation)
    return models.SmallViT(in_channels=c, num_classes=num_classes, dim=cfg.width, image_size=(h, w))
