"""Edit the attributes of aligned faces (the training framing) with a trained model.

``load`` reads a model file (``exprfast.checkpoints``) into an :class:`Editor`;
``Editor.edit(images, changes)`` returns a batch of aligned faces with some attributes set, e.g.
``{"Smiling": 1.0}``: values are sliders (0 and 1 are the training values, beyond them
exaggerates).

**Attributes that are not changed.** A Fader decoder needs a value for every attribute, and its
latent code has (by design) forgotten them. Each attribute not in ``changes`` takes the value
given in ``current``, else the model's reading of the face: with a model file that carries an
``AttributeReader`` (trained with ``--lambda-clf``), the reader's probability that the
attribute is present, averaged over the face and its mirror image (more often right on the
validation split than the face alone; README, "Edit your photos"); without one, the value among
``ESTIMATE_GRID`` (0, 0.25, ..., 1) whose decoding reconstructs the input best (mean squared
error; one coordinate sweep per attribute, twice when there are several; one decode per grid
value and attribute).

**Pasting** (``paste``): ``"replace"`` returns the decoding ``decode(z, new)`` itself (at the
model's resolution, resized). ``"residual"`` returns ``images + decode(z, new) - decode(z,
current)``: the model's *change* added to the input, which keeps its detail but cannot move its
sharp edges, so a closed mouth stays closed under a faint, colour-tinted change. ``"hybrid"``
(photos use this) takes the decoding where the model changes the face a lot (a mouth that opens
or closes), keeping a little of the input's fine detail there, and elsewhere adds only the
change's brightness to the input, which drops the colour tints; a change of nothing returns the
input exactly. ``"warp"`` moves the input's own pixels instead of drawing there: by the optical
flow from ``decode(z, current)`` to ``decode(z, new)`` (where the hybrid paste would draw), plus
the brightness of what the move does not explain. The mouth keeps the photo's sharpness and
widens, but nothing new can appear or vanish (no teeth drawn, real teeth kept when a smile is
taken off); a change of nothing returns the input exactly as well.

**The mouth refiner.** With a model file that carries one (``models.MouthRefiner``, trained with
``--mouth-refiner``), every decoding an edit uses (``Editor.decode``) has its mouth redrawn by
it first: the decoder's soft mouth with sharper lip lines drawn in. The bundled model carries
one whose change is high-passed (σ = 2 px), so the mouth's shape, and with it the edit, stays
the decoder's; it was told in training whether the mouth is open (Mouth_Slightly_Open, set to
the Smiling value in use) and trained on round trips through the flipped value as well as on
reconstructions: 3.6 times the decoder's mouth detail, the flips within a point of its own, and
smiles put on open as often as real ones, with a pale band of teeth (docs/SMILES.md, "A mouth
refiner"). ``editor.refiner = None`` (``exprfast edit --no-refiner``) shows the decoder's own.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import load_model
from ..models.classifiers import luma
from ..models.refiner import resize as _resize
from .faces import require_cv2

ESTIMATE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
PASTE_MODES = ("hybrid", "residual", "replace", "warp")
# hybrid paste: the decoding's weight rises from 0 to 1 as the model's local change (mean
# absolute, in [-1, 1] units, smoothed) goes from 0.04 to 0.10, i.e. ~5 to ~13 grey levels:
# picked by eye on four London photos, where it covers the mouth and the creases beside it (an
# absolute threshold: one relative to each face's largest change covered whole faces). Inside,
# 0.3 of the input's detail above the model's resolution is kept: more brings back the old
# mouth's edges (a ghost of closed lips or teeth), none leaves the skin there flat.
HYBRID_CHANGE = (0.04, 0.10)
HYBRID_DETAIL = 0.3
_BATCH = 32


def load(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
         need_reader: bool = False) -> "Editor":
    """The model file at ``path`` (default the bundled model; a training checkpoint works too)
    as an :class:`Editor` on ``device``, float32, eval mode. FileNotFoundError if the file is
    missing, ValueError naming the file and the problem if it is not a valid model, or, with
    ``need_reader``, if it carries no attribute reader."""
    loaded = load_model(path)
    if need_reader and loaded.reader is None:
        raise ValueError(f"{path or 'the bundled model'} has no attribute reader (models "
                         "trained with --lambda-clf carry one)")
    return Editor(loaded.model, meta=loaded.meta, device=device, reader=loaded.reader,
                  refiner=loaded.refiner)


class Editor:
    """A trained model ready to edit faces. ``model``: a ``FaderModel`` (put in eval mode, on
    ``device``); ``meta``: the model file's meta dict; ``reader``: its ``AttributeReader`` or
    None; ``refiner``: its ``MouthRefiner`` or None (set the attribute to None to see the
    decoder's own mouths). Attributes ``model``, ``reader``, ``refiner``, ``meta``, ``attrs``
    (tuple of names), ``img_size``, ``device``."""

    def __init__(self, model: torch.nn.Module, meta: dict | None = None,
                 device: str | torch.device | None = None,
                 reader: torch.nn.Module | None = None,
                 refiner: torch.nn.Module | None = None) -> None:
        if device is None:
            device = next(iter(model.parameters()), torch.empty(0)).device
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.reader = None if reader is None else reader.to(self.device).eval()
        if reader is not None and (list(reader.attrs) != list(model.attrs)
                                   or reader.img_size != model.img_size):
            raise ValueError(f"the reader reads {list(reader.attrs)} at {reader.img_size} px but "
                             f"the model has {list(model.attrs)} at {model.img_size} px")
        if refiner is not None:
            refiner.check_fits(model)
        self.refiner = None if refiner is None else refiner.to(self.device).eval()
        self.meta = dict(meta or {})
        self.attrs = tuple(model.attrs)
        self.img_size = int(model.img_size)

    def __repr__(self) -> str:
        return f"Editor(attrs={self.attrs}, img_size={self.img_size}, device={str(self.device)!r})"

    @property
    def out_size(self) -> int:
        """The side of the faces ``decode`` returns: ``img_size``, or the refiner's finer one
        (``MouthRefiner(scale=2)``)."""
        return self.img_size if self.refiner is None else self.refiner.out_size

    # -- the values

    def check_changes(self, changes: Mapping[str, float]) -> dict[str, float]:
        """``changes`` as ``{name: float}``; ValueError for unknown names or non-finite values."""
        if not isinstance(changes, Mapping):
            raise ValueError(f"changes must be a dict {{attribute: value}}, got {changes!r}")
        unknown = [name for name in changes if name not in self.attrs]
        if unknown:
            raise ValueError(f"unknown attribute{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(map(repr, unknown))}; this model has: "
                             f"{', '.join(self.attrs)}")
        checked = {}
        for name, value in changes.items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                raise ValueError(f"attribute {name!r} needs a finite number, got {changes[name]!r}")
            checked[name] = value
        return checked

    @torch.inference_mode()
    def estimate(self, images) -> torch.Tensor:
        """``(N, n_attrs)`` float32 CPU estimates of the current attribute values of ``images``
        (any kind ``edit`` takes): the reader's probabilities, or the best-reconstructing
        ``ESTIMATE_GRID`` values (module docstring)."""
        x, _ = self._to_model_input(images)
        return torch.cat([self._estimate(x[i:i + _BATCH], self.model.encode(x[i:i + _BATCH]))
                          for i in range(0, len(x), _BATCH)]).cpu()

    def _estimate(self, x: torch.Tensor, z: torch.Tensor,
                  known: torch.Tensor | None = None) -> torch.Tensor:
        """Values (N, n_attrs) on the model's device for the images ``x`` with latents ``z``:
        ``known`` (n_attrs,) gives some (NaN = unknown); the others are estimated."""
        n, n_attrs = len(x), len(self.attrs)
        values = torch.full((n, n_attrs), 0.5, device=x.device)
        free = list(range(n_attrs))
        if known is not None:
            known = known.to(x.device)
            given = ~torch.isnan(known)
            values[:, given] = known[given]
            free = [j for j in free if not given[j]]
        if self.reader is not None and free:
            mirrored = self.reader.probabilities(torch.cat([x, x.flip(3)]))
            values[:, free] = ((mirrored[:n] + mirrored[n:]) / 2)[:, free]
            return values
        grid = torch.tensor(ESTIMATE_GRID, device=x.device)
        g = len(grid)
        for _ in range(2 if len(free) > 1 else 1):
            for j in free:
                # decode every grid value for every image at once: (g * n) rows, grid-major
                trial = values.repeat(g, 1)
                trial[:, j] = grid.repeat_interleave(n)
                decoded = self.model.decode(z.repeat(g, 1, 1, 1), trial)
                error = (decoded - x.repeat(g, 1, 1, 1)).pow(2).flatten(1).mean(1)
                values[:, j] = grid[error.view(g, n).argmin(0)]
        return values

    @torch.inference_mode()
    def edit(self, images, changes: Mapping[str, float],
             current: Mapping[str, float] | None = None, paste: str = "replace"):
        """Edited copies of aligned faces ``images``.

        images: uint8 ``(N, H, W, 3)`` (numpy array or tensor) or float ``(N, 3, H, W)`` in
            [-1, 1] (tensor or numpy array); a single image without the N axis works too. Square
            images of any size: they are resized (antialiased bicubic) to ``img_size`` and the
            result back to their size.
        changes: ``{attribute: value}`` to set, e.g. ``{"Smiling": 1.0}``.
        current: known current values of some attributes (the same for every image); the others
            not in ``changes`` are estimated (module docstring).
        paste: ``"replace"`` (``decode(z, new)``), ``"residual"``, ``"hybrid"`` or ``"warp"``
            (module docstring).

        Returns the same kind as ``images``: type, dtype, layout, shape, device.
        """
        check_paste(paste)
        changes = self.check_changes(changes)
        current = self.check_changes(current or {})
        x, restore = self._to_model_input(images)
        full = restore.tensor  # the input as float (N, 3, H, W) on the model's device
        n_attrs = len(self.attrs)
        replace = paste == "replace"
        # replacing needs no current values for the changed attributes
        known = self._known({**current, **(changes if replace else {})})
        outputs = []
        for start in range(0, len(x), _BATCH):
            xb = x[start:start + _BATCH]
            z = self.model.encode(xb)
            if torch.isnan(known).any():
                base = self._estimate(xb, z, known)
            else:  # every value is given: no estimate needed
                base = known.to(xb.device).expand(len(xb), n_attrs).clone()
            target = base.clone()
            for name, value in changes.items():
                target[:, self.attrs.index(name)] = value
            decoded = self.decode(z, target)
            # not decode_many: it adds the label bias after the conv, which rounds differently,
            # and PreparedPhoto.render, which decodes each value alone, must give these pixels
            current_decoded = None if replace else self.decode(z, base)
            outputs.append(self.compose(full[start:start + _BATCH], decoded, current_decoded,
                                        paste))
        return restore(torch.cat(outputs))

    @torch.inference_mode()
    def compose(self, images: torch.Tensor, decoded: torch.Tensor,
                current_decoded: torch.Tensor | None = None,
                paste: str = "hybrid", detail: torch.Tensor | None = None) -> torch.Tensor:
        """The last step of ``edit``: the edited faces from the model's decodings.

        images: the faces, float ``(N, 3, S, S)`` in [-1, 1] on the model's device.
        decoded: ``decode(z, new values)`` of their latents, ``(N, 3, out_size, out_size)``.
        current_decoded: ``decode(z, current values)``; needed unless ``paste`` is
            ``"replace"``.
        paste: one of ``PASTE_MODES`` (module docstring).
        detail: ``self.detail(images)``, for callers that keep it (hybrid paste); default
            computed here.

        Returns float ``(N, 3, S, S)`` clamped to [-1, 1]. Callers that re-edit the same faces
        keep ``z``, ``current_decoded`` (``prepare``) and ``detail``, and decode only the new
        values (``exprfast.editing.PreparedPhoto``).
        """
        check_paste(paste)
        size = images.shape[-1]
        if paste == "replace":
            return _resize(decoded, size).clamp(-1, 1)
        if current_decoded is None:
            raise ValueError(f"paste={paste!r} needs current_decoded")
        change = decoded - current_decoded
        if paste == "residual":
            return images.add(_resize(change, size)).clamp_(-1, 1)
        low, high = HYBRID_CHANGE
        k = self._window(change.shape[-1])
        local = _box_blur(change.abs().mean(1, keepdim=True), k)
        weight = _box_blur(local.sub(low).div(high - low).clamp(0, 1), k)
        if paste == "warp":  # move the photo where the hybrid paste would draw
            flow = _resize_flow(self.flow(current_decoded, decoded) * weight, size)
            moved = _warp(_resize(current_decoded, size), flow)
            brightness = (_resize(decoded, size) - moved).mean(1, keepdim=True)
            return _warp(images, flow).add_(brightness).clamp_(-1, 1)
        weight = _resize(weight, size).clamp_(0, 1)
        if detail is None:
            detail = self.detail(images)
        brightness = _resize(change.mean(1, keepdim=True), size)
        drawn = _resize(decoded, size) + HYBRID_DETAIL * detail
        return torch.lerp(images + brightness, drawn, weight).clamp_(-1, 1)

    def flow(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``(N, 2, s, s)`` float32: for each pixel of decodings ``target`` (float ``(N, 3, s,
        s)``), the offset (x, y) in pixels to where it lies in decodings ``source``: Farneback's
        dense optical flow between their lumas, on the CPU (OpenCV)."""
        cv2 = require_cv2()

        def grey(x):
            pixels = luma(x.float().cpu())[:, 0].add(1).mul(127.5).round().clamp(0, 255)
            return pixels.to(torch.uint8).numpy()
        # OpenCV's (prev, next) = (target, source): target(p) ~ source(p + flow(p))
        flows = [cv2.calcOpticalFlowFarneback(t, s, None, pyr_scale=0.5, levels=3,
                                              winsize=self._window(source.shape[-1]),
                                              iterations=5, poly_n=5,
                                              poly_sigma=1.1, flags=0)
                 for s, t in zip(grey(source), grey(target))]
        return torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2).to(source.device)

    @staticmethod
    def _window(size: int) -> int:
        """The pastes' smoothing window and the flow's on ``size``-px decodings: odd, about 1/16
        of the face."""
        return size // 16 | 1

    def detail(self, images: torch.Tensor) -> torch.Tensor:
        """The part of faces ``images`` (float ``(N, 3, S, S)``) finer than the model's
        resolution: what the hybrid paste keeps of them where it takes the decoding."""
        return images - _resize(_resize(images, self.img_size), images.shape[-1])

    @torch.inference_mode()
    def prepare(self, images, current: Mapping[str, float] | None = None):
        """``(z, values)`` of aligned faces: their latents and their current attribute values
        ``(N, n_attrs)`` (``current`` where given, else estimated), on the model's device."""
        current = self.check_changes(current or {})
        x, _ = self._to_model_input(images)
        z = self.model.encode(x)
        return z, self._estimate(x, z, self._known(current))

    def _known(self, values: Mapping[str, float]) -> torch.Tensor:
        """``(n_attrs,)`` of checked ``values`` by attribute, NaN for the others (to estimate)."""
        known = torch.full((len(self.attrs),), math.nan)
        for name, value in values.items():
            known[self.attrs.index(name)] = value
        return known

    @torch.inference_mode()
    def decode(self, z: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The faces that latents ``z`` decode to with attribute ``values``, their mouths
        redrawn by the refiner when there is one: what edits show (``out_size`` px)."""
        values = values.to(z.device)
        decoded = self.model.decode(z, values)
        return decoded if self.refiner is None else self.refiner(decoded, values)

    @torch.inference_mode()
    def decode_uint8(self, z: torch.Tensor, values: torch.Tensor) -> np.ndarray:
        """``decode`` as uint8 ``(N, S, S, 3)``."""
        decoded = self.decode(z, values)
        pixels = decoded.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).cpu().numpy()

    # -- conversions

    def _to_model_input(self, images):
        """``(x, restore)``: x float (N, 3, img_size, img_size) on the device; ``restore(y)``
        turns a float (N, 3, H, W) result back into the kind of ``images``."""
        restore = _Restore(images, self.device)
        return _resize(restore.tensor, self.img_size), restore


class _Restore:
    """Remembers the kind of an image batch; ``tensor`` is it as float32 (N, 3, H, W) in
    [-1, 1] on ``device``; calling it converts such a tensor back."""

    def __init__(self, images, device: torch.device) -> None:
        self.is_numpy = isinstance(images, np.ndarray)
        if not self.is_numpy and not torch.is_tensor(images):
            raise ValueError(f"images must be a numpy array or a tensor, got "
                             f"{type(images).__name__}")
        tensor = torch.from_numpy(np.array(images)) if self.is_numpy else images  # a copy
        self.dtype, self.source_device = tensor.dtype, tensor.device
        self.single = tensor.dim() == 3
        if self.single:
            tensor = tensor.unsqueeze(0)
        if tensor.dim() != 4:
            raise ValueError(f"images must be (N, H, W, 3) uint8 or (N, 3, H, W) float, got "
                             f"shape {tuple(images.shape)}")
        self.channels_last = tensor.dtype == torch.uint8
        if self.channels_last:
            if tensor.shape[-1] != 3:
                raise ValueError(f"uint8 images must be (N, H, W, 3), got {tuple(images.shape)}")
            tensor = tensor.to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        elif tensor.is_floating_point():
            if tensor.shape[1] != 3:
                raise ValueError(f"float images must be (N, 3, H, W) in [-1, 1], got "
                                 f"{tuple(images.shape)}")
            tensor = tensor.to(device=device, dtype=torch.float32)
            _check_range(tensor)
        else:
            raise ValueError(f"images must be uint8 (N, H, W, 3) or float (N, 3, H, W), got "
                             f"dtype {tensor.dtype}")
        if tensor.shape[-1] != tensor.shape[-2]:
            raise ValueError(f"aligned faces must be square, got {tensor.shape[-2]}x"
                             f"{tensor.shape[-1]}")
        if tensor.shape[0] == 0:
            raise ValueError("images is an empty batch")
        self.tensor = tensor

    def __call__(self, result: torch.Tensor):
        if self.channels_last:
            result = result.add(1.0).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)
            result = result.permute(0, 2, 3, 1).contiguous()
        else:
            result = result.to(self.dtype)
        if self.single:
            result = result[0]
        result = result.to(self.source_device)
        return result.numpy() if self.is_numpy else result


def _check_range(x: torch.Tensor) -> None:
    """Float faces must lie in [-1, 1]; faces in [0, 1] are a common mix-up, so refuse them."""
    low, high = x.min().item(), x.max().item()
    if not (math.isfinite(low) and math.isfinite(high)) or low < -1.001 or high > 1.001:
        raise ValueError(f"float images must be finite and in [-1, 1], got values in "
                         f"[{low:.3g}, {high:.3g}]")
    if low >= 0 and x.numel() >= 64:
        raise ValueError(f"float images must be in [-1, 1], but these lie in [{low:.3g}, "
                         f"{high:.3g}] as if in [0, 1]: pass images * 2 - 1")


def check_paste(paste: str) -> None:
    if paste not in PASTE_MODES:
        raise ValueError(f"paste must be one of {', '.join(PASTE_MODES)}, got {paste!r}")


def _box_blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over a k x k window (k odd), edges replicated: same size as ``x``."""
    return F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)


def _resize_flow(flow: torch.Tensor, size: int) -> torch.Tensor:
    """A flow field (pixel offsets, ``(N, 2, s, s)``) at ``size`` px: resized and rescaled."""
    resized = F.interpolate(flow, size=(size, size), mode="bilinear", align_corners=False)
    return resized * (size / flow.shape[-1])


def _warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``x`` sampled at each pixel's position plus ``flow`` (pixels; bicubic, edges repeated).
    Images whose flow is zero everywhere come back exactly as they were."""
    moving = flow.flatten(1).any(1)
    if not moving.any():
        return x.clone()
    _, _, height, width = x.shape
    ys, xs = torch.meshgrid(torch.arange(height, device=x.device),
                            torch.arange(width, device=x.device), indexing="ij")
    f = flow[moving]
    grid = torch.stack([(xs + f[:, 0] + 0.5) * (2 / width) - 1,
                        (ys + f[:, 1] + 0.5) * (2 / height) - 1], dim=-1)
    out = x.clone()
    out[moving] = F.grid_sample(x[moving], grid, mode="bicubic", padding_mode="border",
                                align_corners=False)
    return out
