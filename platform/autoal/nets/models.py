"""Task models: a backbone giving an embedding and feature taps, a dropout
classifier head (so MC dropout samples a real posterior) and a loss-prediction
module on the taps (Yoo & Kweon 2019).

Backbones are registered by name; `auto` picks one from the data's shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from autoal.errors import AutoALError
from autoal.safe_io import shown


class MLPBackbone(nn.Module):
    """Feature vectors: two hidden layers; each is a tap."""

    def __init__(self, shape: tuple[int, ...], width: int = 256):
        super().__init__()
        d = int(torch.tensor(shape).prod())
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(d, width), nn.ReLU()),
                                     nn.Sequential(nn.Linear(width, width // 2), nn.ReLU())])
        self.embed_dim = width // 2
        self.tap_channels = (width, width // 2)

    def forward(self, x):
        h, taps = x.flatten(1), []
        for layer in self.layers:
            h = layer(h)
            taps.append(h)
        return h, taps


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class CNNBackbone(nn.Module):
    """A small CPU-friendly CNN for small images (8x8 digits up to 64x64)."""

    def __init__(self, shape: tuple[int, ...], width: int = 32):
        super().__init__()
        c = shape[0]
        self.blocks = nn.ModuleList([_conv_block(c, width),
                                     nn.Sequential(_conv_block(width, 2 * width), nn.MaxPool2d(2)),
                                     nn.Sequential(_conv_block(2 * width, 4 * width), nn.MaxPool2d(2))])
        self.embed_dim = 4 * width
        self.tap_channels = (width, 2 * width, 4 * width)

    def forward(self, x):
        h, taps = x, []
        for block in self.blocks:
            h = block(h)
            taps.append(h)
        return F.adaptive_avg_pool2d(h, 1).flatten(1), taps


class ResNet18Backbone(nn.Module):
    """torchvision ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        net = resnet18(num_classes=10)
        net.conv1 = nn.Conv2d(shape[0], 64, 3, stride=1, padding=1, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.embed_dim = 512
        self.tap_channels = (64, 128, 256, 512)

    def forward(self, x):
        h, taps = self.stem(x), []
        for stage in self.stages:
            h = stage(h)
            taps.append(h)
        return F.adaptive_avg_pool2d(h, 1).flatten(1), taps


BACKBONES: dict[str, Callable[[tuple[int, ...]], nn.Module]] = {
    "mlp": MLPBackbone,
    "cnn": CNNBackbone,
    "resnet18": ResNet18Backbone,
}


class DropoutHead(nn.Module):
    """Linear classifier behind dropout. `sample` keeps dropout on in eval mode:
    the backbone runs once and only this head runs T times."""

    def __init__(self, dim: int, outputs: int, p: float):
        super().__init__()
        self.p = p
        self.linear = nn.Linear(dim, outputs)

    def forward(self, e):
        return self.linear(F.dropout(e, self.p, self.training))

    def sample(self, e, t: int, keys: torch.Tensor | None = None):
        """[B, T, outputs] logits from T dropout masks. With `keys` (one int64 per sample, its
        id), sample i's masks are a function of keys[i] alone, so its MC statistics do not
        depend on the batch it is scored in or on the process that scores it."""
        e = e.unsqueeze(1).expand(-1, t, -1)
        if keys is None:
            return self.linear(F.dropout(e, self.p, True))
        keep = keyed_uniform(keys, t, e.shape[2]).to(e.device) >= self.p
        return self.linear(e * keep / (1.0 - self.p))


def keyed_uniform(keys: torch.Tensor, t: int, d: int) -> torch.Tensor:
    """[B, T, D] uniforms in [0, 1), entry (i, s, j) a hash of (keys[i], s, j): SplitMix64's
    finaliser on the int64 counter (wrapping arithmetic), 24 of its bits as the fraction; computed
    on the keys' device, and the same on every device."""
    keys = keys.to(torch.int64)
    s, j = torch.arange(t, device=keys.device), torch.arange(d, device=keys.device)
    x = keys[:, None, None] * -7046029254386353131 \
        + (s[None, :, None] * d + j[None, None, :] + 1) * 1442695040888963407
    x = (x ^ (x >> 30)) * -4658895280553007687
    x = (x ^ (x >> 27)) * -7723592293110705685
    x = x ^ (x >> 31)
    return ((x >> 20) & 0xFFFFFF).to(torch.float32) / float(1 << 24)


class LossPredictor(nn.Module):
    """Loss-prediction module (Yoo & Kweon 2019): GAP + FC + ReLU per tap, concatenated, FC to one scalar."""

    def __init__(self, tap_channels: tuple[int, ...], width: int = 64):
        super().__init__()
        self.branches = nn.ModuleList([nn.Sequential(nn.Linear(c, width), nn.ReLU()) for c in tap_channels])
        self.out = nn.Linear(width * len(tap_channels), 1)

    def forward(self, taps):
        pooled = [t.flatten(2).mean(2) if t.dim() > 2 else t for t in taps]
        return self.out(torch.cat([b(p) for b, p in zip(self.branches, pooled)], 1)).squeeze(1)


class TaskNet(nn.Module):
    """Backbone + dropout head + loss-prediction module.

    By default the loss module reads detached taps: it learns to predict the task
    loss without changing the classifier, so every strategy trains the same model
    given the same labels (paired comparisons stay exact). LPL trains both jointly
    for the first part of the fit, as Yoo & Kweon do (`forward(x, joint=True)`).
    """

    def __init__(self, backbone: nn.Module, outputs: int, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.head = DropoutHead(backbone.embed_dim, outputs, dropout)
        self.loss_head = LossPredictor(backbone.tap_channels)

    def forward(self, x, joint: bool = False):
        """(logits, predicted loss, dropout-free logits): what training needs, in one call that DDP
        can sync. `joint`: the loss module's gradient also reaches the backbone through the taps.
        The loss module learns to rank the dropout-free loss: once the labels are memorised, the
        dropout head's training loss is mostly its mask's noise (two masks' losses agree with
        Spearman 0.07 on 40 digits labels, benchmarks/lpl_vaal_why.py); Yoo & Kweon's model has
        no dropout, so its loss is this target."""
        embedding, taps = self.backbone(x)
        pred_loss = self.loss_head(taps) if joint else self.predict_loss(taps)
        return self.head(embedding), pred_loss, self.head.linear(embedding)

    def features(self, x):
        """(embedding, taps) of the backbone."""
        return self.backbone(x)

    def predict_loss(self, taps):
        return self.loss_head([t.detach() for t in taps])


def resolve(name: str, shape: tuple[int, ...]) -> str:
    """The backbone name for `auto`: ResNet-18 for real images, the small CNN
    for tiny ones (digits' 8x8), the MLP for feature vectors."""
    if name != "auto":
        if name not in BACKBONES:
            raise AutoALError(f"unknown model {shown(name)}; known: auto, {', '.join(sorted(BACKBONES))}")
        if name != "mlp" and len(shape) != 3:
            raise AutoALError(f"model {shown(name)} needs images (C, H, W); this pool has feature vectors of shape "
                              f"{list(shape)}")
        return name
    if len(shape) != 3:
        return "mlp"
    return "resnet18" if min(shape[1:]) >= 28 else "cnn"


def build(name: str, shape: tuple[int, ...], outputs: int, dropout: float = 0.3) -> TaskNet:
    """A fresh TaskNet; seed torch beforehand for a reproducible init."""
    return TaskNet(BACKBONES[resolve(name, shape)](tuple(shape)), outputs, dropout)


def loss_ranking(pred: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Yoo & Kweon's pairwise ranking loss: pair the batch's first and second
    halves; the predicted order must match the true loss order by a margin."""
    half = len(pred) // 2
    if half == 0:
        return pred.sum() * 0.0
    p1, p2 = pred[:half], pred[half:2 * half]
    t1, t2 = target[:half].detach(), target[half:2 * half].detach()
    sign = torch.sign(t1 - t2)
    return F.relu(-sign * (p1 - p2) + margin).mean()


@dataclass(frozen=True)
class ModelRecipe:
    """Everything needed to rebuild a TaskNet in another process."""

    name: str
    shape: tuple[int, ...]
    classes: int
    dropout: float

    def build(self) -> "TaskNet":
        return build(self.name, self.shape, self.classes, self.dropout)
