"""The mouth refiner: a second stage that redraws the mouth of a decoded face with the detail
(lip lines, teeth) that the decoder's reconstruction loss averages away.

It is pix2pix (Isola et al. 2017) on one box of the face: a small U-Net maps the decoder's
output inside ``REFINE_BOX``, with the attribute values the face was decoded with as constant
maps, to that output plus a learned change. It is trained after the Fader model, on its frozen
reconstructions of the training faces (decoded with their true values), with an L1 loss to the
real face and a conditional patch critic (hinge loss, spectral norm) that sees the decoded box
and the values beside the real or redrawn one. The critic on the decoder itself traded the
smile for texture (docs/SMILES.md); this one never pulls on the decoder.

Why the values: without them the refiner can only guess from the decoded pixels, and an edit's
pale band is more often closed lips than teeth in the reconstructions it learns from, so it
closed the edited smiles (docs/SMILES.md, "A mouth refiner").

``MouthRefiner(faces, attrs)`` changes only the box, its change faded out over the box's outer
``FEATHER`` of the side so no seam shows; ``redraw(box, attrs)`` is the U-Net alone (training
takes the box at jittered places, so that it works wherever a mouth sits in it).

``highpass`` (σ in pixels, 0: off) keeps only the fine part of the change: its Gaussian blur is
taken away, so the decoded box's coarse shape, which carries the edit, is the decoder's, and the
refiner adds lines and texture only. A refiner free to change everything weakened the edits
(flips 77.5 / 85.5 %); the same weights high-passed at σ = 1 px kept them (97.8 / 98.7 %) with
3.3 times the decoder's mouth detail (docs/SMILES.md). The bundled refiner is high-passed too
(σ = 2 px), coupled (below), and was trained on round trips as well (``--refiner-cycle``).

``scale`` (1 or 2) redraws the box at that many times the model's resolution: the decoded box
is upsampled (bilinear) and the U-Net draws at the finer size, learning from the real faces at
that size, and ``forward`` returns the whole face at it (the rest upsampled). Why: at 128 px a
tooth is 2-3 pixels wide and the gaps between teeth are one grey pixel; at 256 px both are drawn
(docs/SMILES.md, "Teeth at twice the resolution").

``coupled`` names attributes that the refiner alone is conditioned on (e.g. Mouth_Slightly_Open):
in training they are the data's labels; in use, where nothing sets them, each takes the value of
the model's first attribute. Why: a fifth of the neutral training faces have their mouth open,
so a value of Smiling alone does not tell the refiner whether to close a mouth (measured in
docs/SMILES.md, "told whether the mouth opens").
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..checks import check_img_size

# (top, bottom, left, right) as fractions of the side: rows 68-116, cols 32-96 of a 128 px face,
# the mouth region (data.FACE_REGIONS) with a margin; both sides multiples of 8 (three
# downsamplings) at 64 px and above.
REFINE_BOX = (0.53125, 0.90625, 0.25, 0.75)
FEATHER = 6 / 128
BLUR_SIGMA = 2 / 128  # of the MouthReader's blur: 2 px at 128 px
_DEPTH = 3


def gaussian_taps(sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian of ``sigma`` pixels, out to 2 sigma."""
    radius = math.ceil(2 * sigma)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1) / sigma) ** 2)
    return taps / taps.sum()


def gaussian_blur(images: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """``images`` (N, C, H, W) blurred by the separable ``taps``, edges replicated."""
    radius, channels = len(taps) // 2, images.shape[1]
    taps = taps.to(images.dtype)
    x = F.pad(images, (radius,) * 4, mode="replicate")
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def upsample(images: torch.Tensor, scale: int) -> torch.Tensor:
    """``images`` (N, C, H, W) at ``scale`` times the size (bilinear; themselves at 1)."""
    return images if scale == 1 else F.interpolate(images, scale_factor=scale, mode="bilinear",
                                                   align_corners=False)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square ``images`` (N, C, S, S) at ``size`` px: antialiased bicubic, as the editor
    resizes a photo's face for the model (themselves when already that size)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False,
                         antialias=True)


def refine_box(size: int) -> tuple[int, int, int, int]:
    """``REFINE_BOX`` in pixels of a ``size``-px face: (top, bottom, left, right)."""
    return tuple(round(f * size) for f in REFINE_BOX)


def hinge_critic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The critic's hinge loss: real logits above 1, redrawn ones below -1."""
    return F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.float().mean()


def _conv(n_in: int, n_out: int, down: bool = False) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 4, 2, 1) if down else nn.Conv2d(n_in, n_out, 3, 1, 1)


