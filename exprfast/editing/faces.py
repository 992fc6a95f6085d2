"""Find faces in any photo, cut them out with the framing the models were trained on, and paste
edited faces back seamlessly.

Detection uses OpenCV's Haar cascades, which ship inside ``opencv-python-headless<5`` (the
OpenCV 5 wheels carry no cascades), so nothing is downloaded at run time:

* faces: ``haarcascade_frontalface_alt2.xml`` (``scaleFactor`` 1.1, ``minNeighbors`` 5) on the
  grey photo, downscaled so its longer side is at most ``max_side`` (1280) pixels. If no face
  with an eye pair is found upright, the photo is searched again rotated by -``tilt`` and
  +``tilt`` degrees (25), for heads tilted beyond the cascade's ~15 degree tolerance; those
  detections count only with an eye pair (without, they were mostly false positives) and take
  precedence over overlapping upright ones.
* eyes: ``haarcascade_eye.xml`` in the upper 60% of each face box, resampled to 160 px wide
  (no histogram equalisation: it made the eye pair be missed 3x as often). Of
  the candidates, the pair (one per half of the box, plausible spacing, size and slope) nearest
  the eye positions expected from ``CANONICAL_*`` is kept.

Faces are returned **largest first** (face 0 is the main subject). A detection without an eye
pair that is less than half as wide as the largest detection is dropped as a likely false
positive (Haar cascades fire on hair and background texture).

Alignment maps each face onto the canonical crop of CelebA-HQ (the training images: a square
whose side is the crop's unit) with a similarity transform. With an eye pair, the rotation is
that of the eye line, the scale the geometric mean of the eye-distance and box-width estimates
and the translation the mean of the eye-midpoint and box-centre estimates (on held-out CelebA-HQ
faces this beat eyes only, box only and other weights). Without one (``aligned_by == "box"``),
the box alone gives scale and translation and the rotation is that of the detection (0, or
the retry angle).

The canonical positions below were measured by running this very detector on the 400 CelebA-HQ
256 px images ``1.jpg`` .. ``400.jpg`` (``../shared/data/celebahq/images256``, the aligned crops
the models are trained on), keeping the 390 images with exactly one face (369 of them with an
eye pair) and averaging, in units of the crop side; ``scripts/calibrate_faces.py`` re-derives
them and measures the alignment accuracy (its docstring has the figures, which also chose
``EYE_WEIGHT``; ``tests/test_faces.py`` re-derives them approximately from 60 images).

Coordinates are OpenCV's: pixel ``(i, j)`` has its centre at ``x = j, y = i``. Crop-unit
coordinates ``(u, v)`` run from 0 to 1 across the crop's outer edges.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

try:
    import cv2
except ImportError:  # reported by require_cv2() when a function needs it
    cv2 = None

# Canonical framing of the training crops (see the module docstring for how it was measured).
CANONICAL_BOX_CENTER = (0.5025, 0.5513)  # centre of the face detection box
CANONICAL_BOX_SIZE = 0.6228  # side of the (square) face detection box
CANONICAL_LEFT_EYE = (0.3681, 0.4767)  # eye on the image's left (the subject's right eye)
CANONICAL_RIGHT_EYE = (0.6213, 0.4775)  # eye on the image's right

FACE_CASCADE = "haarcascade_frontalface_alt2.xml"
EYE_CASCADE = "haarcascade_eye.xml"
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 5
EYE_ROI_WIDTH = 160  # face boxes are resampled to this width for the eye search
EYE_ROI_HEIGHT = 0.6  # fraction of the box (from its top) searched for eyes
EYE_MIN_NEIGHBORS = 3
EYE_MIN_SIZE = 16
# Eyes are rejected (box alignment used) when their scale disagrees with the box's by more than
# this factor: they are then most likely eyebrows, nostrils or glasses rims.
_MAX_EYE_BOX_RATIO = 1.35
# Weight of the eyes (against the box) in the scale (geometric) and position (arithmetic mean).
EYE_WEIGHT = 0.5

# Feathered paste-back mask: an ellipse in crop units, weight 1 inside MASK_INNER of its size,
# falling to exactly 0 at its edge along a raised-cosine ramp (so the mask has compact support:
# every pixel beyond the ellipse is left bit-identical). It fits inside the crop.
MASK_CENTER = (0.5, 0.57)
MASK_AXES = (0.34, 0.41)  # semi-axes (horizontal, vertical)
MASK_INNER = 0.7

_MAX_CROP_OVERSAMPLE = 4


def require_cv2():
    if cv2 is None:
        raise ImportError("exprfast's face detection and warp paste need OpenCV: "
                          "pip install 'opencv-python-headless<5'")
    return cv2


@functools.lru_cache(maxsize=None)
def _cascade(name: str):
    cv = require_cv2()
    folder = getattr(getattr(cv, "data", None), "haarcascades", None)
    path = os.path.join(folder, name) if folder else None
    if path is None or not os.path.isfile(path):
        raise RuntimeError(
            f"OpenCV {cv.__version__} has no bundled Haar cascade {name} (OpenCV 5 wheels ship "
            "none): pip install 'opencv-python-headless<5'"
        )
    classifier = cv.CascadeClassifier(path)
    if classifier.empty():
        raise RuntimeError(f"could not load the Haar cascade {path}")
    return classifier


@dataclass(frozen=True)
class Face:
    """One detected face and its alignment.

    box: ``(x, y, w, h)`` of the detection square in photo pixels, rotated by ``box_angle``
        degrees about its centre (``box_angle`` is 0 unless it was found by the tilted retry).
    eyes: ``((x, y), (x, y))`` centres of the eye on the image's left and on its right, or
        ``None`` when no plausible eye pair was found.
    aligned_by: ``"eyes"`` (rotation from the eye line, scale and position from eyes and box) or
        ``"box"`` (the detection box alone: no eyes found).
    roll: head roll in degrees (the angle of the eye line, or ``box_angle``); positive when the
        right-hand eye is lower.
    matrix: 2x3 affine map from photo pixels to crop units (``(u, v)`` in [0, 1]^2 is the
        canonical crop).
    """

    box: tuple[float, float, float, float]
    box_angle: float
    eyes: tuple[tuple[float, float], tuple[float, float]] | None
    aligned_by: str
    roll: float
    matrix: np.ndarray = field(repr=False, compare=False)

    @property
    def crop_side(self) -> float:
        """Side of the canonical crop in photo pixels (its natural resolution)."""
        return 1.0 / math.hypot(self.matrix[0, 0], self.matrix[0, 1])

    def crop_matrix(self, size: int) -> np.ndarray:
        """2x3 map from photo pixels to the pixels of a ``size`` px crop (for cv2.warpAffine)."""
        return _unit_to_pixels(size) @ _to3(self.matrix)


# ----------------------------------------------------------------------------- detection


def detect_faces(
    image, *, max_side: int = 1280, min_size: int = 40, tilt: float = 25.0
) -> list[Face]:
    """Faces in ``image`` (PIL image or uint8 array, grey ``(H, W)`` or colour ``(H, W, 3|4)``),
    largest first. ``min_size``: smallest face box in photo pixels; ``tilt``: retry angle in
    degrees when nothing is found upright (0 disables the retry). See the module docstring."""
    cv = require_cv2()
    grey = _grey(image)
    height, width = grey.shape
    shrink = min(1.0, max_side / max(height, width))
    small = grey if shrink == 1.0 else cv.resize(
        grey, (max(1, round(width * shrink)), max(1, round(height * shrink))),
        interpolation=cv.INTER_AREA,
    )
    # detections as (centre x, centre y, side, angle) in photo pixels
    faces = [_align(grey, *detection) for detection in _detect_rotated(small, 0.0, shrink,
                                                                       min_size)]
    if tilt and not any(f.eyes is not None for f in faces):
        tilted = [_align(grey, *detection)
                  for angle in (-tilt, tilt)
                  for detection in _detect_rotated(small, angle, shrink, min_size)]
        # the tilted retry is a last resort: it only counts with an eye pair to confirm it
        tilted = [f for f in tilted if f.eyes is not None]
        faces = _suppress_overlaps(tilted + faces)
    faces.sort(key=lambda f: -f.box[2])
    if faces:
        largest = faces[0].box[2]
        faces = [f for f in faces if f.eyes is not None or f.box[2] >= 0.5 * largest]
    return faces


def _grey(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return require_cv2().cvtColor(np.ascontiguousarray(array[..., :3]), cv2.COLOR_RGB2GRAY)
    raise ValueError(f"image arrays must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")


def _detect_rotated(small: np.ndarray, angle: float, shrink: float, min_size: int) -> list:
    """Detections in ``small`` rotated by ``angle`` degrees (counter-clockwise as displayed),
    as (cx, cy, side, angle) in the full-size photo's pixels."""
    cv = require_cv2()
    height, width = small.shape
    if angle:
        rotation = cv.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1.0)
        cos, sin = abs(rotation[0, 0]), abs(rotation[0, 1])
        out_w, out_h = int(math.ceil(width * cos + height * sin)), int(
            math.ceil(width * sin + height * cos))
        rotation[:, 2] += ((out_w - width) / 2, (out_h - height) / 2)
        view = cv.warpAffine(small, rotation, (out_w, out_h), flags=cv.INTER_LINEAR,
                             borderMode=cv.BORDER_REPLICATE)
        back = cv.invertAffineTransform(rotation)
    else:
        view, back = small, np.array([[1.0, 0, 0], [0, 1.0, 0]])
    side = max(20, int(round(min_size * shrink)))
    boxes = _cascade(FACE_CASCADE).detectMultiScale(
        view, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS, minSize=(side, side))
    found = []
    for x, y, w, h in np.reshape(boxes, (-1, 4)).astype(float):
        # box centre in OpenCV pixel coordinates of `view`, mapped back to the photo
        centre = back @ np.array([x + w / 2 - 0.5, y + h / 2 - 0.5, 1.0])
        found.append(((centre[0] + 0.5) / shrink - 0.5, (centre[1] + 0.5) / shrink - 0.5,
                      w / shrink, angle))
    return found


