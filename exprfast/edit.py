"""Edit facial attributes of aligned faces and of whole photos with a trained model.

* ``save_model`` / ``load``: the model file (``{"format": "exprfast-model", "version": 1,
  "config", "state_dict", "meta"}``, read with ``torch.load(weights_only=True)``); ``load``
  returns an :class:`Editor`.
* ``Editor.edit(images, changes)``: a batch of aligned faces (training framing) with some
  attributes set, e.g. ``{"Smiling": 1.0}``; values are sliders (0 and 1 are the training
  values, beyond them exaggerates).
* ``edit_photo(image, changes)``: any photo: every face is detected, aligned to the training
  framing, edited and pasted back with a feathered mask (``exprfast.faces``).
* ``interpolation_grid``: Fader Networks' figure: the face, then the attribute swept.
* ``add_edit_arguments``/``run_edit`` and ``add_grid_arguments``/``run_grid``: the
  ``exprfast edit`` and ``exprfast grid`` commands.

**Attributes that are not changed.** A Fader decoder needs a value for every attribute, and its
latent code has (by design) forgotten them, so they cannot be read back from it. Each attribute
not in ``changes`` takes the value given in ``current``, else the value that the model itself
finds most likely: the one among ``ESTIMATE_GRID`` (0, 0.25, ..., 1) whose decoding
reconstructs the input best (mean squared error; one coordinate sweep per attribute, twice when
there are several). This costs one decode per grid value and attribute.

**Photos: change, not reconstruction.** By default (``residual=True``) ``edit_photo`` adds the
model's *change* ``decode(z, new) - decode(z, current)`` (upsampled) to the photo's own face
crop, which keeps the photo's resolution and detail; the current values are those of
``current`` or the estimates above. ``residual=False`` pastes the model's decoding itself (at the
model's resolution, so blurrier on large faces, but independent of the current values).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import atomic_torch_save

FORMAT = "exprfast-model"
VERSION = 1
# exprfast.train's checkpoints ("model_config" + "model" state_dict), which load() reads too
TRAIN_CHECKPOINT_FORMAT = "exprfast-train-checkpoint"
TRAIN_CHECKPOINT_VERSION = 1
PACKAGE_DIR = Path(__file__).resolve().parent
# The bundled model: absent until one is trained and added (``load()`` then says so).
DEFAULT_MODEL = PACKAGE_DIR / "pretrained" / "smiling.pt"
SAMPLES_DIR = PACKAGE_DIR / "samples"
# CC BY 4.0 photos of the Face Research Lab London Set (see samples/README.md).
SAMPLE_PHOTOS = [SAMPLES_DIR / "london_007.jpg", SAMPLES_DIR / "london_042.jpg"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
ESTIMATE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_WORK_SIZE = 1024  # largest face crop (px) a photo edit works at in residual mode
_BATCH = 32
_DISCRIMINATOR = "latent_discriminator."


class NoFaceFound(ValueError):
    """No face was detected in a photo."""


# ----------------------------------------------------------------------------- model files


def save_model(model: torch.nn.Module, path: str | os.PathLike, meta: dict | None = None,
               half: bool = True, discriminator: bool = True) -> None:
    """Write ``model`` (a ``FaderModel``) to ``path``: ``{"format": "exprfast-model",
    "version": 1, "config": model.config, "state_dict", "meta"}``, floating-point tensors in
    float16 when ``half`` (half the size; ``load`` restores float32), without the latent
    discriminator's weights unless ``discriminator`` (editing does not need them). The file is
    written beside ``path`` and renamed into place, so readers never see a partial file."""
    state = {}
    for key, value in model.state_dict().items():
        if not discriminator and key.startswith(_DISCRIMINATOR):
            continue
        value = value.detach().cpu()
        if half and value.is_floating_point():
            value = value.to(torch.float16)
        state[key] = value.clone()
    config = dict(model.config)
    payload = {"format": FORMAT, "version": VERSION, "config": config, "state_dict": state,
               "meta": dict(meta or {})}
    atomic_torch_save(payload, path)


def load(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> "Editor":
    """The model file at ``path`` (default the bundled ``DEFAULT_MODEL``) as an :class:`Editor`
    on ``device``, float32, eval mode. A training checkpoint of ``exprfast train`` works too
    (its step and training config become ``meta``). Raises FileNotFoundError if the file is
    missing and ValueError (naming the file and the problem) if it is not a readable exprfast
    model."""
    from .models import build

    if path is None:
        if not DEFAULT_MODEL.is_file():
            raise FileNotFoundError(
                f"no bundled model at {DEFAULT_MODEL} (none is shipped yet): pass a model file "
                "(--model PATH), e.g. one written by exprfast train")
        path = DEFAULT_MODEL
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and runtime errors on foreign or damaged files
        raise ValueError(f"{path} is not a readable exprfast model file: {_one_line(error)}") \
            from error
    found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if found == TRAIN_CHECKPOINT_FORMAT:
        if payload.get("version") != TRAIN_CHECKPOINT_VERSION:
            raise ValueError(f"{path} is training checkpoint version "
                             f"{payload.get('version')!r}; this exprfast reads version "
                             f"{TRAIN_CHECKPOINT_VERSION}")
        meta = {"step": payload.get("step"), "train_config": payload.get("train_config")}
        payload = {"config": payload.get("model_config"), "state_dict": payload.get("model"),
                   "meta": meta}
    elif found != FORMAT:
        raise ValueError(f"{path} is not an exprfast model file (format {found!r}, expected "
                         f"{FORMAT!r})")
    elif payload.get("version") != VERSION:
        raise ValueError(f"{path} is exprfast model file version {payload.get('version')!r}; "
                         f"this exprfast reads version {VERSION}")
    config, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise ValueError(f"{path} is damaged: it lacks the model config or state_dict")
    try:
        model = build(**config)
        state = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v
                 for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path} does not hold a valid model: {_one_line(error)}") from error
    # Editing never uses the latent discriminator, so model files may leave it out.
    missing = [key for key in missing if not key.startswith(_DISCRIMINATOR)]
    if missing or unexpected:
        raise ValueError(f"{path} does not hold a valid model: missing weights {missing[:3]}, "
                         f"unexpected weights {unexpected[:3]}")
    meta = payload.get("meta") or {}
    return Editor(model, meta=meta if isinstance(meta, dict) else {}, device=device)


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


# ----------------------------------------------------------------------------- editing faces


class Editor:
    """A trained model ready to edit faces. ``model``: a ``FaderModel`` (put in eval mode, on
    ``device``); ``meta``: the model file's meta dict. Attributes ``model``, ``meta``, ``attrs``
    (tuple of names), ``img_size``, ``device``."""

    def __init__(self, model: torch.nn.Module, meta: dict | None = None,
                 device: str | torch.device | None = None) -> None:
        if device is None:
            device = next(iter(model.parameters()), torch.empty(0)).device
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.meta = dict(meta or {})
        self.attrs = tuple(model.attrs)
        self.img_size = int(model.img_size)

    def __repr__(self) -> str:
        return f"Editor(attrs={self.attrs}, img_size={self.img_size}, device={str(self.device)!r})"

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
        (any kind ``edit`` takes): for each attribute the ``ESTIMATE_GRID`` value whose decoding
        reconstructs the image best (see the module docstring)."""
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
             current: Mapping[str, float] | None = None, residual: bool = False):
        """Edited copies of aligned faces ``images``.

        images: uint8 ``(N, H, W, 3)`` (numpy array or tensor) or float ``(N, 3, H, W)`` in
            [-1, 1] (tensor or numpy array); a single image without the N axis works too. Square
            images of any size: they are resized (antialiased bicubic) to ``img_size`` and the
            result back to their size.
        changes: ``{attribute: value}`` to set, e.g. ``{"Smiling": 1.0}``.
        current: known current values of some attributes (the same for every image); the others
            not in ``changes`` are estimated (module docstring).
        residual: return ``images + (decode(z, new) - decode(z, current))`` instead of
            ``decode(z, new)``: the model's change applied to the input, keeping its detail.

        Returns the same kind as ``images``: type, dtype, layout, shape, device.
        """
        changes = self.check_changes(changes)
        current = self.check_changes(current or {})
        x, restore = self._to_model_input(images)
        full = restore.tensor  # the input as float (N, 3, H, W) on the model's device
        n_attrs = len(self.attrs)
        known = torch.full((n_attrs,), math.nan)
        for name, value in current.items():
            known[self.attrs.index(name)] = value
        if not residual:  # the changed attributes' current values are not needed
            for name, value in changes.items():
                known[self.attrs.index(name)] = value
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
            decoded = self.model.decode(z, target)
            if residual:
                delta = decoded - self.model.decode(z, base)
                out = full[start:start + _BATCH] + _resize(delta, full.shape[-1])
            else:
                out = _resize(decoded, full.shape[-1])
            outputs.append(out.clamp_(-1, 1))
        return restore(torch.cat(outputs))

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


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False,
                         antialias=True)


