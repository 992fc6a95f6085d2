"""Calibrate and check the face framing of ``exprfast.editing.faces`` on aligned training crops.

The ``CANONICAL_*`` constants were measured by running the detector on the 400 CelebA-HQ 256 px
images ``1.jpg`` .. ``400.jpg`` (the aligned crops the models are trained on), keeping the 390
images with exactly one face (369 of them with an eye pair) and averaging, in units of the crop
side::

    python scripts/calibrate_faces.py ../shared/data/celebahq/images256 --count 400

Standard deviations over those images: box centre 0.009 (x and y), box side 0.038; eyes 0.010
(x), 0.005 (y).

Accuracy, measured by pasting 200 other CelebA-HQ crops (``1001.jpg`` ..) into a 1200 x 900
canvas with a random known similarity (scale 0.6-3x, rotation within +-20 degrees) and
detecting them again (``--accuracy --start 1001 --count 200``): 94% found, 93% of those with an
eye pair; the crop corners land within 0.034 of the crop side of where they belong (median;
0.077 at the 90th percentile), the roll within 1.2 degrees (median). Upright only: 97.5% found,
0.033 median. Within +-40 degrees: 92.5% found, 0.034 median. Eyes-only (weight 1) gave
0.035 / 0.089 and box-only scale and position (weight 0) 0.047 / 0.097 (median / 90th
percentile), hence ``EYE_WEIGHT = 0.5``. On the 80 photos of the London set given with the
project, every one has exactly one face, with eyes.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from exprfast.editing.faces import (_box_frame, _detect_rotated, _find_eyes, require_cv2,
                                    _rotation, _to3, _unit_to_pixels, detect_faces)


def measure_framing(paths: Iterable[str | os.PathLike]) -> dict:
    """Mean position of the detected face box and eyes in aligned training crops (any size),
    in crop units: how ``CANONICAL_*`` were measured. Images with other than exactly one face
    are skipped; eyes are averaged over the images with an eye pair. Returns ``{"box_center",
    "box_size", "left_eye", "right_eye"}`` (means), the same keys with ``_std``, and the counts
    ``images``, ``faces`` and ``eyes``."""
    boxes, eyes, images = [], [], 0
    for path in paths:
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"))
        images += 1
        side = grey.shape[1]
        found = _detect_rotated(grey, 0.0, 1.0, min_size=grey.shape[1] // 5)
        if len(found) != 1:
            continue
        cx, cy, w, angle = found[0]
        boxes.append(((cx + 0.5) / side, (cy + 0.5) / side, w / side))
        pair = _find_eyes(grey, _box_frame(cx, cy, w, angle))
        if pair is not None:
            eyes.append(((pair + 0.5) / side).ravel())
    if not boxes:
        raise ValueError("no image with exactly one detected face")
    boxes, eyes = np.array(boxes), np.array(eyes).reshape(-1, 4)
    result = {
        "box_center": boxes[:, :2].mean(0).tolist(), "box_size": float(boxes[:, 2].mean()),
        "box_center_std": boxes[:, :2].std(0).tolist(), "box_size_std": float(boxes[:, 2].std()),
        "images": images, "faces": len(boxes), "eyes": len(eyes),
    }
    if len(eyes):
        result.update(left_eye=eyes[:, :2].mean(0).tolist(), right_eye=eyes[:, 2:].mean(0).tolist(),
                      left_eye_std=eyes[:, :2].std(0).tolist(),
                      right_eye_std=eyes[:, 2:].std(0).tolist())
    return result


def measure_alignment(paths: Iterable[str | os.PathLike], max_rotation: float = 20.0,
                      scales: tuple[float, float] = (0.6, 3.0),
                      canvas: tuple[int, int] = (1200, 900), seed: int = 0) -> dict:
    """How well the framing is recovered: each aligned training crop at ``paths`` is pasted into
    a ``canvas`` (width, height) with a random known similarity (scale log-uniform in ``scales``
    times the crop's size, rotation uniform within +-``max_rotation`` degrees, random position)
    and detected again. Returns ``{"images", "found", "eyes", "median", "p90", "max"}``: the
    errors are the RMS distances, in crop sides, between where the recovered and the true
    alignment put the crop's corners and centre (largest face only)."""
    cv = require_cv2()
    rng = np.random.default_rng(seed)
    width, height = canvas
    points = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5]], dtype=float)
    errors, images, eyes = [], 0, 0
    for path in paths:
        with Image.open(path) as image:
            crop = np.asarray(image.convert("RGB"))
        images += 1
        side = crop.shape[1] * math.exp(rng.uniform(*np.log(scales)))
        roll = rng.uniform(-max_rotation, max_rotation)
        margin = min(side / 2, width / 2, height / 2)
        centre = np.array([rng.uniform(margin, width - margin),
                           rng.uniform(margin, height - margin)])
        linear = _rotation(roll) / side
        truth = np.hstack([linear, (np.array([0.5, 0.5]) - linear @ centre)[:, None]])
        to_photo = np.linalg.inv(_unit_to_pixels(crop.shape[1]) @ _to3(truth))
        photo = cv.warpAffine(crop, to_photo[:2], (width, height), flags=cv.INTER_LINEAR,
                              borderMode=cv.BORDER_REPLICATE)
        found = detect_faces(photo)
        if not found:
            continue
        eyes += found[0].aligned_by == "eyes"
        back = np.linalg.inv(_to3(truth))
        where = found[0].matrix[:, :2] @ (back[:2, :2] @ points.T + back[:2, 2:]) \
            + found[0].matrix[:, 2:]
        errors.append(float(np.sqrt(((where.T - points) ** 2).sum(1).mean())))
    if not errors:
        raise ValueError("no face was found again")
    return {"images": images, "found": len(errors), "eyes": eyes,
            "median": float(np.median(errors)), "p90": float(np.percentile(errors, 90)),
            "max": float(np.max(errors))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/calibrate_faces.py",
        description="Measure the canonical face framing (CANONICAL_* constants) on a folder of "
                    "aligned training crops, e.g. ../shared/data/celebahq/images256.")
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=400, help="images 1.jpg .. COUNT.jpg, or "
                        "the first COUNT files in name order if those do not exist")
    parser.add_argument("--start", type=int, default=1, help="first image number (default 1)")
    parser.add_argument("--accuracy", action="store_true",
                        help="measure how well known transforms are recovered instead "
                             "(measure_alignment), e.g. --start 1001 --count 200")
    parser.add_argument("--max-rotation", type=float, default=20.0,
                        help="with --accuracy: rotations within +-this many degrees")
    args = parser.parse_args(argv)
    paths = [os.path.join(args.folder, f"{i}.jpg")
             for i in range(args.start, args.start + args.count)]
    if not all(os.path.isfile(p) for p in paths):
        paths = sorted(os.path.join(args.folder, f) for f in os.listdir(args.folder))
        paths = paths[args.start - 1: args.start - 1 + args.count]
    if args.accuracy:
        result = measure_alignment(paths, max_rotation=args.max_rotation)
    else:
        result = measure_framing(paths)
    for key, value in result.items():
        print(f"{key}: {np.round(value, 4).tolist() if not isinstance(value, int) else value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