def _suppress_overlaps(faces: list[Face]) -> list[Face]:
    """Of faces whose centres lie within half a box of each other, keep the first."""
    kept = []
    for face in faces:
        x, y, side = face.box[0] + face.box[2] / 2, face.box[1] + face.box[3] / 2, face.box[2]
        if all(math.hypot(x - k.box[0] - k.box[2] / 2, y - k.box[1] - k.box[3] / 2)
               > 0.5 * max(side, k.box[2]) for k in kept):
            kept.append(face)
    return kept


def _box_frame(cx: float, cy: float, side: float, angle: float) -> np.ndarray:
    """3x3 map from photo pixels to box units: the detection square is [0, 1]^2, upright."""
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    scale = 1.0 / side
    # rotate by -angle about the centre, then scale, then move the centre to (0.5, 0.5)
    linear = scale * np.array([[cos, sin], [-sin, cos]])
    offset = np.array([0.5, 0.5]) - linear @ np.array([cx, cy])
    return np.array([[*linear[0], offset[0]], [*linear[1], offset[1]], [0, 0, 1.0]])


def _expected_eyes() -> np.ndarray:
    """Canonical eye centres in box units."""
    centre, size = np.array(CANONICAL_BOX_CENTER), CANONICAL_BOX_SIZE
    eyes = np.array([CANONICAL_LEFT_EYE, CANONICAL_RIGHT_EYE])
    return (eyes - centre) / size + 0.5