# ----------------------------------------------------------------------------- photos


def edit_photo(image, changes: Mapping[str, float], model=None, face: int | None = None, *,
               current: Mapping[str, float] | None = None, residual: bool = True,
               return_faces: bool = False):
    """``image`` (a PIL image or a path; any size, JPEG/PNG/..., RGB, RGBA, L, ...) with the
    attributes of its faces set as ``changes`` says.

    Faces are detected, aligned to the training framing, edited (see the module docstring for
    ``current`` and ``residual``) and pasted back with a feathered mask; every pixel away from
    the faces is left exactly as it was. ``face``: edit only face ``face`` (faces are numbered
    largest first), default all. ``model``: an :class:`Editor`, a ``FaderModel``, a model file
    path or None (the bundled model). The EXIF orientation is applied first, so the result is
    upright with the orientation tag removed; RGB, RGBA (alpha kept), L and LA keep their mode,
    other modes come back as RGB (or RGBA with transparency).

    Returns the edited PIL image, or ``(image, faces)`` with the edited ``faces.Face`` objects
    when ``return_faces`` (``Face.aligned_by`` says whether eyes were found).
    Raises NoFaceFound when no face is found, ValueError for unknown attributes or a bad
    ``face`` index.
    """
    from . import faces as facelib

    editor = _editor(model)
    changes = editor.check_changes(changes)
    photo, name = _open(image)
    info = {k: photo.info[k] for k in ("icc_profile", "exif", "dpi") if k in photo.info}
    colour, alpha, mode = _split_modes(photo)
    pixels = np.asarray(colour)  # (H, W, 3) uint8
    found = facelib.detect_faces(pixels)
    if not found:
        raise NoFaceFound(f"no face found in {name}")
    if face is not None:
        if not -len(found) <= face < len(found):
            raise ValueError(f"{name} has {len(found)} face{'s' * (len(found) > 1)}: the face "
                             f"index must be 0..{len(found) - 1}, got {face}")
        found = [found[face]]
    target = pixels if mode != "L" else np.asarray(photo.convert("L"))
    for detected in found:
        size = editor.img_size
        if residual:
            size = int(min(MAX_WORK_SIZE, max(size, round(detected.crop_side))))
        crop = facelib.crop_face(pixels, detected, size)
        edited = editor.edit(crop, changes, current=current, residual=residual)
        if mode == "L":
            edited = np.asarray(Image.fromarray(edited).convert("L"))
        target = facelib.paste_face(target, edited, detected)
        if mode != "L":
            pixels = target
    result = Image.fromarray(target, "L" if mode == "L" else "RGB")
    if alpha is not None:
        result = Image.merge(result.mode + "A", (*result.split(), alpha))
    result.info.update(info)
    return (result, found) if return_faces else result


