"""Image-level networks beside the Fader model: classifiers of attributes and a patch critic.

* ``AttributeClassifier`` is Fader Networks' *evaluation* classifier (the judge of
  ``exprfast.evaluation``): 4x4 stride-2 convs down to 1x1 (BatchNorm after all but the first,
  LeakyReLU 0.2), then two linear layers. It is never used as a training loss.
* ``AttributeReader`` is the classifier used *in* training (AttGAN's attribute-classification
  loss on ``decode(z, flipped)``) and shipped in model files to read a photo's current
  attribute values. Its architecture differs from the judge's on purpose (global average
  pooling over an 8x8 map, one linear layer, against the judge's 1x1 map and two linear
  layers), so that the judge scores edits with features the model was never trained to satisfy.
* ``PatchDiscriminator``: a small unconditional PatchGAN critic (real photo vs edited decode),
  least-squares loss, for sharper edits. With ``critic=True`` the reader carries such a critic
  as a second head on its own trunk instead (AttGAN's shared discriminator/classifier).

Both classifiers map images ``(N, 3, S, S)`` in [-1, 1] to logits ``(N, n_attrs, 2)``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_attr_names, check_img_size

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma of R, G, B


def luma(images: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` BT.601 luma of ``(N, 3, H, W)`` RGB images, in their dtype and device."""
    return (images * images.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True)


def classifier_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``(N, A, 2)`` logits against ``(N, A)`` 0/1 labels, averaged over the
    batch and summed over the attributes (Fader's ``get_attr_loss``)."""
    per_attr = F.cross_entropy(logits.float().transpose(1, 2), labels.long(), reduction="none")
    return per_attr.mean(0).sum()


class _ImageClassifier(nn.Module):
    """Shape checks and ``predict`` shared by the two classifiers."""

    def _check_input(self, x: torch.Tensor) -> None:
        expected = (3, self.img_size, self.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            shape = ", ".join(map(str, expected))
            raise ValueError(f"expected images (N, {shape}), got {tuple(x.shape)}")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """0/1 predictions ``(N, n_attrs)``."""
        return self(x).argmax(-1)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """P(attribute = 1) ``(N, n_attrs)``."""
        return self(x).float().softmax(-1)[..., 1]


class AttributeClassifier(_ImageClassifier):
    """Fader Networks' evaluation classifier for binary attributes (the judge)."""

    def __init__(self, img_size: int, attrs: Sequence[str], init_fm: int = 32,
                 max_fm: int = 512, hid_dim: int = 512) -> None:
        super().__init__()
        check_img_size(img_size)
        self.img_size, self.attrs = img_size, list(check_attr_names(attrs))
        self.config = {"img_size": img_size, "attrs": list(self.attrs), "init_fm": init_fm,
                       "max_fm": max_fm, "hid_dim": hid_dim}
        layers, n_in, n_out = [], 3, init_fm
        for i in range(int(math.log2(img_size))):  # halve the side down to 1x1
            layers.append(nn.Conv2d(n_in, n_out, 4, 2, 1))
            if i > 0:  # Fader leaves the first layer unnormalised
                layers.append(nn.BatchNorm2d(n_out))
            layers.append(nn.LeakyReLU(0.2))
            n_in, n_out = n_out, min(2 * n_out, max_fm)
        self.conv_layers = nn.Sequential(*layers)
        self.proj_layers = nn.Sequential(
            nn.Linear(n_in, hid_dim), nn.LeakyReLU(0.2), nn.Linear(hid_dim, 2 * len(self.attrs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        logits = self.proj_layers(self.conv_layers(x).flatten(1))
        return logits.view(len(x), len(self.attrs), 2)


class AttributeReader(_ImageClassifier):
    """The training-time attribute classifier: 4x4 stride-2 convs (BatchNorm after all but the
    first, LeakyReLU 0.2) down to an 8x8 map (4x4 below 64 px), global average pooling, one
    linear layer. Without the BatchNorm the decoder learned to fool it with coloured stripes
    (docs/SMILES.md, "The edit losses"); in training it normalises each batch, real or decoded,
    with that batch's own statistics. ``luminance``: it reads only the faces' luma (BT.601), so
    colour cannot carry the attribute for it. ``critic``: a second head, a 3x3 conv from the
    last feature map to one realness logit per patch, trained on decoded faces as fakes, so the
    features the attribute is read from also know what a decoded texture looks like (AttGAN)."""

    def __init__(self, img_size: int, attrs: Sequence[str], init_fm: int = 32,
                 max_fm: int = 256, luminance: bool = False, critic: bool = False) -> None:
        super().__init__()
        check_img_size(img_size, minimum=8)
        self.img_size, self.attrs = img_size, list(check_attr_names(attrs))
        self.luminance, self.critic = bool(luminance), bool(critic)
        self.config = {"img_size": img_size, "attrs": list(self.attrs), "init_fm": init_fm,
                       "max_fm": max_fm, "luminance": self.luminance, "critic": self.critic}
        n_layers = max(1, int(math.log2(img_size)) - (3 if img_size >= 64 else 2))
        layers, n_in, n_out = [], 1 if self.luminance else 3, init_fm
        for k in range(n_layers):
            norm = [nn.BatchNorm2d(n_out)] if k else []
            layers += [nn.Conv2d(n_in, n_out, 4, 2, 1), *norm, nn.LeakyReLU(0.2, inplace=True)]
            n_in, n_out = n_out, min(2 * n_out, max_fm)
        self.conv_layers = nn.Sequential(*layers)
        self.head = nn.Linear(n_in, 2 * len(self.attrs))
        self.realness = nn.Conv2d(n_in, 1, 3, 1, 1) if self.critic else None

    def forward(self, x: torch.Tensor, with_realness: bool = False):
        """Logits ``(N, n_attrs, 2)``; with ``with_realness`` (a ``critic`` reader) also the
        realness logits ``(N, 1, h, w)`` of the critic head."""
        self._check_input(x)
        if with_realness and self.realness is None:
            raise ValueError("with_realness=True needs a reader built with critic=True")
        features = self._feature_map(x)
        logits = self.head(features.mean((2, 3))).view(len(x), len(self.attrs), 2)
        return (logits, self.realness(features)) if with_realness else logits

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features ``(N, F)`` that the attribute head reads."""
        self._check_input(x)
        return self._feature_map(x).mean((2, 3))

    def _feature_map(self, x: torch.Tensor) -> torch.Tensor:
        if self.luminance:
            x = luma(x)
        return self.conv_layers(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN critic: 4x4 stride-2 convs (LeakyReLU 0.2, no normalisation) to 1/8 of the side,
    then a 3x3 conv to one realness logit per patch."""

    def __init__(self, img_size: int, init_fm: int = 32, n_layers: int = 3) -> None:
        super().__init__()
        check_img_size(img_size, minimum=2 ** n_layers)
        self.img_size = img_size
        self.config = {"img_size": img_size, "init_fm": init_fm, "n_layers": n_layers}
        layers, n_in = [], 3
        for k in range(n_layers):
            n_out = init_fm * 2 ** k
            layers += [nn.Conv2d(n_in, n_out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            n_in = n_out
        layers.append(nn.Conv2d(n_in, 1, 3, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def least_squares_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """LSGAN: mean of ``(logit - 1)^2`` for real targets, ``logit^2`` for fake ones."""
    target = 1.0 if real else 0.0
    return (logits.float() - target).pow(2).mean()


def critic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """A least-squares critic's own loss: real faces towards 1, decoded ones towards 0."""
    return (least_squares_loss(real_logits, real=True)
            + least_squares_loss(fake_logits, real=False)) / 2
