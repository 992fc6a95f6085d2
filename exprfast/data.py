"""Face datasets for attribute transfer, preprocessed once into a memory-mapped uint8 cache.

Two layouts are read:

* **CelebA** -- ``FaceDataset(image_dir, attr_file)``. The attribute file has the row count on
  line 1, the attribute names on line 2, then ``file v1 v2 ...`` with values 1 / -1 separated by
  any whitespace. File names are taken verbatim, so CelebA's ``000001.jpg``
  (``list_attr_celeba.txt``) and CelebAMask-HQ's ``1.jpg`` (``CelebAMask-HQ-attribute-anno.txt``)
  both work. If CelebA's ``list_eval_partition.txt`` (``000001.jpg 0|1|2`` for train/val/test)
  lies next to the attribute file it defines the split.
* **Class folders** -- ``FaceDataset(root)`` with ``root/happy/*.jpg``, ``root/neutral/*.jpg``,
  ... One categorical attribute: the sorted class names are the attribute names and each label
  is the one-hot vector of the image's class (``labels.argmax(1)`` is the class index).

Without a partition file the split is a seeded permutation of the listed files (after
``limit``): the first 80% are train, the next 10% val, the last 10% test (``n // 10`` each).
The split is decided before images are checked, so a file's split does not depend on whether
other files are missing or unreadable.

Every image is decoded once, center-cropped to a square and resized (antialiased Lanczos) into
a cached ``(N, size, size, 3)`` uint8 ``.npy`` that is opened with ``np.load(mmap_mode="r")``.
The cache lives in ``cache_dir`` (default ``~/.cache/exprfast``), keyed by a hash of the image
folder's real path, the file list, the size and the crop, and is shared by all splits. It is
streamed into a temporary file and renamed into place, so an interrupted run never leaves a
corrupt cache. Images edited in place keep their key: delete the cache folder to rebuild.
Missing, truncated and non-image files are skipped and reported in a warning (``warn=False``
leaves that to the caller); the dataset's ``skipped`` maps every one of them to the reason.
(Timings: ``benchmarks/data.md``.)
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .checks import IMAGE_SUFFIXES, check_choice, check_positive_int
from .data_cache import cached_images, load_image  # noqa: F401  (load_image: public here too)

DEFAULT_ATTRS = ("Smiling",)
SPLITS = ("train", "val", "test")
# "celeba" names Fader Networks' CelebA crop, 20 px off the top and bottom of a 178x218 image:
# that is exactly its central square, so both modes crop the central square of any image.
CROPS = ("center", "celeba")
PARTITION_FILE = "list_eval_partition.txt"

_MAX_LISTED = 10  # file names shown in one warning or error
_ATTR_VALUES = {"1", "-1", "0"}


class AttributeTable(NamedTuple):
    """Per-image binary attributes: ``values[i, j]`` (int8, 0 or 1) is attribute ``names[j]``
    of the image ``files[i]`` (a path relative to the image folder)."""

    names: list[str]
    files: list[str]
    values: np.ndarray


def read_attribute_file(attr_file: str | os.PathLike) -> AttributeTable:
    """Parse a CelebA-style attribute file; values 1 become 1, values -1 (or 0) become 0."""
    path = _existing_file(attr_file, "attr_file")
    lines = [(n, line.split()) for n, line in enumerate(path.read_text().splitlines(), 1)]
    lines = [(n, fields) for n, fields in lines if fields]
    if len(lines) < 2 or len(lines[0][1]) != 1 or not lines[0][1][0].isdigit():
        raise ValueError(
            f"attr_file {path}: expected the row count on line 1 and the attribute names on line 2"
        )
    count, names, rows = int(lines[0][1][0]), lines[1][1], lines[2:]
    if len(rows) != count:
        raise ValueError(f"attr_file {path}: line 1 announces {count} rows but {len(rows)} follow")
    for n, fields in rows:
        if len(fields) != len(names) + 1:
            raise ValueError(
                f"attr_file {path}, line {n}: expected a file name and {len(names)} values, "
                f"got {len(fields)} fields"
            )
        if not set(fields[1:]) <= _ATTR_VALUES:
            raise ValueError(
                f"attr_file {path}, line {n}: values must be 1 or -1 (or 0), got {fields[1:]}"
            )
    values = np.array([fields[1:] for _, fields in rows], dtype=np.int8).reshape(-1, len(names))
    return AttributeTable(names, [fields[0] for _, fields in rows], (values > 0).astype(np.int8))


def read_partition_file(partition_file: str | os.PathLike) -> dict[str, str]:
    """Parse CelebA's ``list_eval_partition.txt`` into ``{file name: "train"|"val"|"test"}``."""
    path = _existing_file(partition_file, "partition_file")
    partition = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(
                f"partition_file {path}, line {n}: expected 'file 0|1|2', got {line!r}"
            )
        partition[fields[0]] = SPLITS[int(fields[1])]
    return partition


