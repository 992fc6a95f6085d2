"""The studio's logic without gradio: open a photo, render slider values, grids, downloads (see the
package docstring)."""
from __future__ import annotations

import itertools
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from ..checks import one_line
from ..editing.session import check_render_paste


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
SLIDER_RANGE = (-0.5, 2.0)  # values beyond 0..1 exaggerate (README: Smiling=2)
SLIDER_STEP = 0.01
GRID_RANGE = (-0.5, 1.5)  # exprfast grid --range default
MAX_SIDE = 2048  # larger photos are downscaled to this longer side for the studio
MAX_PIXELS = 50_000_000  # larger photos are refused (use `exprfast edit`)
MAX_FILE_SIZE = "100mb"  # uploads above this are refused by the server
ALL_FACES = "All faces"
INSTALL_HINT = 'pip install "exprfast[studio]"'


def face_choices(count: int) -> list[str]:
    """The "Edit" choices for a photo with ``count`` faces: all faces, then each face."""
    return [ALL_FACES] + [f"Face {k + 1}" for k in range(count)] if count > 1 else [ALL_FACES]


def _face_index(choice: str | None) -> int | None:
    """None (all faces) or the 0-based index of a ``face_choices`` entry."""
    if not choice or choice == ALL_FACES:
        return None
    try:
        return int(str(choice).split()[-1]) - 1
    except ValueError:
        return None


@dataclass
class Loaded:
    """One loaded photo of one browser session (kept in the page's ``gr.State``)."""

    prepared: object  # PreparedPhoto
    name: str  # the file name, for messages and the download's name
    notes: list[str] = field(default_factory=list)
    last: tuple | None = None  # (key, rendered image) of the last render
    download: Path | None = None  # the last download file (gradio serves a copy of it)