def _find_eyes(grey: np.ndarray, box_frame: np.ndarray) -> np.ndarray | None:
    """The eye pair ``[[x, y], [x, y]]`` (image-left eye first, photo pixels) of the face whose
    box is ``box_frame``, or None."""
    cv = require_cv2()
    roi_h = int(round(EYE_ROI_WIDTH * EYE_ROI_HEIGHT))
    to_roi = _unit_to_pixels(EYE_ROI_WIDTH) @ box_frame
    source, from_source = _prefiltered(grey, box_frame, 2 * EYE_ROI_WIDTH)
    roi = cv.warpAffine(source, (to_roi @ from_source)[:2], (EYE_ROI_WIDTH, roi_h),
                        flags=cv.INTER_LINEAR, borderMode=cv.BORDER_REPLICATE)
    found = _cascade(EYE_CASCADE).detectMultiScale(
        roi, scaleFactor=SCALE_FACTOR, minNeighbors=EYE_MIN_NEIGHBORS,
        minSize=(EYE_MIN_SIZE, EYE_MIN_SIZE))
    # candidates as (u, v, size) in box units
    candidates = [((x + w / 2) / EYE_ROI_WIDTH, (y + h / 2) / EYE_ROI_WIDTH, w / EYE_ROI_WIDTH)
                  for x, y, w, h in np.reshape(found, (-1, 4)).astype(float)]
    expected = _expected_eyes()
    best, best_cost = None, math.inf
    for left, right in itertools.permutations(candidates, 2):
        if not left[0] < 0.5 < right[0]:
            continue
        dx, dy = right[0] - left[0], right[1] - left[1]
        if not 0.2 < dx < 0.65 or abs(dy) > 0.6 * dx:
            continue
        if max(left[2], right[2]) > 1.8 * min(left[2], right[2]):
            continue
        cost = (math.hypot(left[0] - expected[0, 0], left[1] - expected[0, 1])
                + math.hypot(right[0] - expected[1, 0], right[1] - expected[1, 1]))
        if cost < best_cost:
            best, best_cost = (left, right), cost
    if best is None:
        return None
    units = np.array([[best[0][0], best[0][1]], [best[1][0], best[1][1]]])
    # box units -> ROI pixels (OpenCV coordinates) -> photo pixels
    to_photo = np.linalg.inv(to_roi)
    pixels = units * EYE_ROI_WIDTH - 0.5
    return (to_photo[:2, :2] @ pixels.T + to_photo[:2, 2:]).T


