"""The image cache of ``exprfast.data``: every image decoded once, center-cropped to a square and
resized into a ``(N, size, size, 3)`` uint8 ``.npy`` that datasets open as a memmap."""
from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from .checks import check_positive_int
from .files import temp_path

DEFAULT_CACHE_DIR = Path("~/.cache/exprfast")

_CACHE_VERSION = 1  # bump when preprocessing changes, so old caches are not reused
_MIN_PARALLEL = 512  # starting worker processes costs more than decoding fewer images
_CHUNK = 64  # images per worker task, to amortise opening the memmap and the round trip


def load_image(path: str | os.PathLike, size: int = 64) -> np.ndarray:
    """Decode one image as the datasets do: EXIF-rotated RGB, central square crop, antialiased
    Lanczos resize to uint8 ``(size, size, 3)``. Use it to prepare a user's own photo."""
    check_positive_int(size, "size")
    with Image.open(path) as image:
        # JPEG draft mode decodes big photos at 1/2..1/8 scale, many times faster; it keeps at
        # least 2x the target size so the antialiased resize still sets the quality.
        image.draft("RGB", (2 * size, 2 * size))
        image = ImageOps.exif_transpose(image).convert("RGB")
        width, height = image.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        box = (left, top, left + side, top + side)
        return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS, box=box))



def cached_images(image_dir: Path, files: list[str], size: int, crop: str, cache_dir, workers) -> Path:
    """Path of the ``.npy`` cache of ``files``, built first if missing. Its ``.json`` sidecar
    maps the files that could not be decoded (black rows) to the reason."""
    key = json.dumps([_CACHE_VERSION, os.path.realpath(image_dir), files, size, crop])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache_dir = Path(DEFAULT_CACHE_DIR if cache_dir is None else cache_dir).expanduser()
    path = cache_dir / f"{image_dir.name}-{size}px-{crop}-{digest}.npy"
    sidecar = path.with_suffix(".json")
    if path.is_file() and sidecar.is_file():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    images_tmp, sidecar_tmp = temp_path(path), temp_path(sidecar)
    try:
        skipped = _write_images(images_tmp, image_dir, files, size, workers)
        sidecar_tmp.write_text(json.dumps({"skipped": skipped}))
        # Renames are atomic and the .npy goes last, so its presence marks a complete cache.
        sidecar_tmp.replace(sidecar)
        images_tmp.replace(path)
    finally:
        images_tmp.unlink(missing_ok=True)
        sidecar_tmp.unlink(missing_ok=True)
    return path


def _write_images(
    path: Path, image_dir: Path, files: list[str], size: int, workers: int | None
) -> dict[str, str]:
    """Decode ``files`` into a new ``(N, size, size, 3)`` uint8 ``.npy`` at ``path``; returns
    ``{file: reason}`` of the failures, whose rows stay black. Workers write their rows straight
    into the file, so decoded images are neither held in RAM nor sent between processes (sending
    them back made 2 workers ~1.4x slower on 64-px JPEGs)."""
    shape = (len(files), size, size, 3)
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)  # workers map it
    chunks = [
        (start, [str(image_dir / f) for f in files[start : start + _CHUNK]])
        for start in range(0, len(files), _CHUNK)
    ]
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    if len(files) < _MIN_PARALLEL:
        workers = 1
    decode = functools.partial(_decode_chunk, output=str(path), size=size)
    skipped = {}
    desc = f"exprfast: caching {image_dir.name} at {size}px"
    with tqdm(total=len(files), unit="img", desc=desc) as progress:
        for (_, paths), failures in zip(chunks, _imap(decode, chunks, workers)):
            skipped.update((files[row], reason) for row, reason in failures)
            progress.update(len(paths))
    return skipped


def _imap(function, items: list, workers: int) -> Iterator:
    """``map`` in order, in ``workers`` processes unless that is 1."""
    if workers == 1:
        yield from map(function, items)
        return
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap(function, items)


def _decode_chunk(chunk: tuple[int, list[str]], output: str, size: int) -> list[tuple[int, str]]:
    """Decode ``paths`` into the rows from ``start`` of the ``.npy`` at ``output``; returns the
    ``(row, reason)`` of the images that could not be decoded."""
    start, paths = chunk
    images = np.load(output, mmap_mode="r+")
    failures = []
    for row, path in enumerate(paths, start):
        try:
            images[row] = load_image(path, size)
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... on bad files
            failures.append((row, f"{type(error).__name__}: {error}"))
    return failures