def _editor(model) -> Editor:
    if isinstance(model, Editor):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        return load(model)
    if isinstance(model, torch.nn.Module):
        return Editor(model)
    raise ValueError(f"model must be an Editor, a FaderModel, a model file path or None, got "
                     f"{type(model).__name__}")


def _open(image) -> tuple[Image.Image, str]:
    """(the image, upright (EXIF orientation applied), a name for messages)."""
    if isinstance(image, Image.Image):
        name = getattr(image, "filename", "") or "the image"
        return ImageOps.exif_transpose(image), name
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        try:
            with Image.open(path) as opened:
                opened.load()
                return ImageOps.exif_transpose(opened), str(path)  # a loaded copy
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"{path} is not a readable image: {_one_line(error)}") from error
    raise ValueError(f"image must be a PIL image or a path, got {type(image).__name__}")


def _split_modes(photo: Image.Image) -> tuple[Image.Image, Image.Image | None, str]:
    """(RGB image to edit, alpha band or None, the mode the result keeps: "RGB" or "L")."""
    mode = photo.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in photo.info):
        rgba = photo.convert("RGBA") if mode != "LA" else photo
        alpha = rgba.getchannel("A")
        grey = mode == "LA"
        colour = photo.convert("LA").convert("L").convert("RGB") if grey else rgba.convert("RGB")
        return colour, alpha, "L" if grey else "RGB"
    if mode == "L":
        return photo.convert("RGB"), None, "L"
    return photo.convert("RGB"), None, "RGB"


