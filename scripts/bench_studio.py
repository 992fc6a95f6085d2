"""Studio latency: what a slider move costs (``PreparedPhoto.render``: decode + paste only),
against what loading a photo costs (detect, align, encode, estimate: once per photo) and a whole
``edit_photo``. Writes benchmarks/studio.md and benchmarks/studio.json.

    python scripts/bench_studio.py [--model PATH] [--photos P ...] [--force]

Timings on busy cores mean little: the script refuses to run when the 1-minute load average is
above half the cores (other jobs running) unless --force, and records the load it ran under.
Besides the samples (512 px) it times a large photo: the first sample upscaled to --large px,
the studio's largest working size (``studio.MAX_SIDE``).
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from exprfast import editing
from exprfast.benchmarking import machine_description, markdown_table, time_call, write_report
from exprfast.studio.state import MAX_SIDE, Studio


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model file (default: the bundled model)")
    p.add_argument("--photos", nargs="+", default=[str(p) for p in editing.SAMPLE_PHOTOS])
    p.add_argument("--large", type=int, default=MAX_SIDE,
                   help=f"side of the large test photo (default {MAX_SIDE}; 0: none)")
    p.add_argument("--set", default="Smiling=1", help="the slider move, NAME=VALUE")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    p.add_argument("--force", action="store_true", help="time even on busy cores")
    p.add_argument("--out", default="benchmarks")
    return p.parse_args(argv)


def busy_reason():
    """Why the cores are too busy to time on, or None."""
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load > 0.5 * cores:
        return f"1-minute load average {load:.2f} on {cores} cores: other jobs are running"
    return None


def main(argv=None):
    args = parse_args(argv)
    reason = busy_reason()
    if reason and not args.force:
        print(f"bench_studio: not timing: {reason} (--force to time anyway)", file=sys.stderr)
        return 3
    if args.threads:
        torch.set_num_threads(args.threads)
    name, value = args.set.split("=")
    changes = {name: float(value)}
    editor = editing.load(args.model)
    studio = Studio(editor, workdir=tempfile.mkdtemp(prefix="bench-studio-"))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    photos = [(Path(p).name, Image.open(p)) for p in args.photos]
    if args.large:
        big = photos[0][1].convert("RGB").resize((args.large, args.large), Image.Resampling.LANCZOS)
        photos.append((f"{Path(args.photos[0]).stem} upscaled", big))
    rows = []
    for label, photo in photos:
        photo.load()
        prepared = editing.PreparedPhoto(photo, editor)
        loaded = studio.open(photo)
        assert not loaded["warning"], loaded["message"]
        values = [changes.get(a, v) for a, v in zip(studio.attrs, loaded["values"])]
        moves = iter(range(10**9))

        def slider_move():  # the page's handler, a new value each time (no cached render)
            studio.render(loaded["state"], None, *[v + 1e-3 * (next(moves) % 7) for v in values])

        render = time_call(lambda: prepared.render(changes), repeat=args.repeat, warmup=2)
        handler = time_call(slider_move, repeat=args.repeat, warmup=2)
        preview = studio.render(loaded["state"], None, *values)["edited"]
        with tempfile.TemporaryFile() as sink:
            def encode():  # what gradio does with the preview (format="jpeg")
                sink.seek(0)
                preview.save(sink, "jpeg")
            jpeg = time_call(encode, repeat=args.repeat, warmup=1)
        prepare = time_call(lambda: editing.PreparedPhoto(photo, editor), repeat=5, warmup=1)
        whole = time_call(lambda: editing.edit_photo(photo, changes, model=editor), repeat=5,
                          warmup=1)
        face_px = round(prepared.faces[0].crop_side)
        rows.append({"photo": label, "size": "×".join(map(str, photo.size)),
                     "face crop (px)": min(face_px, editing.photo.MAX_WORK_SIZE),
                     "slider move: render (ms)": f"{render * 1e3:.1f}",
                     "+ preview + JPEG for the page (ms)": f"{(handler + jpeg) * 1e3:.1f}",
                     "load a photo: prepare (ms)": f"{prepare * 1e3:.1f}",
                     "edit_photo, for comparison (ms)": f"{whole * 1e3:.1f}"})
    load_after = os.getloadavg()[0]
    setup = (f"{machine_description()}. Model: {args.model or 'bundled'} ({editor.img_size} px, "
             f"{', '.join(editor.attrs)}); slider move {args.set}. Medians of {args.repeat} "
             f"moves (5 for the last two columns). 1-minute load average {load_before:.2f} "
             f"before, {load_after:.2f} after, on {os.cpu_count()} cores.")
    notes = ("*render*: `PreparedPhoto.render` (one decode per face, composed with the kept "
             "crop (hybrid paste), pasted back): what each slider move costs. *+ preview + "
             "JPEG*: the page's whole handler (`Studio.render`: render, RGB preview) plus the "
             "JPEG encode gradio does for the page (the browser's transfer and drawing not "
             "included). *prepare*: detect, align, crop, encode, estimate, decode the current "
             "values: once per photo. *edit_photo*: everything, every call.")
    path = write_report(
        args.out, "studio", "Studio latency (per slider move)",
        [("Setup", setup), ("Per photo", markdown_table(list(rows[0]), rows)), ("", notes)],
        {"args": vars(args), "rows": rows, "threads": torch.get_num_threads(),
         "load_average": [load_before, load_after], "cores": os.cpu_count(),
         "seconds": time.perf_counter() - started})
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
