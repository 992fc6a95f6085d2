"""Edit whole photos: every face is detected, aligned to the training framing, edited and pasted
back with a feathered mask (``faces``); and Fader Networks' interpolation grid.

``paste`` says how the model's output goes into the photo's face crop (``editor`` module
docstring): ``"hybrid"`` (the default) takes the model's decoding where it changes the face a lot
(the mouth) and adds only the change's brightness elsewhere; ``"residual"`` adds the model's
*change* ``decode(z, new) - decode(z, current)`` everywhere; both work at the photo's resolution
and keep its detail. ``"replace"`` pastes the model's decoding itself (at the model's
resolution, so blurrier on large faces, but independent of the current values). ``"warp"``
moves the photo's own pixels by the model's motion where the hybrid paste would draw: sharp,
but it cannot add or remove teeth.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..checks import one_line
from ..checkpoints import PACKAGE_DIR
from ..files import atomic_write
from . import faces as facelib
from .editor import Editor, check_paste, load

SAMPLES_DIR = PACKAGE_DIR / "samples"
# CC BY 4.0 photos of the Face Research Lab London Set (see samples/README.md).
SAMPLE_PHOTOS = [SAMPLES_DIR / "london_007.jpg", SAMPLES_DIR / "london_042.jpg"]
MAX_WORK_SIZE = 1024  # largest face crop (px) a hybrid or residual photo edit works at
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class NoFaceFound(ValueError):
    """No face was detected in a photo."""


def edit_photo(image, changes: Mapping[str, float], model=None, face: int | None = None, *,
               current: Mapping[str, float] | None = None, paste: str = "hybrid",
               return_faces: bool = False):
    """``image`` (a PIL image or a path; any size, JPEG/PNG/..., RGB, RGBA, L, ...) with the
    attributes of its faces set as ``changes`` says.

    Faces are detected, aligned to the training framing, edited (see the module docstring for
    ``current`` and ``paste``) and pasted back with a feathered mask; every pixel away from
    the faces is left exactly as it was. ``face``: edit only face ``face`` (faces are numbered
    largest first), default all. ``model``: an :class:`Editor`, a ``FaderModel``, a model file
    path or None (the bundled model). The EXIF orientation is applied first, so the result is
    upright with the orientation tag removed; RGB, RGBA (alpha kept), L and LA keep their mode,
    other modes come back as RGB (or RGBA with transparency).

    Returns the edited PIL image, or ``(image, faces)`` with the edited ``faces.Face`` objects
    when ``return_faces`` (``Face.aligned_by`` says whether eyes were found).
    Raises NoFaceFound when no face is found, ValueError for unknown attributes, a bad ``face``
    index or ``paste`` mode.
    """
    editor = _editor(model)
    check_paste(paste)
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
        size = editor.out_size
        if paste != "replace":
            size = int(min(MAX_WORK_SIZE, max(size, round(detected.crop_side))))
        crop = facelib.crop_face(pixels, detected, size)
        edited = editor.edit(crop, changes, current=current, paste=paste)
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
            raise ValueError(f"{path} is not a readable image: {one_line(error)}") from error
    raise ValueError(f"image must be a PIL image or a path, got {type(image).__name__}")


def _split_modes(photo: Image.Image) -> tuple[Image.Image, Image.Image | None, str]:
    """(RGB image to edit, alpha band or None, the mode the result keeps: "RGB" or "L")."""
    mode = photo.mode
    if mode in _HIGH_BIT_MODES:  # 16-bit or 32-bit grey: 8 bits over its real range
        photo, mode = _to_8_bit(photo), "L"
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in photo.info):
        rgba = photo.convert("RGBA") if mode != "LA" else photo
        alpha = rgba.getchannel("A")
        grey = mode == "LA"
        colour = photo.convert("LA").convert("L").convert("RGB") if grey else rgba.convert("RGB")
        return colour, alpha, "L" if grey else "RGB"
    if mode == "L":
        return photo.convert("RGB"), None, "L"
    return photo.convert("RGB"), None, "RGB"


def _to_8_bit(photo: Image.Image) -> Image.Image:
    """A 16-bit (0..65535) or 32-bit grey image as 8-bit "L"; integer images whose values fit
    in 8 bits keep them, float images are taken as 0..1 when they fit there."""
    values = np.asarray(photo, dtype=np.float64)
    top = float(values.max()) if values.size else 0.0
    if photo.mode.startswith("I;16") or 255 < top <= 65535:
        scale = 255 / 65535
    elif photo.mode == "F" and top <= 1:
        scale = 255.0
    else:
        scale = 255 / top if top > 255 else 1.0
    return Image.fromarray(np.clip(np.round(values * scale), 0, 255).astype(np.uint8), "L")


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
    z, base = editor.prepare(crop[None], fixed)
    sweep = torch.linspace(low, high, steps) if steps > 1 else torch.tensor([(low + high) / 2])
    grid = Image.new("RGB", ((steps + 1) * cell, len(names) * cell))
    original = Image.fromarray(crop).resize((cell, cell), Image.Resampling.LANCZOS)
    for row, attribute in enumerate(names):
        values = base.repeat(steps, 1)
        values[:, editor.attrs.index(attribute)] = sweep.to(values.device)
        tiles = editor.decode_uint8(z.repeat(steps, 1, 1, 1), values)
        grid.paste(original, (0, row * cell))
        for col, tile in enumerate(tiles, 1):
            tile = Image.fromarray(tile)
            if tile.size != (cell, cell):
                tile = tile.resize((cell, cell), Image.Resampling.LANCZOS)
            grid.paste(tile, (col * cell, row * cell))
    return grid


def save_image(image: Image.Image, path: str | os.PathLike, quality: int = 95) -> None:
    """Save atomically in the format of ``path``'s suffix; JPEG drops alpha. A failed write
    raises ``WriteError`` (an OSError) naming ``path`` and the cause, never the temporary
    file."""
    path = Path(path)
    suffix = path.suffix.lower()
    options = {k: image.info[k] for k in ("icc_profile", "exif", "dpi") if k in image.info}
    if suffix in (".jpg", ".jpeg"):
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        options.update(quality=quality)
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise ValueError(f"unknown image format for {path}; use .jpg or .png")
    if suffix in (".jpg", ".jpeg") and not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1..100, got {quality}")
    atomic_write(path, lambda tmp: image.save(tmp, format=fmt, **options))