# ----------------------------------------------------------------------------- grid


@torch.inference_mode()
def interpolation_grid(image, attr: str | Sequence[str], steps: int = 7,
                       value_range: tuple[float, float] = (-0.5, 1.5), model=None,
                       attrs: Mapping[str, float] | None = None, *, face: int = 0,
                       align: bool = True, cell: int | None = None) -> Image.Image:
    """Fader Networks' interpolation figure for one face of ``image`` (PIL image or path): one
    row per attribute in ``attr`` (a name or a list), each the aligned face then its decodings
    with that attribute at ``steps`` values evenly spaced over ``value_range``.

    ``attrs``: values for the attributes held fixed (default: estimated, as in
    ``Editor.edit``). ``face``: which face (largest first). ``align=False`` takes the image's
    central square instead of detecting a face (for images already in the training framing).
    ``cell``: side of each tile in pixels (default ``max(img_size, 128)``). The grid is
    ``(steps + 1) * cell`` wide and ``len(attr) * cell`` high (RGB).
    """
    from . import faces as facelib

    editor = _editor(model)
    names = [attr] if isinstance(attr, str) else list(attr)
    if not names:
        raise ValueError("attr must name at least one attribute")
    editor.check_changes({name: 0.0 for name in names})
    fixed = editor.check_changes(attrs or {})
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    low, high = map(float, value_range)
    cell = max(editor.img_size, 128) if cell is None else int(cell)
    if cell < 1:
        raise ValueError(f"cell must be a positive integer, got {cell}")
    photo, name = _open(image)
    pixels = np.asarray(photo.convert("RGB"))
    if align:
        found = facelib.detect_faces(pixels)
        if not found:
            raise NoFaceFound(f"no face found in {name}")
        if not -len(found) <= face < len(found):
            raise ValueError(f"{name} has {len(found)} face(s): the face index must be "
                             f"0..{len(found) - 1}, got {face}")
        crop = facelib.crop_face(pixels, found[face], editor.img_size)
    else:
        height, width = pixels.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        crop = np.asarray(Image.fromarray(pixels[top:top + side, left:left + side]).resize(
            (editor.img_size, editor.img_size), Image.Resampling.LANCZOS))
    x, _ = editor._to_model_input(crop[None])
    z = editor.model.encode(x)
    known = torch.full((len(editor.attrs),), math.nan)
    for key, value in fixed.items():
        known[editor.attrs.index(key)] = value
    base = editor._estimate(x, z, known)
    sweep = torch.linspace(low, high, steps) if steps > 1 else torch.tensor([(low + high) / 2])
    grid = Image.new("RGB", ((steps + 1) * cell, len(names) * cell))
    original = Image.fromarray(crop).resize((cell, cell), Image.Resampling.LANCZOS)
    for row, attribute in enumerate(names):
        values = base.repeat(steps, 1)
        values[:, editor.attrs.index(attribute)] = sweep.to(values.device)
        decoded = editor.model.decode(z.repeat(steps, 1, 1, 1), values)
        tiles = decoded.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
        tiles = tiles.permute(0, 2, 3, 1).cpu().numpy()
        grid.paste(original, (0, row * cell))
        for col, tile in enumerate(tiles, 1):
            tile = Image.fromarray(tile)
            if tile.size != (cell, cell):
                tile = tile.resize((cell, cell), Image.Resampling.LANCZOS)
            grid.paste(tile, (col * cell, row * cell))
    return grid


