"""Fader-style attribute-transfer networks: encoder, label-conditioned decoder, latent discriminator.

Follows facebookresearch/FaderNetworks ``src/model.py`` (Lample et al. 2017) with the decoder
refinement of Liu & Jin (2019): every decoder layer is a nearest 2x upsample followed by a 3x3
convolution instead of a 4x4 stride-2 transposed convolution, with the attribute labels
concatenated to its input as constant maps, as in Fader.

Presets (``build(preset=...)``):

* ``"paper"``: the refined decoder on the fused op :class:`exprfast.op.nn.UpLabelConv2d` (upsample +
  label maps + 3x3 conv without materialising the upsampled input or the maps).
* ``"paper-eager"``: the same network with the same parameters (state_dicts load both ways) in
  plain PyTorch: ``nn.Upsample``, ``torch.cat`` of expanded label maps, ``nn.Conv2d``.
* ``"fader"``: Fader's decoder, ``nn.ConvTranspose2d(in + 2K, out, 4, 2, 1, bias=False)``.

The encoder and the latent discriminator are Fader's in every preset.
"""
import math

import torch
from torch import nn

from ..checks import check_attr_names, check_img_size, is_int, is_power_of_two
from .layers import DownConv2d

PRESETS = ("paper", "paper-eager", "fader")

DEFAULTS = {
    "init_fm": 32,       # channels of the first encoder layer, doubled each layer...
    "max_fm": 512,       # ...up to this many
    "latent_size": 4,    # spatial size of the latent z (latent_size x latent_size)
    "dis_hidden": 512,   # hidden units of the latent discriminator's MLP
    "dis_dropout": 0.3,  # dropout after each conv layer of the latent discriminator
    "img_channels": 3,   # image channels (3 for RGB)
}


def _check(condition, message):
    if not condition:
        raise ValueError(message)


def _validated_config(preset, img_size, attrs, overrides):
    """Check build()'s arguments and return the full config dict (every key build() takes)."""
    unknown = sorted(set(overrides) - set(DEFAULTS))
    _check(not unknown, f"unknown override(s) {', '.join(map(repr, unknown))}; valid overrides are "
                        f"{', '.join(DEFAULTS)}")
    _check(isinstance(preset, str) and preset in PRESETS,
           f"preset must be one of {', '.join(map(repr, PRESETS))}, got {preset!r}")
    cfg = {**DEFAULTS, **overrides}
    for name in ("init_fm", "max_fm", "dis_hidden", "img_channels"):
        _check(is_int(cfg[name], 1),
               f"{name} must be a positive int, got {cfg[name]!r}")
    _check(cfg["max_fm"] >= cfg["init_fm"],
           f"max_fm must be >= init_fm ({cfg['init_fm']}), got {cfg['max_fm']!r}")
    _check(is_power_of_two(cfg["latent_size"]),
           f"latent_size must be a power of two (1, 2, 4, 8, ...), got {cfg['latent_size']!r}")
    dropout = cfg["dis_dropout"]
    _check(isinstance(dropout, (int, float)) and not isinstance(dropout, bool)
           and 0 <= dropout < 1, f"dis_dropout must be a number in [0, 1), got {dropout!r}")
    check_img_size(img_size, "img_size", minimum=32)
    _check(img_size >= 2 * cfg["latent_size"],
           f"img_size ({img_size}) must be at least 2 * latent_size ({2 * cfg['latent_size']}) so "
           f"that the encoder has at least one layer")
    attrs = check_attr_names(attrs)
    cfg["dis_dropout"] = float(dropout)
    return {"preset": preset, "img_size": img_size, "attrs": attrs, **cfg}