def _with_values(images: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
    """``images`` with one constant map per attribute, ``2 a - 1``, as more channels."""
    if attrs.dim() != 2 or attrs.shape[0] != images.shape[0]:
        raise ValueError(f"attrs must have shape ({images.shape[0]}, n_attrs), got "
                         f"{list(attrs.shape)}")
    maps = (2 * attrs.to(images.dtype) - 1)[:, :, None, None]
    return torch.cat([images, maps.expand(-1, -1, *images.shape[2:])], 1)


class MouthRefiner(nn.Module):
    """U-Net (3x3 convs, three 4x4 stride-2 downsamplings, two 3x3 convs at the bottom as a
    residual block, nearest upsampling + skip concatenation + 3x3 conv back up; LeakyReLU 0.2,
    no normalisation) whose output conv starts at zero: a fresh refiner changes nothing."""

    def __init__(self, img_size: int = 128, width: int = 24, n_attrs: int = 1,
                 highpass: float = 0.0, coupled: tuple[str, ...] | list[str] = (),
                 scale: int = 1) -> None:
        super().__init__()
        check_img_size(img_size, minimum=64)
        for name, value in (("width", width), ("n_attrs", n_attrs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(highpass, bool) or not isinstance(highpass, (int, float)) \
                or not 0 <= highpass <= img_size / 8:
            raise ValueError(f"highpass must be a number of pixels in [0, {img_size / 8:g}] "
                             f"(0: off), got {highpass!r}")
        if not isinstance(coupled, (list, tuple)) or not all(isinstance(a, str) and a
                                                             for a in coupled):
            raise ValueError(f"coupled must be a list of attribute names, got {coupled!r}")
        if not isinstance(scale, int) or isinstance(scale, bool) or scale not in (1, 2):
            raise ValueError(f"scale must be 1 or 2, got {scale!r}")
        self.config = {"img_size": img_size, "width": width, "n_attrs": n_attrs}
        if highpass:  # files written before the option have no key: 0
            self.config["highpass"] = float(highpass)
        if coupled:  # nor this one: none
            self.config["coupled"] = list(coupled)
        if scale != 1:  # nor this one: 1
            self.config["scale"] = scale
        self.img_size, self.n_attrs, self.coupled = img_size, n_attrs, tuple(coupled)
        self.scale, self.out_size = scale, img_size * scale
        # highpass is in the model's pixels; the change is drawn at scale times finer ones
        self.register_buffer("highpass_taps", gaussian_taps(highpass * scale) if highpass
                             else None, persistent=False)
        widths = [width * 2 ** k for k in range(_DEPTH + 1)]  # 1, 2, 4, 8 x width
        self.stem = _conv(3 + self.n_values, widths[0])
        self.down = nn.ModuleList(_conv(a, b, down=True) for a, b in zip(widths, widths[1:]))
        self.middle = nn.ModuleList([_conv(widths[-1], widths[-1]), _conv(widths[-1], widths[-1])])
        self.up = nn.ModuleList(_conv(widths[k + 1] + widths[k], widths[k])
                                for k in reversed(range(_DEPTH)))
        self.out = _conv(widths[0], 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        top, bottom, left, right = refine_box(self.out_size)
        self.register_buffer("fade", _fade(bottom - top, right - left,
                                           max(1, round(FEATHER * self.out_size))),
                             persistent=False)

    @property
    def n_values(self) -> int:
        """The values ``redraw`` takes: the model's attributes, then the coupled ones."""
        return self.n_attrs + len(self.coupled)

    def high_passed(self, sigma: float) -> "MouthRefiner":
        """A refiner with these weights whose change is high-passed at ``sigma`` pixels (0: not
        at all), e.g. one trained without the high-pass (``exprfast export --refiner-highpass``;
        measured in docs/SMILES.md)."""
        refiner = MouthRefiner(**{**self.config, "highpass": sigma})
        refiner.load_state_dict(self.state_dict())
        return refiner.train(self.training)

    def check_fits(self, model: nn.Module) -> None:
        """ValueError unless this refiner redraws the faces ``model`` decodes (its side and
        number of attributes)."""
        if (self.img_size, self.n_attrs) != (model.img_size, len(model.attrs)):
            raise ValueError(f"the mouth refiner is for {self.img_size} px faces with "
                             f"{self.n_attrs} attributes, the model for {model.img_size} px "
                             f"with {len(model.attrs)}")

    def redraw(self, box: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        """``box`` (N, 3, H, W), H and W multiples of 8, decoded with attribute values
        ``attrs`` (N, n_values: the model's, then the coupled ones), upsampled ``scale`` times,
        plus the refiner's change."""
        box = upsample(box, self.scale)
        h = F.leaky_relu(self.stem(_with_values(box, attrs)), 0.2)
        skips = []
        for conv in self.down:
            skips.append(h)
            h = F.leaky_relu(conv(h), 0.2)
        h = h + self.middle[1](F.leaky_relu(self.middle[0](h), 0.2))
        for conv, skip in zip(self.up, reversed(skips)):
            h = torch.cat([F.interpolate(h, scale_factor=2, mode="nearest"), skip], 1)
            h = F.leaky_relu(conv(h), 0.2)
        change = self.out(h)
        if self.highpass_taps is not None:
            change = change - gaussian_blur(change, self.highpass_taps)
        return box + change

    def forward(self, faces: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        """Decoded ``(N, 3, img_size, img_size)`` faces with their ``REFINE_BOX`` redrawn, at
        ``out_size`` (``scale`` times img_size); ``attrs``: the ``(N, n_attrs)`` values they were
        decoded with (the coupled attributes take the first one's)."""
        if faces.dim() != 4 or tuple(faces.shape[1:]) != (3, self.img_size, self.img_size):
            raise ValueError(f"faces must have shape (N, 3, {self.img_size}, {self.img_size}), "
                             f"got {list(faces.shape)}")
        if attrs.dim() != 2 or attrs.shape != (faces.shape[0], self.n_attrs):
            raise ValueError(f"attrs must have shape ({faces.shape[0]}, {self.n_attrs}), got "
                             f"{list(attrs.shape)}")
        values = torch.cat([attrs, attrs[:, :1].expand(-1, len(self.coupled))], 1)
        top, bottom, left, right = refine_box(self.img_size)
        box = faces[:, :, top:bottom, left:right]
        change = (self.redraw(box, values) - upsample(box, self.scale)) * self.fade.to(faces.dtype)
        size = self.out_size
        faces = upsample(faces, self.scale)
        top, bottom, left, right = refine_box(size)
        return faces + F.pad(change, (left, size - right, top, size - bottom))


def _fade(height: int, width: int, ramp: int) -> torch.Tensor:
    """(1, 1, height, width): 1 inside, falling linearly to 1/ramp at the outermost pixels."""
    def edge(n):
        i = torch.arange(n)
        return torch.minimum(i + 1, n - i).clamp(max=ramp).float() / ramp
    return (edge(height)[:, None] * edge(width)[None, :])[None, None]


def _trunk(n_in: int, width: int, wrap=lambda conv: conv, norm: bool = False) -> list[nn.Module]:
    """Three ``wrap``ped 4x4 stride-2 convs (widths 1, 2, 4 x ``width``), LeakyReLU 0.2; with
    ``norm``, BatchNorm after all but the first."""
    layers = []
    for k in range(3):
        n_out = width * 2 ** k
        layers += [wrap(_conv(n_in, n_out, down=True)),
                   *([nn.BatchNorm2d(n_out)] if norm and k else []), nn.LeakyReLU(0.2)]
        n_in = n_out
    return layers


class MouthCritic(nn.Module):
    """Conditional PatchGAN critic of the refiner: the decoded box, a candidate (real or
    redrawn) and the attribute values' maps as 6 + n_attrs channels, a spectral-normalised
    ``_trunk`` and a 3x3 conv to one logit per patch."""

    def __init__(self, width: int = 32, n_attrs: int = 1) -> None:
        super().__init__()
        self.config = {"width": width, "n_attrs": n_attrs}
        self.layers = nn.Sequential(*_trunk(6 + n_attrs, width, spectral_norm),
                                    spectral_norm(_conv(4 * width, 1)))

    def forward(self, decoded: torch.Tensor, candidate: torch.Tensor,
                attrs: torch.Tensor) -> torch.Tensor:
        return self.layers(_with_values(torch.cat([decoded, candidate], 1), attrs))


class MouthReader(nn.Module):
    """The attributes read from a box alone: a fixed Gaussian blur (``BLUR_SIGMA`` of the side),
    ``_trunk`` with BatchNorm, global average pooling, a linear layer to ``(N, n_attrs, 2)``
    logits (``classifier_loss``'s). The refiner stage trains it on the real faces' boxes; the
    whole-face reader is no judge of a redrawn mouth, since the rest of an edited face already
    shows the edit (docs/SMILES.md). Why the blur: a reader of the sharp box was pleased by
    faint grids and white speckles, textures that a blur removes, so that only the mouth's
    shape (its corners, a band of teeth) can carry the attribute. The BatchNorm is the
    ``AttributeReader``'s defence against coloured stripes; neither stopped the coarser
    coloured grids that a longer run drew over smiles taken off (docs/SMILES.md)."""

    def __init__(self, img_size: int = 128, width: int = 32, n_attrs: int = 1) -> None:
        super().__init__()
        self.config = {"img_size": img_size, "width": width, "n_attrs": n_attrs}
        self.register_buffer("taps", gaussian_taps(BLUR_SIGMA * img_size), persistent=False)
        self.trunk = nn.Sequential(*_trunk(3, width, norm=True))
        self.head = nn.Linear(4 * width, 2 * n_attrs)

    def blur(self, box: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(box, self.taps)

    def forward(self, box: torch.Tensor) -> torch.Tensor:
        features = self.trunk(self.blur(box)).mean((2, 3))
        return self.head(features).view(len(box), -1, 2)