# ----------------------------------------------------------------------------- commands


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``exprfast edit``."""
    parser.description = (
        "Set facial attributes (e.g. put on or remove a smile) of the faces in photos. Faces are "
        "found, aligned, edited and pasted back; the rest of each photo is left untouched.")
    parser.add_argument("photos", nargs="+", metavar="PHOTO",
                        help="photo files or folders of photos (JPEG, PNG, ...)")
    parser.add_argument("--set", dest="changes", action="append", required=True,
                        metavar="NAME=VALUE",
                        help="attribute value to set, e.g. Smiling=1 (add a smile) or Smiling=0 "
                             "(remove it); values beyond 0..1 exaggerate; repeatable")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output folder (created if needed), or an output file for a single "
                             "photo; files keep their names and formats")
    parser.add_argument("--face", type=int, default=None, metavar="K",
                        help="edit only face K (0 = the largest), default every face")
    parser.add_argument("--model", type=Path, default=None,
                        help="model file (default: the bundled model)")
    parser.add_argument("--current", action="append", default=[], metavar="NAME=VALUE",
                        help="the photos' current value of an attribute, if known (otherwise "
                             "estimated by the model); repeatable")
    parser.add_argument("--replace", action="store_true",
                        help="paste the model's decoded face instead of adding its change to "
                             "the photo (blurrier on large faces)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")


def run_edit(args: argparse.Namespace) -> int:
    """``exprfast edit``: 0 when every photo was edited, 1 when some failed (each failure is
    one line on stderr; the other photos are still done), 2 for bad arguments or model."""
    try:
        changes = _parse_assignments(args.changes, "--set")
        current = _parse_assignments(args.current, "--current")
        editor = load(args.model, device=args.device)
        editor.check_changes(changes)
        editor.check_changes(current)
    except (ValueError, OSError, RuntimeError) as error:
        return _fail("edit", error)
    jobs, failures = _plan_outputs(args.photos, args.output)
    for source, error in failures:
        _error("edit", f"{source}: {error}")
    for source, target in jobs:
        try:
            if target.resolve() == source.resolve():
                raise ValueError(f"the output {target} would overwrite the photo; choose "
                                 "another -o")
            result, edited = edit_photo(source, changes, editor, face=args.face, current=current,
                                        residual=not args.replace, return_faces=True)
            _save(result, target, args.quality)
        except (ValueError, OSError, RuntimeError) as error:
            _error("edit", _about(source, error))
            failures.append((source, error))
            continue
        notes = [f"face {k}: no eyes found, aligned by the detection box"
                 for k, f in enumerate(edited) if f.aligned_by != "eyes"]
        faces = f"{len(edited)} face{'s' * (len(edited) != 1)}"
        print(f"{source} -> {target} ({faces}{'; ' if notes else ''}{'; '.join(notes)})")
    return 1 if failures else 0


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``exprfast grid``."""
    parser.description = ("Fader Networks' interpolation grid: a face, then the same face with "
                          "an attribute swept over a range; one row per --attr.")
    parser.add_argument("photo", type=Path, metavar="PHOTO")
    parser.add_argument("--attr", action="append", default=None,
                        help="attribute to sweep (repeatable: one row each); default every "
                             "attribute of the model")
    parser.add_argument("--steps", type=int, default=7, help="values per row (default 7)")
    parser.add_argument("--range", type=float, nargs=2, default=(-0.5, 1.5),
                        metavar=("LOW", "HIGH"), help="swept values (default -0.5 1.5)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="grid image file")
    parser.add_argument("--face", type=int, default=0, metavar="K",
                        help="face K (0 = the largest, the default)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model file (default: the bundled model)")
    parser.add_argument("--no-align", dest="align", action="store_false",
                        help="use the central square instead of detecting the face (for images "
                             "already aligned like the training faces)")
    parser.add_argument("--cell", type=int, default=None,
                        help="tile side in pixels (default max(model size, 128))")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def run_grid(args: argparse.Namespace) -> int:
    """``exprfast grid``: 0 on success, 1 when the photo fails, 2 for bad arguments or model."""
    try:
        editor = load(args.model, device=args.device)
        names = args.attr or list(editor.attrs)
        editor.check_changes({name: 0.0 for name in names})
    except (ValueError, OSError, RuntimeError) as error:
        return _fail("grid", error)
    try:
        grid = interpolation_grid(args.photo, names, steps=args.steps,
                                  value_range=tuple(args.range), model=editor, face=args.face,
                                  align=args.align, cell=args.cell)
        _save(grid, args.output, 95)
    except (ValueError, OSError, RuntimeError) as error:
        _error("grid", _about(args.photo, error))
        return 1
    print(f"{args.photo} -> {args.output}")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="an exprfast train checkpoint (or a model file)")
    parser.add_argument("-o", "--output", required=True, help="model file to write")
    parser.add_argument("--float32", action="store_true",
                        help="keep float32 weights (default: float16, half the size)")
    parser.add_argument("--with-discriminator", action="store_true",
                        help="keep the latent discriminator (default: left out; editing and "
                             "evaluation do not use it)")


