"""Neutral -> smile edits of London Set people next to the same person's real smile.

Writes a PNG: one row per person, columns = neutral photo | edited with each Smiling value |
real smile, each cropped around the detected face. The London Set (CC BY 4.0) is in ../shared/data.

    python scripts/london_pairs.py --people 001 012 024 034 -o docs/london_pairs.png
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from exprfast import editing
from exprfast.editing import faces
from exprfast.data import default_data_root


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=None, help="model file (default: the bundled model)")
    p.add_argument("--people", nargs="+", default=["001", "012", "024", "034"])
    p.add_argument("--values", type=float, nargs="+", default=[1.0, 2.0], help="Smiling values set")
    p.add_argument("--cell", type=int, default=200, help="side of each face cell (px)")
    p.add_argument("--london", default=None, help="default ../shared/data/london_faces")
    p.add_argument("-o", "--output", required=True)
    return p.parse_args(argv)


def face_cell(image, cell):
    """The photo cropped to a square around its largest face (1.6x the detection box)."""
    x, y, w, h = faces.detect_faces(np.asarray(image))[0].box
    cx, cy, side = x + w / 2, y + h / 2, 1.6 * max(w, h)
    box = (int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
    return image.crop(box).resize((cell, cell), Image.LANCZOS)


def main(argv=None):
    args = parse_args(argv)
    london = Path(args.london) if args.london else default_data_root().parent / "london_faces"
    model = editing.load(args.model)
    rows = []
    for person in args.people:
        neutral = Image.open(london / "neutral" / f"{person}.jpg").convert("RGB")
        smiling = Image.open(london / "smiling" / f"{person}.jpg").convert("RGB")
        edited = [editing.edit_photo(neutral, {"Smiling": v}, model=model) for v in args.values]
        rows.append([face_cell(im, args.cell) for im in (neutral, *edited, smiling)])
    sheet = Image.new("RGB", (len(rows[0]) * args.cell, len(rows) * args.cell), "white")
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            sheet.paste(im, (c * args.cell, r * args.cell))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output, optimize=True)
    edits = " | ".join(f"Smiling={v}" for v in args.values)
    print(f"wrote {args.output}: rows {', '.join(args.people)}; columns neutral | {edits} | real smile")


if __name__ == "__main__":
    sys.exit(main())
