"""A photo prepared once for many edits (the studio's sliders): :class:`PreparedPhoto`.

``edit_photo`` detects, aligns, encodes and estimates on every call. A ``PreparedPhoto`` does
that once: it keeps, per face, the crop, the latent ``z``, the current values (the model's
reading, ``Editor.prepare``), ``decode(z, current)`` and the crop's fine detail
(``Editor.detail``); ``render(changes)`` then only decodes the new values, composes them with
the crop (``Editor.compose``; hybrid paste unless told otherwise) and pastes it back
(``faces.paste_face``): one decode per face per call.

``render(changes, face, paste)`` gives the same pixels as ``edit_photo(image, changes, model,
face, current=current, paste=paste)`` with one exception: with several faces,
``edit_photo`` crops and encodes each face from the photo with the faces before it already
pasted, which differs from the original only where a face's crop overlaps an earlier face's
paste-back region. ``render`` re-crops those faces from the partly edited photo as
``edit_photo`` does, but keeps the latent and current values computed from the original photo.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import faces as facelib
from .editor import PASTE_MODES, Editor, _Restore
from .photo import MAX_WORK_SIZE, NoFaceFound, _editor, _open, _split_modes

RENDER_PASTES = tuple(mode for mode in PASTE_MODES if mode != "replace")


def check_render_paste(paste: str) -> None:
    """ValueError unless ``paste`` is one of ``RENDER_PASTES``."""
    if paste not in RENDER_PASTES:
        raise ValueError(f"paste must be one of {', '.join(RENDER_PASTES)} (the faces are "
                         f"prepared at the photo's resolution), got {paste!r}")


@dataclass
class _PreparedFace:
    face: facelib.Face
    crop: np.ndarray  # uint8 (S, S, 3) crop of the original photo at the work size S
    z: torch.Tensor  # (1, ...) latent on the model's device
    values: torch.Tensor  # (1, n_attrs) current values on the model's device
    current_decoded: torch.Tensor  # decode(z, values), (1, 3, out_size, out_size)
    detail: torch.Tensor  # Editor.detail of the crop, (1, 3, S, S): the same for every render


class PreparedPhoto:
    """``image`` (a PIL image or a path, anything ``edit_photo`` takes) with its faces detected,
    cropped and encoded by ``model`` (an :class:`Editor`, a ``FaderModel``, a model file path or
    None for the bundled model), ready for fast repeated ``render`` calls.

    current: known current values of some attributes (the same for every face); the others are
        the model's reading of each face (``Editor.prepare``).

    Attributes: ``editor``, ``photo`` (the upright input, EXIF orientation applied), ``name``,
    ``faces`` (``faces.Face`` objects, largest first), ``attrs``.
    Raises NoFaceFound when no face is found, ValueError for an unreadable image or bad
    ``current``.
    """

    def __init__(self, image, model=None, *, current: Mapping[str, float] | None = None) -> None:
        self.editor: Editor = _editor(model)
        current = self.editor.check_changes(current or {})
        self.attrs = self.editor.attrs
        self.photo, self.name = _open(image)
        self._info = {k: self.photo.info[k] for k in ("icc_profile", "exif", "dpi")
                      if k in self.photo.info}
        colour, self._alpha, self._mode = _split_modes(self.photo)
        self._pixels = np.asarray(colour)  # (H, W, 3) uint8
        self._grey = np.asarray(self.photo.convert("L")) if self._mode == "L" else None
        self.faces = facelib.detect_faces(self._pixels)
        if not self.faces:
            raise NoFaceFound(f"no face found in {self.name}")
        self._prepared = [self._prepare(face, current) for face in self.faces]

    def __repr__(self) -> str:
        height, width = self._pixels.shape[:2]
        return (f"PreparedPhoto({self.name!r}, {width}x{height}, {len(self.faces)} "
                f"face{'s' * (len(self.faces) != 1)}, attrs={self.attrs})")

    @torch.inference_mode()
    def _prepare(self, face: facelib.Face, current: Mapping[str, float]) -> _PreparedFace:
        editor = self.editor
        size = int(min(MAX_WORK_SIZE, max(editor.img_size, round(face.crop_side))))
        crop = facelib.crop_face(self._pixels, face, size)
        z, values = editor.prepare(crop[None], current)
        detail = editor.detail(_Restore(crop, editor.device).tensor)
        return _PreparedFace(face, crop, z, values, editor.decode(z, values), detail)

    # -- the values

    def readings(self, face: int = 0) -> dict[str, float]:
        """``{attribute: value}``: the current values of face ``face`` (``current`` where it
        was given, else the model's reading); the sliders' starting point."""
        values = self._prepared[self._index(face)].values[0].tolist()
        return dict(zip(self.attrs, values))

    def _index(self, face: int) -> int:
        count = len(self.faces)
        if isinstance(face, bool) or not isinstance(face, (int, np.integer)) or \
                not -count <= face < count:
            raise ValueError(f"{self.name} has {count} face{'s' * (count > 1)}: the face index "
                             f"must be 0..{count - 1}, got {face!r}")
        return int(face) % count

    # -- rendering

    @torch.inference_mode()
    def render(self, changes: Mapping[str, float], face: int | None = None,
               paste: str = "hybrid") -> Image.Image:
        """The photo with the attributes of its faces (only face ``face`` when given) set as
        ``changes`` says, ``{attribute: value}``; the attributes not in ``changes`` keep each
        face's current values. ``paste``: one of ``RENDER_PASTES``, as in ``edit_photo``. Only
        decodes and pastes: one decode per face."""
        editor = self.editor
        check_render_paste(paste)
        changes = editor.check_changes(changes)
        indices = range(len(self.faces)) if face is None else [self._index(face)]
        grey = self._mode == "L"
        pixels = self._pixels
        target = self._grey if grey else pixels
        pasted = False
        for k in indices:
            prepared = self._prepared[k]
            crop, detail = prepared.crop, prepared.detail
            if pasted and not grey:  # as edit_photo: crop from the photo edited so far
                crop = facelib.crop_face(pixels, prepared.face, crop.shape[0])
                detail = None  # compose takes it from these pixels
            target_values = prepared.values.clone()
            for name, value in changes.items():
                target_values[:, self.attrs.index(name)] = value
            restore = _Restore(crop, editor.device)
            decoded = editor.decode(prepared.z, target_values)
            edited = restore(editor.compose(restore.tensor, decoded, prepared.current_decoded,
                                            paste, detail=detail))
            if grey:
                edited = np.asarray(Image.fromarray(edited).convert("L"))
            target = facelib.paste_face(target, edited, prepared.face)
            if not grey:
                pixels = target
            pasted = True
        result = Image.fromarray(target, "L" if grey else "RGB")
        if self._alpha is not None:
            result = Image.merge(result.mode + "A", (*result.split(), self._alpha))
        result.info.update(self._info)
        return result