def run_export(args: argparse.Namespace) -> int:
    """``exprfast export``: a training checkpoint as a model file for ``load``/``--model``."""
    try:
        editor = load(args.checkpoint)
        save_model(editor.model, args.output, editor.meta, half=not args.float32,
                   discriminator=args.with_discriminator)
    except (FileNotFoundError, ValueError) as error:
        return _fail("export", error)
    size = Path(args.output).stat().st_size / 2**20
    print(f"wrote {args.output} ({size:.1f} MiB, {'float32' if args.float32 else 'float16'})")
    return 0


def _parse_assignments(items: Sequence[str], option: str) -> dict[str, float]:
    values = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not sep or not name.strip() or not math.isfinite(value):
            raise ValueError(f"{option} takes NAME=VALUE with a number, e.g. Smiling=1, got "
                             f"{item!r}")
        values[name.strip()] = value
    return values


def _plan_outputs(photos: Sequence, output: Path):
    """``(jobs, failures)``: (source, target) pairs and (source, reason) for missing paths."""
    sources, failures = [], []
    for item in photos:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file()
                           and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            if not found:
                failures.append((path, "folder has no photos (" + ", ".join(IMAGE_SUFFIXES)
                                 + ")"))
            sources += found
        elif path.is_file():
            sources.append(path)
        else:
            failures.append((path, "no such file or folder"))
    single_file = (len(photos) == 1 and len(sources) == 1 and not Path(photos[0]).is_dir()
                   and output.suffix.lower() in IMAGE_SUFFIXES and not output.is_dir())
    if single_file:
        return [(sources[0], output)], failures
    jobs, used = [], set()
    for source in sources:
        target = output / source.name
        k = 2
        while target.name.lower() in used:
            target = output / f"{source.stem}-{k}{source.suffix}"
            k += 1
        used.add(target.name.lower())
        jobs.append((source, target))
    return jobs, failures


def _save(image: Image.Image, path: Path, quality: int) -> None:
    """Save atomically in the format of ``path``'s suffix; JPEG drops alpha."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    options = {k: image.info[k] for k in ("icc_profile", "exif", "dpi") if k in image.info}
    if suffix in (".jpg", ".jpeg"):
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        options.update(quality=quality)
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise ValueError(f"unknown image format for {path}; use .jpg or .png")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format=fmt, **options)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _about(path: Path, error: Exception) -> str:
    """The error's first line, prefixed with ``path`` unless it names it already."""
    message = _one_line(error)
    return message if str(path) in message else f"{path}: {message}"


def _error(command: str, message: str) -> None:
    print(f"exprfast {command}: error: {message}", file=sys.stderr)


def _fail(command: str, error: Exception) -> int:
    _error(command, _one_line(error))
    return 2
