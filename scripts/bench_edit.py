"""Editing speed: one photo end to end (load, detect, align, edit, paste back, save) and aligned
faces per second at batch 32. Writes benchmarks/edit.md and benchmarks/edit.json.

    python scripts/bench_edit.py [--model PATH] [--photos P ...] [--pastes MODE ...]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from exprfast import editing
from exprfast.benchmarking import machine_description, markdown_table, time_call, write_report
from exprfast.data import open_split


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=None, help="model file (default: the bundled model)")
    p.add_argument("--photos", nargs="+", default=[str(p) for p in editing.SAMPLE_PHOTOS])
    p.add_argument("--set", default="Smiling=1", help="the change applied, NAME=VALUE")
    p.add_argument("--pastes", nargs="+", choices=editing.PASTE_MODES, default=["hybrid", "warp"],
                   help="paste modes of the photo edits, a column each")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--data-root", default=None, help="CelebA-HQ root for the aligned faces (default ../shared/data/celebahq)")
    p.add_argument("--out", default="benchmarks")
    return p.parse_args(argv)


def photo_seconds(editor, photo, changes, paste, repeat):
    """Median seconds of one whole edit of `photo`, reading and writing files."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.jpg"

        def run():
            editing.edit_photo(photo, changes, model=editor, paste=paste).save(out, quality=95)

        return time_call(run, repeat=repeat, warmup=1)


def aligned_faces_per_second(editor, batch_size, changes, data_root, repeat):
    faces = open_split(data_root, editor.img_size, "test", limit=2000, name="--data-root")
    batch, _ = faces.batch(torch.arange(batch_size))  # float N x 3 x H x W in [-1, 1]
    seconds = time_call(lambda: editor.edit(batch, changes), repeat=repeat)
    return batch_size / seconds


def main(argv=None):
    args = parse_args(argv)
    name, value = args.set.split("=")
    changes = {name: float(value)}
    editor = editing.load(args.model)
    started = time.perf_counter()
    rows = [{"photo": Path(p).name, "size": "×".join(map(str, Image.open(p).size)),
             **{f"{paste}: seconds (median of {args.repeat})":
                f"{photo_seconds(editor, p, changes, paste, args.repeat):.3f}"
                for paste in args.pastes}}
            for p in args.photos]
    rate = aligned_faces_per_second(editor, args.batch_size, changes, args.data_root, args.repeat)
    setup = (f"{machine_description()}. Model: {args.model or 'bundled'} ({editor.img_size} px, "
             f"{', '.join(editor.attrs)}); change {args.set}. A photo edit = open the file, detect "
             "faces, align, crop, edit, paste back, save as JPEG.")
    path = write_report(
        args.out, "edit", "Editing speed",
        [("Setup", setup), ("One photo, end to end", markdown_table(list(rows[0]), rows)),
         ("Aligned faces", f"{rate:.0f} faces/s at batch {args.batch_size} (Editor.edit on float "
                           f"{editor.img_size} px CelebA-HQ test faces).")],
        {"args": vars(args), "photos": rows, "aligned_faces_per_s": rate,
         "threads": torch.get_num_threads(), "seconds": time.perf_counter() - started})
    print(path.read_text())


if __name__ == "__main__":
    sys.exit(main())