def _prefiltered(grey: np.ndarray, box_frame: np.ndarray, width: int):
    """``(image, to_grey)``: the part of ``grey`` around the box of ``box_frame``, area-averaged
    so that the box is about ``width`` px wide when it is larger (warpAffine would alias), and
    the 3x3 map from that image's pixels to ``grey``'s."""
    cv = require_cv2()
    side = 1.0 / math.hypot(box_frame[0, 0], box_frame[0, 1])
    factor = side / width
    if factor <= 1.0:
        return grey, np.eye(3)
    to_photo = np.linalg.inv(box_frame)
    cx, cy = to_photo[0, 2] + 0.5 * (to_photo[0, 0] + to_photo[0, 1]), \
        to_photo[1, 2] + 0.5 * (to_photo[1, 0] + to_photo[1, 1])
    reach = 0.75 * side  # beyond the half-diagonal of the (possibly rotated) box
    height, full_width = grey.shape
    x0, y0 = max(0, int(cx - reach)), max(0, int(cy - reach))
    x1, y1 = min(full_width, int(cx + reach) + 2), min(height, int(cy + reach) + 2)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return grey, np.eye(3)
    out_w, out_h = max(1, round((x1 - x0) / factor)), max(1, round((y1 - y0) / factor))
    small = cv.resize(grey[y0:y1, x0:x1], (out_w, out_h), interpolation=cv.INTER_AREA)
    sx, sy = (x1 - x0) / out_w, (y1 - y0) / out_h
    # small pixel q -> grey pixel: (q + 0.5) * s - 0.5 + origin
    to_grey = np.array([[sx, 0, 0.5 * sx - 0.5 + x0], [0, sy, 0.5 * sy - 0.5 + y0], [0, 0, 1.0]])
    return small, to_grey