class Studio:
    """The studio's logic for ``editor`` (an ``exprfast.editing.Editor``), without gradio.

    Handlers (``open``, ``choose_face``, ``render``, ``download``, ``grid``) take the page's
    values and return a dict of outputs with ``message`` (str) and ``warning`` (bool).
    ``workdir``: folder for the download files (default a new temporary folder). ``paste``: how
    the edits go into the photo (``edit_photo``).
    """

    def __init__(self, editor, *, max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS,
                 workdir: str | Path | None = None, paste: str = "hybrid") -> None:
        check_render_paste(paste)
        self.editor = editor
        self.paste = paste
        self.attrs = tuple(editor.attrs)
        self.max_side = int(max_side)
        self.max_pixels = int(max_pixels)
        self.workdir = Path(workdir) if workdir is not None else Path(
            tempfile.mkdtemp(prefix="exprfast-studio-"))
        self._downloads = itertools.count(1)

    # -- loading a photo

    def open(self, source) -> dict:
        """Load a photo (a path or a PIL image): detect, outline, encode; the sliders start at
        face 1's reading (the largest face). Outputs: ``state`` (a :class:`Loaded` or None),
        ``original`` (outlined preview), ``edited``, ``faces`` (choices), ``face``, ``values``
        (one per attribute), ``download`` (a file path), ``message``, ``warning``."""
        from ..editing import NoFaceFound, PreparedPhoto

        if source is None or source == "":
            return self._failed("Upload or drop a photo, or pick a sample.", warning=False)
        if isinstance(source, Image.Image):
            name = Path(getattr(source, "filename", "") or "the image").name
        else:
            name = Path(str(source)).name
        try:
            photo, notes = self._read(source, name)
        except ValueError as error:
            return self._failed(one_line(error))
        try:
            prepared = PreparedPhoto(photo, self.editor)
        except NoFaceFound:
            return self._failed(f"No face found in {name}: the detector needs a face seen from "
                                "the front, at least 40 px wide.", original=_preview(photo))
        except (ValueError, RuntimeError, OSError) as error:
            return self._failed(f"{name}: {one_line(error)}", original=_preview(photo))
        loaded = Loaded(prepared, name, notes)
        values = self._defaults(loaded, None)
        faces = prepared.faces
        by_box = [k + 1 for k, f in enumerate(faces) if f.aligned_by != "eyes"]
        width, height = prepared.photo.size
        parts = [f"{name}: {width}×{height}, {len(faces)} face{'s' * (len(faces) > 1)}"]
        if by_box:
            parts.append(f"no eyes found on face {', '.join(map(str, by_box))} (aligned by the "
                         "detection box)")
        parts.append("model's reading of face 1: " + ", ".join(
            f"{a} {v:.2f}" for a, v in zip(self.attrs, values)))
        out = self._render_outputs(loaded, None, values)
        out.update(state=loaded, original=outline_faces(_preview(prepared.photo), faces),
                   faces=face_choices(len(faces)), face=ALL_FACES, values=values,
                   message="; ".join(notes + parts) + ".", warning=False)
        return out

    def _read(self, source, name: str) -> tuple[Image.Image, list[str]]:
        """(the upright photo, notes): refuses unreadable files and photos over ``max_pixels``;
        downscales photos whose longer side exceeds ``max_side``."""
        try:
            if isinstance(source, Image.Image):
                photo = source
                self._check_pixels(*photo.size, name)
                full = photo.size
            else:
                path = Path(source)
                if not path.is_file():
                    raise ValueError(f"{name}: no such file")
                with Image.open(path) as opened:
                    self._check_pixels(*opened.size, name)
                    full = opened.size
                    if max(opened.size) > self.max_side:  # JPEG: decode at a reduced scale
                        scale = self.max_side / max(opened.size)
                        opened.draft(opened.mode, (math.ceil(opened.width * scale),
                                                   math.ceil(opened.height * scale)))
                    opened.load()
                    photo = opened.copy()
            photo = ImageOps.exif_transpose(photo)
            if (photo.width > photo.height) != (full[0] > full[1]):  # turned by 90 degrees
                full = full[::-1]
        except Image.DecompressionBombError:
            raise ValueError(f"{name} is too large for the studio (at most "
                             f"{self.max_pixels / 1e6:.0f} megapixels); use `exprfast edit`")
        except UnidentifiedImageError as error:
            raise ValueError(f"{name} is not an image (or not in a format Pillow reads)") \
                from error
        except (OSError, SyntaxError, TypeError) as error:
            reason = one_line(error).replace(str(source), name)
            raise ValueError(f"{name} is not a readable image ({reason})") from error
        notes = []
        if max(full) > self.max_side:
            scale = self.max_side / max(full)
            size = (max(1, round(full[0] * scale)), max(1, round(full[1] * scale)))
            notes.append(f"downscaled from {full[0]}×{full[1]} to {size[0]}×{size[1]} (the "
                         f"studio works up to {self.max_side} px; `exprfast edit` works at "
                         "full size)")
        if notes and photo.size != size:
            info = dict(photo.info)
            if photo.mode.startswith("I;16"):
                photo = photo.convert("I")
            elif photo.mode not in ("RGB", "RGBA", "L", "LA", "I", "F"):
                photo = photo.convert("RGBA" if photo.has_transparency_data else "RGB")
            photo = photo.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
            photo.info.update({k: info[k] for k in ("icc_profile",) if k in info})
        return photo, notes

    def _check_pixels(self, width: int, height: int, name: str) -> None:
        if width * height > self.max_pixels:
            raise ValueError(f"{name} is {width}×{height} ({width * height / 1e6:.0f} "
                             f"megapixels): too large for the studio (at most "
                             f"{self.max_pixels / 1e6:.0f}); use `exprfast edit`")

    # -- the sliders

    def _defaults(self, loaded: Loaded, face: int | None) -> list[float]:
        """The sliders' starting values: the reading of ``face`` (face 0 for all faces),
        rounded to the slider step."""
        readings = loaded.prepared.readings(face or 0)
        return [_snap(readings[a]) for a in self.attrs]

    def _changes(self, loaded: Loaded, face: int | None, values: Sequence) -> dict[str, float]:
        """The attributes whose slider is away from its starting value."""
        defaults = self._defaults(loaded, face)
        return {a: float(v) for a, v, d in zip(self.attrs, values, defaults)
                if v is not None and abs(float(v) - d) > 1e-9}

    def choose_face(self, state: Loaded | None, choice: str | None) -> dict:
        """The "Edit" choice changed (or Reset): the sliders go back to that face's reading.
        Outputs: ``values``, ``edited``, ``download``, ``message``, ``warning``."""
        if state is None:
            return {"values": None, "edited": None, "download": None, "warning": True,
                    "message": "Upload or drop a photo first."}
        face = _face_index(choice)
        count = len(state.prepared.faces)
        if face is not None and not 0 <= face < count:
            return {"values": None, "edited": None, "download": None, "warning": True,
                    "message": f"{state.name} has {count} face{'s' * (count > 1)}: no "
                               f"{choice!r}."}
        values = self._defaults(state, face)
        out = self._render_outputs(state, face, values)
        who = "all faces" if face is None else f"face {face + 1}"
        out.update(values=values, message=f"Editing {who}; sliders at the model's reading of "
                   f"face {(face or 0) + 1}.", warning=False)
        return out

    def render(self, state: Loaded | None, choice: str | None, *values) -> dict:
        """A slider moved: outputs ``edited`` (the photo with the sliders' values; only
        decode + paste), ``message``, ``warning``."""
        if state is None:
            return {"edited": None, "warning": True,
                    "message": "Upload or drop a photo first."}
        face = _face_index(choice)
        try:
            image, changes = self._rendered(state, face, values)
        except ValueError as error:
            return {"edited": None, "message": one_line(error), "warning": True}
        return {"edited": _preview(image), "message": _describe(changes, face), "warning": False}

    def download(self, state: Loaded | None, choice: str | None, *values) -> dict:
        """Outputs ``download``: the edited photo as a file (JPEG quality 95 for JPEG photos,
        else PNG), named after the photo; ``message``, ``warning``."""
        if state is None:
            return {"download": None, "warning": True, "message": "Upload or drop a photo first."}
        try:
            image, _ = self._rendered(state, _face_index(choice), values)
            return {"download": self._save(state, image), "message": "", "warning": False}
        except (ValueError, OSError) as error:
            return {"download": None, "message": one_line(error), "warning": True}

    def _rendered(self, state: Loaded, face: int | None, values: Sequence):
        """(the rendered photo, the changes), reusing the last render when nothing changed."""
        changes = self._changes(state, face, values)
        key = (face, tuple(sorted(changes.items())))
        if state.last is None or state.last[0] != key:
            state.last = (key, state.prepared.render(changes, face=face, paste=self.paste))
        return state.last[1], changes

    def _render_outputs(self, state: Loaded, face: int | None, values: Sequence) -> dict:
        image, _ = self._rendered(state, face, values)
        return {"edited": _preview(image), "download": self._save(state, image)}

    def _save(self, state: Loaded, image: Image.Image) -> str:
        from ..editing import save_image

        stem = Path(state.name).stem or "photo"
        jpeg = Path(state.name).suffix.lower() in (".jpg", ".jpeg")
        folder = self.workdir / str(next(self._downloads))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stem}-edited{'.jpg' if jpeg else '.png'}"
        save_image(image, path)
        if state.download is not None:  # gradio copied it when it was returned
            shutil.rmtree(state.download.parent, ignore_errors=True)
        state.download = path
        return str(path)

    # -- the grid

    def grid(self, state: Loaded | None, choice: str | None, attrs: Sequence[str] | None,
             steps, low, high, *values) -> dict:
        """Fader Networks' interpolation grid of the chosen face (face 1 for all faces): one
        row per attribute in ``attrs``, ``steps`` values from ``low`` to ``high``; the other
        attributes at the sliders' values. Outputs ``grid``, ``message``, ``warning``."""
        from ..editing import interpolation_grid

        if state is None:
            return {"grid": None, "warning": True, "message": "Upload or drop a photo first."}
        names = list(attrs or [])
        if not names:
            return {"grid": None, "warning": True,
                    "message": "Tick at least one attribute for the grid's rows."}
        try:
            steps = int(steps)
            low, high = float(low), float(high)
            if not (2 <= steps <= 25 and math.isfinite(low) and math.isfinite(high)):
                raise ValueError(f"the grid needs 2..25 steps and finite values, got {steps} "
                                 f"steps from {low} to {high}")
            face = _face_index(choice)
            fixed = self._changes(state, face, values)
            image = interpolation_grid(state.prepared.photo, names, steps=steps,
                                       value_range=(low, high), model=self.editor,
                                       attrs=fixed, face=face or 0)
        except (ValueError, TypeError, RuntimeError) as error:
            return {"grid": None, "message": one_line(error), "warning": True}
        return {"grid": image, "warning": False,
                "message": f"Grid: {', '.join(names)} from {low:g} to {high:g} in {steps} steps."}

    def _failed(self, message: str, *, original=None, warning: bool = True) -> dict:
        return {"state": None, "original": original, "edited": None, "faces": [ALL_FACES],
                "face": ALL_FACES, "values": None, "download": None, "message": message,
                "warning": warning}


