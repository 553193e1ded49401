"""Pretrained torchvision backbones as feature extractors: a registry from a name to the
architecture, its published weights and the layer whose input is the penultimate feature.

Weights come from one of two places, and nothing is downloaded unless asked: `--weights PATH`
(a state dict saved in torchvision's format, for clusters without internet) or torchvision's
published weights, read from torch's hub cache and fetched into it only with `--download`.
The preprocessing is always the weights' own (`weights.transforms()`: resize, centre crop,
ImageNet normalisation), whichever file the parameters come from.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoal.errors import AutoALError


@dataclass(frozen=True)
class Backbone:
    """A torchvision architecture and the attribute path of its last (classifier) layer."""

    architecture: str     # torchvision.models.get_model name
    weights: str          # the published weights enum member, e.g. ResNet18_Weights.IMAGENET1K_V1
    classifier: str       # dotted path of the layer replaced by Identity: its input is the embedding
    dim: int              # embedding width


BACKBONES = {
    "resnet18": Backbone("resnet18", "ResNet18_Weights.IMAGENET1K_V1", "fc", 512),
    "resnet50": Backbone("resnet50", "ResNet50_Weights.IMAGENET1K_V2", "fc", 2048),
    "convnext_tiny": Backbone("convnext_tiny", "ConvNeXt_Tiny_Weights.IMAGENET1K_V1", "classifier.2", 768),
    "vit_b_16": Backbone("vit_b_16", "ViT_B_16_Weights.IMAGENET1K_V1", "heads.head", 768),
}


def get(name: str) -> Backbone:
    if name not in BACKBONES:
        raise AutoALError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def published(backbone: Backbone):
    """The weights enum member (its metadata and transforms need no download)."""
    from torchvision.models import get_weight

    return get_weight(backbone.weights)


def cached_weights(backbone: Backbone) -> Path:
    """Where torchvision keeps the published weights once downloaded (torch hub's checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(published(backbone).url)


def state_dict(name: str, weights: str | None = None, download: bool = False) -> dict:
    """The parameters of backbone `name`: from `weights` (a local state dict), else the published
    weights from torch's cache, downloaded into it only if `download`."""
    backbone = get(name)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise AutoALError(f"--weights {path}: no such file")
    else:
        path = cached_weights(backbone)
        if not path.is_file():
            if not download:
                raise AutoALError(f"the published weights of {name} ({backbone.weights}) are not in torch's cache "
                                  f"({path}); pass --download to fetch them (needs internet), or --weights PATH "
                                  "for a state dict saved from torchvision's architecture")
            try:
                published(backbone).get_state_dict(progress=True, check_hash=True)
            except (OSError, RuntimeError) as exc:   # URLError is an OSError; a bad hash a RuntimeError
                raise AutoALError(f"downloading the weights of {name} failed: {exc}") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # torch raises many types on bad bytes (UnpicklingError, RuntimeError, ...)
        raise AutoALError(f"{path} is not a readable torch state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, dict):
        raise AutoALError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return loaded


def build(name: str, parameters: dict) -> nn.Module:
    """Backbone `name` with `parameters` loaded, its classifier removed, in eval mode."""
    from torchvision.models import get_model

    backbone = get(name)
    model = get_model(backbone.architecture, weights=None)
    expected = model.state_dict()
    missing = [k for k in expected if k not in parameters]
    unexpected = [k for k in parameters if k not in expected]
    misshapen = [k for k in expected if k in parameters and getattr(parameters[k], "shape", None) != expected[k].shape]
    if missing or unexpected or misshapen:
        problems = [f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in
                    ((missing, "missing keys"), (unexpected, "unexpected keys"), (misshapen, "tensors of another shape"))
                    if keys]
        raise AutoALError(f"the weights are not a {name} state dict in torchvision's format: {'; '.join(problems)}")
    model.load_state_dict(parameters)
    parent_path, _, leaf = backbone.classifier.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, nn.Identity())
    return model.eval()


class Embedder:
    """A backbone and its preprocessing: batches of images in, embeddings out (no gradients)."""

    def __init__(self, name: str, parameters: dict, device: str = "cpu"):
        self.model = build(name, parameters).to(device)
        self.transform = published(get(name)).transforms()
        self.device = device

    def images(self, images: list) -> np.ndarray:
        """Embeddings [n, dim] of PIL images (any mode: converted to RGB)."""
        return self._embed(torch.stack([self.transform(image.convert("RGB")) for image in images]))

    def arrays(self, x: np.ndarray) -> np.ndarray:
        """Embeddings [n, dim] of float images [n, C, H, W] in [0, 1]; grayscale is replicated
        to the 3 channels ImageNet backbones take."""
        batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        elif batch.shape[1] != 3:
            raise AutoALError(f"images have {batch.shape[1]} channels; ImageNet backbones take 1 (gray) or 3")
        return self._embed(self.transform(batch))

    def _embed(self, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.model(batch.to(self.device)).float().cpu().numpy()