def _align(grey: np.ndarray, cx: float, cy: float, side: float, angle: float) -> Face:
    box_frame = _box_frame(cx, cy, side, angle)
    eyes = _find_eyes(grey, box_frame)
    box_scale = CANONICAL_BOX_SIZE / side
    box_centre = np.array([cx, cy])
    canon_box = np.array(CANONICAL_BOX_CENTER)
    aligned_by, roll = "box", angle
    if eyes is not None:
        vector = eyes[1] - eyes[0]
        canon_eyes = np.array([CANONICAL_LEFT_EYE, CANONICAL_RIGHT_EYE])
        eye_scale = np.linalg.norm(canon_eyes[1] - canon_eyes[0]) / np.linalg.norm(vector)
        if abs(math.log(eye_scale / box_scale)) <= math.log(_MAX_EYE_BOX_RATIO):
            aligned_by = "eyes"
            roll = math.degrees(math.atan2(vector[1], vector[0]))
        else:
            eyes = None
    if aligned_by == "eyes":
        scale = eye_scale ** EYE_WEIGHT * box_scale ** (1 - EYE_WEIGHT)
        linear = _rotation(roll) * scale
        offset_eyes = canon_eyes.mean(0) - linear @ eyes.mean(0)
        offset_box = canon_box - linear @ box_centre
        offset = EYE_WEIGHT * offset_eyes + (1 - EYE_WEIGHT) * offset_box
    else:
        linear = _rotation(roll) * box_scale
        offset = canon_box - linear @ box_centre
    # OpenCV photo coordinates -> crop units
    matrix = np.hstack([linear, offset[:, None]])
    box = (cx + 0.5 - side / 2, cy + 0.5 - side / 2, side, side)
    eye_tuple = None if eyes is None else tuple(tuple(map(float, e)) for e in eyes)
    return Face(box=tuple(map(float, box)), box_angle=float(angle), eyes=eye_tuple,
                aligned_by=aligned_by, roll=float(roll), matrix=matrix)


def _rotation(degrees: float) -> np.ndarray:
    """2x2 matrix rotating by -degrees (undoing a roll of ``degrees``)."""
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    return np.array([[cos, sin], [-sin, cos]])


def _to3(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(matrix, dtype=np.float64)[:2], [0.0, 0.0, 1.0]])


def _unit_to_pixels(size: int) -> np.ndarray:
    """3x3 map from units ([0, 1] across the outer edges) to OpenCV pixel coordinates of a
    ``size`` px image: x_px = size * u - 0.5."""
    return np.array([[size, 0, -0.5], [0, size, -0.5], [0, 0, 1.0]], dtype=np.float64)


# ----------------------------------------------------------------------------- crop and paste