def _snap(value: float) -> float:
    low, high = SLIDER_RANGE
    return round(min(high, max(low, value)) / SLIDER_STEP) * SLIDER_STEP


def _describe(changes: dict, face: int | None) -> str:
    if not changes:
        return "No change: every slider is at the model's reading."
    who = "every face" if face is None else f"face {face + 1}"
    return f"{', '.join(f'{a} = {v:g}' for a, v in changes.items())} on {who}."


def _preview(image: Image.Image) -> Image.Image:
    """An RGB copy for display (transparent parts over white)."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def outline_faces(image: Image.Image, faces) -> Image.Image:
    """A copy of RGB ``image`` with each face's aligned detection square (the region the model
    sees) outlined and numbered from 1."""
    from ..editing import faces as facelib

    out = image.copy()
    draw = ImageDraw.Draw(out)
    cx, cy = facelib.CANONICAL_BOX_CENTER
    half = facelib.CANONICAL_BOX_SIZE / 2
    corners = np.array([[cx - half, cy - half], [cx + half, cy - half],
                        [cx + half, cy + half], [cx - half, cy + half]])
    for number, face in enumerate(faces, 1):
        to_photo = np.linalg.inv(np.vstack([face.matrix, [0.0, 0.0, 1.0]]))
        points = corners @ to_photo[:2, :2].T + to_photo[:2, 2]
        side = float(np.linalg.norm(points[1] - points[0]))
        width = max(2, round(side / 100))
        polygon = [(float(x) + 0.5, float(y) + 0.5) for x, y in points]
        draw.line(polygon + polygon[:1], fill=(255, 214, 0), width=width, joint="curve")
        size = max(12, round(side / 8))
        try:
            font = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        x, y = polygon[0]
        draw.text((x + width + 2, y + width), str(number), fill=(255, 214, 0), font=font,
                  stroke_width=max(1, size // 12), stroke_fill=(0, 0, 0))
    return out