class ConvBlock(nn.Module):
    """Fader's encoder layer: Conv2d(4x4, stride 2, padding 1) [+ BatchNorm2d] + LeakyReLU(0.2)
    [+ Dropout]. Halves the spatial size. The conv is a :class:`DownConv2d` (an nn.Conv2d)."""

    def __init__(self, in_channels, out_channels, norm=True, dropout=0.0):
        super().__init__()
        self.conv = DownConv2d(in_channels, out_channels)
        self.norm = nn.BatchNorm2d(out_channels) if norm else None
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x):
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        x = self.act(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return x


class Encoder(nn.Module):
    """x (N, img_channels, S, S) -> z (N, widths[-1], latent_size, latent_size)."""

    def __init__(self, widths, img_channels):
        super().__init__()
        ins = (img_channels,) + tuple(widths[:-1])
        self.layers = nn.Sequential(*(ConvBlock(i, o, norm=k > 0)
                                      for k, (i, o) in enumerate(zip(ins, widths))))

    def forward(self, x):
        return self.layers(x)


def _label_maps_like(x, labels):
    """The (N, L) label vector as constant (N, L, H, W) maps in x's dtype (an expand: no copy)."""
    return labels.to(x.dtype)[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])


class DecoderBlock(nn.Module):
    """One decoder layer: (x (N, C, H, W), labels (N, L)) -> (N, O, 2H, 2W).

    ``conv`` sees the input with the L label maps appended; then BatchNorm2d + ReLU, or Tanh for
    the last layer. Subclasses define how the 2x upsampling conv is done (``_up_conv``).
    """

    def __init__(self, conv, out_channels, last):
        super().__init__()
        self.conv = conv
        self.norm = None if last else nn.BatchNorm2d(out_channels)
        self.act = nn.Tanh() if last else nn.ReLU(inplace=True)

    def _up_conv(self, x, labels):
        raise NotImplementedError

    def _up_conv_many(self, x, label_sets):
        return [self._up_conv(x, labels) for labels in label_sets]

    def _finish(self, x):
        if self.norm is not None:
            x = self.norm(x)
        return self.act(x)

    def forward(self, x, labels):
        return self._finish(self._up_conv(x, labels))

    def forward_many(self, x, label_sets):
        """``[self(x, labels) for labels in label_sets]`` (each output normalised on its own)."""
        return [self._finish(y) for y in self._up_conv_many(x, label_sets)]


class FusedUpLabelConvBlock(DecoderBlock):
    """preset "paper": exprfast.nn.UpLabelConv2d, upsample + label maps + 3x3 conv in one op."""

    def __init__(self, in_channels, label_channels, out_channels, last):
        from ..op.nn import UpLabelConv2d  # here: only this preset needs the compiled extension

        super().__init__(UpLabelConv2d(in_channels, label_channels, out_channels), out_channels,
                         last)

    def _up_conv(self, x, labels):
        return self.conv(x, labels.to(x.dtype))

    def _up_conv_many(self, x, label_sets):
        return self.conv.forward_many(x, [labels.to(x.dtype) for labels in label_sets])


class EagerUpLabelConvBlock(DecoderBlock):
    """preset "paper-eager": nn.Upsample(nearest 2x), cat of the label maps, nn.Conv2d 3x3. Same
    parameters (names and shapes) as FusedUpLabelConvBlock."""

    def __init__(self, in_channels, label_channels, out_channels, last):
        super().__init__(nn.Conv2d(in_channels + label_channels, out_channels, 3, padding=1),
                         out_channels, last)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    def _up_conv(self, x, labels):
        x = self.upsample(x)
        return self.conv(torch.cat([x, _label_maps_like(x, labels)], dim=1))


class TransposedLabelConvBlock(DecoderBlock):
    """preset "fader": cat of the label maps, then ConvTranspose2d(4x4, stride 2, padding 1,
    bias=False), as in Fader's code."""

    def __init__(self, in_channels, label_channels, out_channels, last):
        super().__init__(nn.ConvTranspose2d(in_channels + label_channels, out_channels, 4, 2, 1,
                                            bias=False), out_channels, last)

    def _up_conv(self, x, labels):
        return self.conv(torch.cat([x, _label_maps_like(x, labels)], dim=1))


DECODER_BLOCKS = {
    "paper": FusedUpLabelConvBlock,
    "paper-eager": EagerUpLabelConvBlock,
    "fader": TransposedLabelConvBlock,
}