def scan_class_folders(image_dir: str | os.PathLike) -> AttributeTable:
    """Read a ``root/<class>/*.jpg`` layout as one-hot labels over the sorted class names."""
    root = _existing_dir(image_dir, "image_dir")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for label, name in enumerate(classes):
        images = sorted(
            f.name
            for f in (root / name).iterdir()
            if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
        )
        files += [f"{name}/{image}" for image in images]
        labels += [label] * len(images)
    if not files:
        raise ValueError(
            f"image_dir {root} has no class folders with images (root/<class>/*.jpg); "
            "for the CelebA layout pass attr_file"
        )
    return AttributeTable(classes, files, np.eye(len(classes), dtype=np.int8)[labels])


def split_mask(
    files: Sequence[str], split: str, partition: dict[str, str] | None = None, seed: int = 0
) -> np.ndarray:
    """Boolean mask of the ``files`` in ``split``: from ``partition`` when given, else the
    seeded 80/10/10 permutation described in the module docstring."""
    check_choice(split, SPLITS, "split")
    if partition is not None:
        unlisted = [f for f in files if f not in partition]
        if unlisted:
            raise ValueError(
                f"partition_file does not list {len(unlisted)} of the images, e.g. "
                f"{_sample(unlisted)}; pass partition_file=None for a seeded split"
            )
        return np.array([partition[f] == split for f in files], dtype=bool)
    n = len(files)
    n_eval = n // 10
    bounds = {
        "train": (0, n - 2 * n_eval),
        "val": (n - 2 * n_eval, n - n_eval),
        "test": (n - n_eval, n),
    }
    start, stop = bounds[split]
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[start:stop]] = True
    return mask


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(..., H, W, 3)`` -> float32 ``(..., 3, H, W)`` in [-1, 1] (always a copy)."""
    pixels = torch.from_numpy(np.array(images))  # copy: memmap rows are read-only
    return pixels.movedim(-1, -3).contiguous().float().div_(127.5).sub_(1.0)


# Regions of an aligned face, (top, bottom, left, right) as fractions of its side, read off the
# mean smiling minus the mean non-smiling 64 px CelebA-HQ train face: the mouth box holds the
# mouth, the creases beside it and the chin (15 % of the face; 40 % of the validation split's
# difference at 128 px lies there), the eye box the eyes and the skin around them. "rest" is
# everything else.
FACE_REGIONS = {"mouth": (0.56, 0.86, 0.25, 0.75), "eyes": (0.33, 0.50, 0.18, 0.82)}


def region_box(name: str, size: int) -> tuple[int, int, int, int]:
    """``FACE_REGIONS[name]`` in pixels of a ``size``-px face: (top, bottom, left, right), the
    bottom and right ends excluded."""
    check_choice(name, FACE_REGIONS, "face region")
    return tuple(round(f * size) for f in FACE_REGIONS[name])


def crop_region(images: torch.Tensor, name: str) -> torch.Tensor:
    """The ``FACE_REGIONS[name]`` part of ``(N, C, S, S)`` aligned faces (a view)."""
    top, bottom, left, right = region_box(name, images.shape[-1])
    return images[..., top:bottom, left:right]


class FaceDataset(Dataset):
    """Face images with binary attributes, served from the memory-mapped cache.

    Args:
        image_dir: folder of the images (CelebA layout) or of the class folders.
        attr_file: CelebA-style attribute file; ``None`` reads ``image_dir`` as class folders.
        attrs: attribute names to return, in that order. Default ``["Smiling"]`` with an
            attribute file, all classes (one-hot) with class folders.
        split: "train", "val" or "test".
        size: side of the square images in pixels.
        crop: "center" or "celeba" (see ``CROPS``).
        flip: randomly mirror images horizontally (p = 0.5, drawn from torch's RNG).
        limit: use only the first ``limit`` listed images (before splitting).
        seed: seed of the split when there is no partition file.
        partition_file: "auto" uses ``list_eval_partition.txt`` next to ``attr_file`` when
            present; a path uses that file; ``None`` forces the seeded split.
        cache_dir: cache folder, default ``~/.cache/exprfast``.
        workers: decoding processes when building the cache, default the CPU count (max 8).
        warn: warn about missing and undecodable images (``skipped`` lists them either way).

    Items are ``(image float32 (3, size, size) in [-1, 1], attrs float32 (len(attrs),) in
    {0, 1})``. ``batch``/``iter_batches`` gather whole batches without a DataLoader.
    Attributes: ``attr_names``, ``files`` (this split's images, relative to ``image_dir``),
    ``labels`` (float32 tensor ``(len(self), len(attr_names))``), ``cache_path``, ``skipped``
    (``{file: reason}`` of every listed image, in any split, that is missing or undecodable).
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        attr_file: str | os.PathLike | None = None,
        *,
        attrs: Sequence[str] | str | None = None,
        split: str = "train",
        size: int = 64,
        crop: str = "center",
        flip: bool = False,
        limit: int | None = None,
        seed: int = 0,
        partition_file: str | os.PathLike | None = "auto",
        cache_dir: str | os.PathLike | None = None,
        workers: int | None = None,
        warn: bool = True,
    ) -> None:
        image_dir = _existing_dir(image_dir, "image_dir")
        check_positive_int(size, "size")
        check_choice(crop, CROPS, "crop")
        check_choice(split, SPLITS, "split")
        for value, name in ((limit, "limit"), (workers, "workers")):
            if value is not None:
                check_positive_int(value, name)
        if attr_file is None:
            table = scan_class_folders(image_dir)
            attrs = table.names if attrs is None else attrs
        else:
            table = read_attribute_file(attr_file)
            attrs = DEFAULT_ATTRS if attrs is None else attrs
        columns = _attr_columns(table.names, attrs)
        files, values = table.files[:limit], table.values[:limit, columns]
        in_split = split_mask(files, split, _find_partition(attr_file, partition_file), seed)

        present = np.array([os.path.isfile(os.path.join(image_dir, f)) for f in files], dtype=bool)
        missing = [f for f, ok in zip(files, present) if not ok]
        if missing and warn:
            _warn_files(f"are listed but missing from image_dir {image_dir}; skipped", missing)
        if not present.any():
            raise ValueError(
                f"none of the {len(files)} listed images exist in image_dir {image_dir}"
            )
        cached_files = [f for f, ok in zip(files, present) if ok]
        self.cache_path = cached_images(image_dir, cached_files, size, crop, cache_dir, workers)
        skipped = json.loads(self.cache_path.with_suffix(".json").read_text())["skipped"]
        self.skipped = {**{f: "missing" for f in missing}, **skipped}
        if skipped and warn:
            _warn_files(
                "could not be decoded; skipped", [f"{f} ({why})" for f, why in skipped.items()]
            )

        decoded = np.array([f not in skipped for f in cached_files], dtype=bool)
        self._rows = np.flatnonzero(in_split[present] & decoded)
        if not self._rows.size:
            raise ValueError(f"split {split!r} of image_dir {image_dir} has no usable images")
        self.attr_names = [table.names[c] for c in columns]
        self.files = [cached_files[r] for r in self._rows]
        self.labels = torch.from_numpy(values[present][self._rows].astype(np.float32))
        self.flip = flip
        self._images = np.load(self.cache_path, mmap_mode="r")

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = to_tensor(self._images[self._rows[index]])
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.labels[index]

    def batch(
        self, indices: Sequence[int] | torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, 3, size, size)`` and labels ``(B, n_attrs)`` of the dataset ``indices``,
        gathered straight from the memmap; flips (if ``flip``) are drawn from ``generator``."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        images = to_tensor(self._images[self._rows[indices.numpy()]])
        if self.flip:
            mirrored = torch.rand(len(indices), generator=generator) < 0.5
            images[mirrored] = images[mirrored].flip(-1)
        return images, self.labels[indices]

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of ``batch()`` results, shuffled with ``generator`` if ``shuffle``."""
        check_positive_int(batch_size, "batch_size")
        order = (
            torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        )
        stop = len(self) - len(self) % batch_size if drop_last else len(self)
        for start in range(0, stop, batch_size):
            yield self.batch(order[start : start + batch_size], generator)

    # Pickled copies (DataLoader workers under spawn/forkserver) reopen the memmap rather than
    # carry the whole image array.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._images = np.load(self.cache_path, mmap_mode="r")


def _attr_columns(names: list[str], attrs: Sequence[str] | str) -> list[int]:
    attrs = [attrs] if isinstance(attrs, str) else list(attrs)
    unknown = [a for a in attrs if a not in names]
    if unknown or not attrs:
        raise ValueError(f"unknown attrs {unknown or attrs}; valid names: {', '.join(names)}")
    return [names.index(a) for a in attrs]


def _find_partition(attr_file, partition_file) -> dict[str, str] | None:
    if partition_file is None or attr_file is None:
        return None
    if partition_file == "auto":
        partition_file = Path(attr_file).parent / PARTITION_FILE
        if not partition_file.is_file():
            return None
    return read_partition_file(partition_file)


def _existing_file(path: str | os.PathLike, name: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name} {path} is not an existing file")
    return path


def _existing_dir(path: str | os.PathLike, name: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{name} {path} is not an existing folder")
    return path


def _warn_files(message: str, files: list[str]) -> None:
    more = " (the dataset's .skipped lists them all)" if len(files) > _MAX_LISTED else ""
    warnings.warn(f"{len(files)} images {message}: {_sample(files)}{more}", stacklevel=3)


def _sample(items: list[str]) -> str:
    more = len(items) - _MAX_LISTED
    return ", ".join(items[:_MAX_LISTED]) + (f", ... and {more} more" if more > 0 else "")


# CelebA-HQ as shipped beside the repository (../shared/data/celebahq).
ATTR_FILE = "CelebAMask-HQ-attribute-anno.txt"
_DATA_SUBDIR = Path("shared") / "data" / "celebahq"
_LAYOUTS = (f"a CelebA-HQ folder ({ATTR_FILE} + images<N>/ folders) or a folder of class "
            "folders (root/<class>/*.jpg)")


class DataRootError(FileNotFoundError, ValueError):
    """A data root that is missing or in no accepted layout (both a missing file and a bad
    argument, so callers catching either see it)."""


def default_data_root() -> Path | None:
    """``../shared/data/celebahq`` beside the repository root, or ``None`` if it is absent.

    The repository is found from this file (an editable or in-tree install) or, for a regular
    install into site-packages, from the working directory (commands run from the repository).
    """
    candidates = (Path(__file__).resolve().parents[1].parent, Path.cwd().resolve().parent)
    for base in candidates:
        if (base / _DATA_SUBDIR).is_dir():
            return base / _DATA_SUBDIR
    return None


def data_paths(data_root: str | os.PathLike | None, img_size: int,
               name: str = "data_root") -> tuple[Path, Path | None]:
    """The one data-root rule of training, evaluation and the commands: ``(image_dir,
    attr_file)``. A folder with ``ATTR_FILE`` is CelebA-HQ (its ``images<N>`` folder for
    ``img_size``, see ``celebahq_paths``); a folder of class folders is read as such
    (``attr_file`` None); anything else is refused with a ``DataRootError`` naming ``name``.
    ``None`` is the default root beside the repository."""
    root = default_data_root() if data_root is None else Path(data_root)
    if root is None:
        raise DataRootError(f"{name}: no default data folder (../{_DATA_SUBDIR} beside the "
                            f"repository or the working directory); pass {name}")
    if not root.is_dir():
        raise DataRootError(f"{name} {root} is not an existing folder")
    if (root / ATTR_FILE).is_file():
        return celebahq_paths(root, img_size)
    folders = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    sized = [d.name for d in folders if _image_size_of(d) is not None]
    if sized:  # CelebA-HQ images without their attribute file: not classes named "images64"
        raise DataRootError(f"{name} {root} has {', '.join(sized)} but no {ATTR_FILE}: it holds "
                            f"neither accepted layout, which are {_LAYOUTS}")
    if not any(_holds_images(d) for d in folders):
        raise DataRootError(f"{name} {root} has no {ATTR_FILE} and no class folders with "
                            f"images: it holds neither accepted layout, which are {_LAYOUTS}")
    return root, None


def open_split(data_root: str | os.PathLike | None, img_size: int, split: str, *,
               attrs: Sequence[str] | None = None, flip: bool = False, limit: int | None = None,
               cache_dir: str | os.PathLike | None = None,
               name: str = "data_root", warn: bool = True) -> FaceDataset:
    """The ``split`` of the faces at ``data_root`` (``data_paths``) as a ``FaceDataset``."""
    image_dir, attr_file = data_paths(data_root, img_size, name)
    return FaceDataset(image_dir, attr_file, attrs=attrs, split=split, size=img_size, flip=flip,
                       limit=limit, cache_dir=cache_dir, warn=warn)


def celebahq_paths(data_root: str | os.PathLike, img_size: int) -> tuple[Path, Path]:
    """``(image_dir, attr_file)`` of a CelebA-HQ root for ``img_size`` px images: the
    ``images<N>`` folder with the smallest ``N >= img_size`` (the least decoding work without
    upsampling), else the largest one."""
    root = Path(data_root)
    attr_file = root / ATTR_FILE
    if not attr_file.is_file():
        raise DataRootError(f"data_root {root} has no {ATTR_FILE}")
    sizes = sorted(size for d in root.glob("images*") if (size := _image_size_of(d)) is not None)
    if not sizes:
        raise DataRootError(f"data_root {root} has no images<N> folder (e.g. images64)")
    size = next((s for s in sizes if s >= img_size), sizes[-1])
    return root / f"images{size}", attr_file


def _holds_images(folder: Path) -> bool:
    return any(f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
               for f in folder.iterdir())


def _image_size_of(folder: Path) -> int | None:
    """N of an ``images<N>`` folder, else None."""
    digits = folder.name[len("images"):]
    return int(digits) if folder.name.startswith("images") and digits.isdigit() \
        and folder.is_dir() else None