def crop_face(image: np.ndarray, face: Face, size: int) -> np.ndarray:
    """The canonical ``size`` x ``size`` crop of ``face`` from ``image`` (uint8 ``(H, W)`` or
    ``(H, W, C)``): bicubic warp, oversampled and area-averaged when the face is larger than the
    crop (no aliasing); beyond the photo's edges the photo is mirrored, as in CelebA-HQ."""
    cv = require_cv2()
    image = np.ascontiguousarray(image)
    factor = int(min(_MAX_CROP_OVERSAMPLE, max(1, face.crop_side // size)))
    work = size * factor
    crop = cv.warpAffine(image, face.crop_matrix(work)[:2], (work, work), flags=cv.INTER_CUBIC,
                         borderMode=cv.BORDER_REFLECT_101)
    if factor > 1:
        crop = cv.resize(crop, (size, size), interpolation=cv.INTER_AREA)
    return crop.reshape((size, size) + image.shape[2:])


def face_mask(size: int) -> np.ndarray:
    """float32 ``(size, size)`` paste-back weights of a ``size`` px crop (see ``MASK_*``)."""
    centres = (np.arange(size) + 0.5) / size
    u = (centres[None, :] - MASK_CENTER[0]) / MASK_AXES[0]
    v = (centres[:, None] - MASK_CENTER[1]) / MASK_AXES[1]
    radius = np.sqrt(u * u + v * v)
    ramp = np.clip((1.0 - radius) / (1.0 - MASK_INNER), 0.0, 1.0)
    return (0.5 - 0.5 * np.cos(np.pi * ramp)).astype(np.float32)


def photo_mask(face: Face, shape: Sequence[int], size: int = 256) -> tuple[np.ndarray, tuple]:
    """The paste-back weights of ``face`` in a photo of ``shape`` ``(H, W, ...)``: float32
    weights over the region ``(top, left, bottom, right)`` they cover; every photo pixel outside
    the region, or inside it with weight 0, is left untouched by ``paste_face``."""
    cv = require_cv2()
    height, width = shape[:2]
    top, left, bottom, right = _paste_region(face, height, width)
    if bottom <= top or right <= left:
        return np.zeros((0, 0), np.float32), (top, left, bottom, right)
    to_crop = _region_to_crop(face, size, top, left)
    weights = cv.warpAffine(face_mask(size), to_crop[:2], (right - left, bottom - top),
                            flags=cv.INTER_LINEAR | cv.WARP_INVERSE_MAP,
                            borderMode=cv.BORDER_CONSTANT, borderValue=0)
    return weights, (top, left, bottom, right)


def paste_face(image: np.ndarray, crop: np.ndarray, face: Face) -> np.ndarray:
    """A copy of ``image`` (uint8 ``(H, W)`` or ``(H, W, C)``) with the edited canonical
    ``crop`` (uint8 ``(S, S)`` or ``(S, S, C)``, same channels) of ``face`` warped back
    (bicubic) and blended in with the feathered ``face_mask``. Pixels where the mask weight is 0
    keep their exact values."""
    cv = require_cv2()
    image = np.asarray(image)
    crop = np.ascontiguousarray(crop)
    if crop.ndim != image.ndim or crop.shape[2:] != image.shape[2:]:
        raise ValueError(f"crop {crop.shape} and image {image.shape} must have the same channels")
    if crop.shape[0] != crop.shape[1]:
        raise ValueError(f"crop must be square, got {crop.shape}")
    size = crop.shape[0]
    out = image.copy()
    weights, (top, left, bottom, right) = photo_mask(face, image.shape, size)
    if not weights.size or not weights.any():
        return out
    to_crop = _region_to_crop(face, size, top, left)
    warped = cv.warpAffine(crop, to_crop[:2], (right - left, bottom - top),
                           flags=cv.INTER_CUBIC | cv.WARP_INVERSE_MAP,
                           borderMode=cv.BORDER_REPLICATE)
    warped = warped.reshape(weights.shape + image.shape[2:])
    region = out[top:bottom, left:right]
    w = weights.reshape(weights.shape + (1,) * (image.ndim - 2))
    blended = region + w * (warped.astype(np.float32) - region)
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    touched = (weights > 0).reshape(w.shape) if image.ndim == 2 else (weights > 0)[..., None]
    out[top:bottom, left:right] = np.where(touched, blended, region)
    return out


def _paste_region(face: Face, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) photo rows/cols covering the mask's ellipse, clipped."""
    # the mask's bounding box in crop units, with a pixel of margin for interpolation
    u0, u1 = MASK_CENTER[0] - MASK_AXES[0], MASK_CENTER[0] + MASK_AXES[0]
    v0, v1 = MASK_CENTER[1] - MASK_AXES[1], MASK_CENTER[1] + MASK_AXES[1]
    corners = np.array([[u0, v0], [u1, v0], [u0, v1], [u1, v1]])
    to_photo = np.linalg.inv(_to3(face.matrix))
    points = (to_photo[:2, :2] @ corners.T + to_photo[:2, 2:]).T  # OpenCV photo coordinates
    left = max(0, int(math.floor(points[:, 0].min())) - 2)
    right = min(width, int(math.ceil(points[:, 0].max())) + 3)
    top = max(0, int(math.floor(points[:, 1].min())) - 2)
    bottom = min(height, int(math.ceil(points[:, 1].max())) + 3)
    return top, left, bottom, right


def _region_to_crop(face: Face, size: int, top: int, left: int) -> np.ndarray:
    shift = np.array([[1.0, 0, left], [0, 1.0, top], [0, 0, 1.0]])
    return _to3(face.crop_matrix(size)) @ shift