class Decoder(nn.Module):
    """(z, labels (N, label_channels)) -> image in [-1, 1]; the encoder's mirror, with the label
    vector injected (as constant maps) before every layer."""

    def __init__(self, widths, img_channels, label_channels, block):
        super().__init__()
        ins = tuple(reversed(widths))
        outs = ins[1:] + (img_channels,)
        self.layers = nn.ModuleList(
            block(i, label_channels, o, last=k == len(ins) - 1)
            for k, (i, o) in enumerate(zip(ins, outs)))

    def forward(self, z, labels):
        x = z
        for layer in self.layers:
            x = layer(x, labels)
        return x

    def forward_many(self, z, label_sets):
        """``[self(z, labels) for labels in label_sets]``: the first layer sees the same z in
        every decode, so a fused first layer convolves it once."""
        first, *rest = self.layers
        outs = []
        for x, labels in zip(first.forward_many(z, label_sets), label_sets):
            for layer in rest:
                x = layer(x, labels)
            outs.append(x)
        return outs


class LatentDiscriminator(nn.Module):
    """Fader's latent discriminator: encoder-style conv layers (with dropout) from the latent down
    to 1x1, then Linear -> LeakyReLU(0.2) -> Linear to 2 logits per attribute."""

    def __init__(self, latent_channels, conv_widths, hidden, n_outputs, dropout):
        super().__init__()
        ins = (latent_channels,) + tuple(conv_widths[:-1])
        self.conv_layers = nn.Sequential(*(ConvBlock(i, o, norm=True, dropout=dropout)
                                           for i, o in zip(ins, conv_widths)))
        conv_out = conv_widths[-1] if conv_widths else latent_channels
        self.proj_layers = nn.Sequential(
            nn.Linear(conv_out, hidden), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden, n_outputs))

    def forward(self, z):
        return self.proj_layers(self.conv_layers(z).flatten(1))


class FaderModel(nn.Module):
    """Encoder, attribute-conditioned decoder and latent discriminator of a Fader network.

    Prefer :func:`build`, which takes the same arguments. ``config`` holds every argument, so
    ``build(**model.config)`` rebuilds the same architecture (for checkpoints).
    """

    def __init__(self, preset="paper", img_size=64, attrs=("Smiling",), **overrides):
        super().__init__()
        cfg = _validated_config(preset, img_size, attrs, overrides)
        self.config = cfg
        self.preset, self.img_size, self.attrs = cfg["preset"], cfg["img_size"], cfg["attrs"]
        self.img_channels = cfg["img_channels"]
        self.latent_size = cfg["latent_size"]
        n_enc = int(math.log2(img_size // cfg["latent_size"]))
        n_dis = int(math.log2(cfg["latent_size"]))
        widths = [min(cfg["init_fm"] * 2 ** i, cfg["max_fm"]) for i in range(n_enc + n_dis)]
        enc_widths, dis_widths = widths[:n_enc], widths[n_enc:]
        self.latent_channels = enc_widths[-1]
        self.label_channels = 2 * len(self.attrs)
        self.encoder = Encoder(enc_widths, self.img_channels)
        self.decoder = Decoder(enc_widths, self.img_channels, self.label_channels,
                               DECODER_BLOCKS[preset])
        self.latent_discriminator = LatentDiscriminator(
            self.latent_channels, dis_widths, cfg["dis_hidden"], self.label_channels,
            cfg["dis_dropout"])

    @property
    def latent_shape(self):
        """(C_lat, latent_size, latent_size): the shape of one z."""
        return (self.latent_channels, self.latent_size, self.latent_size)

    def label_maps(self, attrs):
        """(N, n_attrs) attribute values -> (N, 2 * n_attrs) label vector ``[1 - a, a]`` per
        attribute (one-hot for a in {0, 1}; any real a for sliders). Integer or bool attrs become
        floats."""
        if attrs.dim() != 2 or attrs.shape[1] != len(self.attrs):
            raise ValueError(f"attrs must have shape (N, {len(self.attrs)}) (one column per "
                             f"attribute {self.attrs}), got {list(attrs.shape)}")
        if not attrs.is_floating_point():
            attrs = attrs.to(torch.get_default_dtype())
        return torch.stack([1 - attrs, attrs], dim=2).flatten(1)

    def encode(self, x):
        """x (N, img_channels, img_size, img_size) in [-1, 1] -> z (N, *latent_shape)."""
        expected = (self.img_channels, self.img_size, self.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (N, {', '.join(map(str, expected))}), "
                             f"got {list(x.shape)}")
        return self.encoder(x)

    def decode(self, z, attrs):
        """z (N, *latent_shape), attrs (N, n_attrs) values -> x_hat in [-1, 1] (tanh)."""
        self._check_latent(z)
        return self.decoder(z, self.label_maps(attrs))

    def decode_many(self, z, attr_sets):
        """``[self.decode(z, attrs) for attrs in attr_sets]``, the same latents decoded with
        several attribute values (a reconstruction and an edit): with the ``paper`` preset the
        first decoder layer convolves z once for all of them."""
        self._check_latent(z)
        return self.decoder.forward_many(z, [self.label_maps(attrs) for attrs in attr_sets])

    def _check_latent(self, z):
        if z.dim() != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"z must have shape (N, {', '.join(map(str, self.latent_shape))}), "
                             f"got {list(z.shape)}")

    def forward(self, x, attrs):
        """-> (z, x_hat): the latent of x and its reconstruction with attributes `attrs`."""
        z = self.encode(x)
        return z, self.decode(z, attrs)

    def discriminate(self, z):
        """z -> (N, 2 * n_attrs) logits, 2 per attribute (class 0, class 1)."""
        return self.latent_discriminator(z)

    def extra_repr(self):
        return f"preset={self.preset!r}, img_size={self.img_size}, attrs={self.attrs}"


def build(preset="paper", img_size=64, attrs=("Smiling",), **overrides):
    """A :class:`FaderModel`. preset: one of PRESETS. img_size: a power of two >= 32. attrs: the
    attribute names (one binary attribute each). overrides: any of ``DEFAULTS`` (init_fm=32,
    max_fm=512, latent_size=4, dis_hidden=512, dis_dropout=0.3, img_channels=3). Raises
    ValueError, naming the argument, for bad values."""
    return FaderModel(preset, img_size, attrs, **overrides)


def _count(module):
    return sum(p.numel() for p in module.parameters())


def parameter_counts(model):
    """{"encoder", "decoder", "latent_discriminator", "total"} parameter counts of a FaderModel."""
    counts = {part: _count(getattr(model, part))
              for part in ("encoder", "decoder", "latent_discriminator")}
    counts["total"] = _count(model)
    return counts


def parameter_table(img_size=256, attrs=("Smiling",), presets=PRESETS):
    """A markdown table of the parameter counts of each preset's parts, with the decoder's change
    against the "fader" preset's decoder."""
    presets = (presets,) if isinstance(presets, str) else tuple(presets)
    _check(len(presets) > 0, "presets must name at least one preset")
    fader = build("fader", img_size, attrs)
    counts = {p: parameter_counts(fader if p == "fader" else build(p, img_size, attrs))
              for p in presets}
    fader_decoder = parameter_counts(fader)["decoder"]
    parts = ("encoder", "decoder", "latent_discriminator", "total")
    rows = [f"Parameters at {img_size} px, attrs {', '.join(fader.attrs)}:",
            "",
            "| preset | " + " | ".join(parts) + " | decoder vs fader |",
            "|---|" + "---:|" * (len(parts) + 1)]
    for preset, c in counts.items():
        change = 100 * (c["decoder"] - fader_decoder) / fader_decoder
        rows.append(f"| {preset} | " + " | ".join(f"{c[p]:,}" for p in parts)
                    + f" | {change:+.1f} % |")
    return "\n".join(rows)
