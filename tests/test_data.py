"""Tests of exprfast.data on tiny synthetic datasets, plus the real faces when they are present."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import exprfast.data_cache as data_cache
from conftest import REAL_DATA
from exprfast.data import (
    FaceDataset,
    load_image,
    read_attribute_file,
    read_partition_file,
    scan_class_folders,
    split_mask,
    to_tensor,
)

NAMES = ["Male", "Smiling", "Young"]
N_IMAGES = 20


def file_name(i, naming):
    """CelebA numbers its files 000001.jpg, CelebAMask-HQ 1.jpg."""
    return f"{i:06d}.jpg" if naming == "celeba" else f"{i}.jpg"


def color(i):
    return (10 * i, 250 - 10 * i, 128)


def attributes(i):
    """Male for the first half, Smiling for odd i, Young for all."""
    return [int(i <= N_IMAGES // 2), i % 2, 1]


def make_celeba(root, naming="celeba", n=N_IMAGES):
    """An image folder of solid-color 24x24 JPEGs and its attribute file, laid out like
    CelebA (double spaces after the name, as in the real files)."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    lines = [str(n), " ".join(NAMES)]
    for i in range(1, n + 1):
        Image.new("RGB", (24, 24), color(i)).save(image_dir / file_name(i, naming), quality=95)
        lines.append(
            file_name(i, naming) + "  " + " ".join("1" if v else "-1" for v in attributes(i))
        )
    attr_file = root / "list_attr.txt"
    attr_file.write_text("\n".join(lines) + "\n")
    return image_dir, attr_file


def write_partition(root, naming, split_of):
    lines = [f"{file_name(i, naming)} {split_of(i)}" for i in range(1, N_IMAGES + 1)]
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


def make_class_folders(root):
    counts = {"neutral": 3, "happy": 4}
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (30, 20), (200, 20 * i, 0)).save(root / name / f"{i:03d}.jpg")
    (root / "happy" / "notes.txt").write_text("not an image")
    (root / ".thumbnails").mkdir()
    return counts


def expected_pixel(rgb):
    return torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1


@pytest.mark.parametrize("naming", ["celeba", "hq"])
def test_read_attribute_file_parses_both_namings(tmp_path, naming):
    _, attr_file = make_celeba(tmp_path, naming)
    table = read_attribute_file(attr_file)
    assert table.names == NAMES
    assert table.files == [file_name(i, naming) for i in range(1, N_IMAGES + 1)]
    assert table.values.dtype == np.int8
    np.testing.assert_array_equal(table.values, [attributes(i) for i in range(1, N_IMAGES + 1)])


@pytest.mark.parametrize(
    "text, match",
    [
        ("Male Smiling\n1.jpg 1 -1\n", "row count on line 1"),
        ("2\nMale Smiling\n1.jpg 1 -1\n", "announces 2 rows but 1 follow"),
        ("1\nMale Smiling\n1.jpg 1\n", "line 3: expected a file name and 2 values, got 2 fields"),
        ("1\nMale Smiling\n1.jpg 1 2\n", r"line 3: values must be 1 or -1"),
    ],
)
def test_read_attribute_file_rejects_malformed_files(tmp_path, text, match):
    attr_file = tmp_path / "attrs.txt"
    attr_file.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_attribute_file(attr_file)


@pytest.mark.parametrize("naming", ["celeba", "hq"])
def test_items_have_the_right_pixels_labels_dtypes_and_ranges(tmp_path, naming):
    image_dir, attr_file = make_celeba(tmp_path, naming)
    dataset = FaceDataset(
        image_dir, attr_file, attrs=["Smiling", "Male"], size=16, cache_dir=tmp_path / "cache"
    )
    assert dataset.attr_names == ["Smiling", "Male"]
    assert len(dataset) == N_IMAGES - 2 * (N_IMAGES // 10)
    for index in range(len(dataset)):
        image, attrs = dataset[index]
        i = dataset.files[index].lstrip("0").removesuffix(".jpg")
        assert image.dtype == attrs.dtype == torch.float32
        assert image.shape == (3, 16, 16) and attrs.shape == (2,)
        assert image.min() >= -1 and image.max() <= 1
        pixel = expected_pixel(color(int(i)))
        assert torch.allclose(image, pixel[:, None, None].expand_as(image), atol=0.05)
        male, smiling, _ = attributes(int(i))
        assert attrs.tolist() == [smiling, male]


def test_smiling_is_the_default_attribute(tmp_path):
    image_dir, attr_file = make_celeba(tmp_path)
    dataset = FaceDataset(image_dir, attr_file, size=8, cache_dir=tmp_path / "cache")
    assert dataset.attr_names == ["Smiling"]
    assert dataset.labels.shape == (len(dataset), 1)


@pytest.mark.parametrize("naming", ["celeba", "hq"])
def test_partition_file_next_to_attr_file_defines_the_split(tmp_path, naming):
    image_dir, attr_file = make_celeba(tmp_path, naming)
    write_partition(tmp_path, naming, lambda i: 0 if i <= 12 else 1 if i <= 15 else 2)
    expected = {
        "train": range(1, 13),
        "val": range(13, 16),
        "test": range(16, N_IMAGES + 1),
    }
    for split, numbers in expected.items():
        dataset = FaceDataset(
            image_dir, attr_file, split=split, size=8, cache_dir=tmp_path / "cache"
        )
        assert dataset.files == [file_name(i, naming) for i in numbers]
    seeded = FaceDataset(
        image_dir, attr_file, split="val", size=8, partition_file=None, cache_dir=tmp_path / "cache"
    )
    assert len(seeded) == N_IMAGES // 10


def test_partition_file_must_list_every_image(tmp_path):
    image_dir, attr_file = make_celeba(tmp_path, "hq")
    write_partition(tmp_path, "celeba", lambda i: 0)  # CelebA names for CelebAMask-HQ images
    assert read_partition_file(tmp_path / "list_eval_partition.txt")["000001.jpg"] == "train"
    with pytest.raises(
        ValueError, match="partition_file does not list 20 of the images, e.g. 1.jpg"
    ):
        FaceDataset(image_dir, attr_file, size=8, cache_dir=tmp_path / "cache")


def test_seeded_split_is_disjoint_complete_80_10_10_and_deterministic():
    files = [f"{i}.jpg" for i in range(1, 101)]
    masks = {split: split_mask(files, split, seed=3) for split in ("train", "val", "test")}
    assert [m.sum() for m in masks.values()] == [80, 10, 10]
    np.testing.assert_array_equal(sum(m.astype(int) for m in masks.values()), np.ones(100))
    np.testing.assert_array_equal(split_mask(files, "val", seed=3), masks["val"])
    assert not np.array_equal(split_mask(files, "val", seed=4), masks["val"])


def test_class_folders_are_one_categorical_attribute(tmp_path):
    counts = make_class_folders(tmp_path / "faces")
    table = scan_class_folders(tmp_path / "faces")
    assert table.names == ["happy", "neutral"]  # sorted; hidden folders ignored
    assert len(table.files) == sum(counts.values())  # notes.txt is not an image
    dataset = FaceDataset(tmp_path / "faces", size=8, cache_dir=tmp_path / "cache")
    assert dataset.attr_names == ["happy", "neutral"]
    assert len(dataset) == 7  # 7 images: n // 10 = 0 for val and test
    for file, label in zip(dataset.files, dataset.labels):
        assert label.tolist() == ([1.0, 0.0] if file.startswith("happy/") else [0.0, 1.0])
    happy = FaceDataset(tmp_path / "faces", attrs=["happy"], size=8, cache_dir=tmp_path / "cache")
    assert happy.labels.squeeze(1).tolist() == [float(f.startswith("happy/")) for f in happy.files]


def test_folder_without_classes_or_attr_file_is_an_error(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "1.jpg")
    with pytest.raises(ValueError, match="no class folders with images.*pass attr_file"):
        FaceDataset(tmp_path)


def test_missing_unreadable_and_truncated_images_are_reported_and_skipped(tmp_path):
    image_dir, attr_file = make_celeba(tmp_path, "hq")
    write_partition(tmp_path, "hq", lambda i: 0)  # everything in train
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(image_dir / "3.jpg")
    (image_dir / "3.jpg").write_bytes((image_dir / "3.jpg").read_bytes()[:1500])  # truncated
    (image_dir / "5.jpg").write_text("<html>not a jpeg</html>")
    (image_dir / "7.jpg").unlink()
    for _ in range(2):  # the cached build reports the undecodable files again
        with pytest.warns(UserWarning) as record:
            dataset = FaceDataset(image_dir, attr_file, size=8, cache_dir=tmp_path / "cache")
        messages = [str(w.message) for w in record]
        assert any("1 images are listed but missing" in m and "7.jpg" in m for m in messages)
        assert any(
            "2 images could not be decoded" in m and "3.jpg" in m and "5.jpg" in m for m in messages
        )
        assert dataset.files == [f"{i}.jpg" for i in range(1, N_IMAGES + 1) if i not in (3, 5, 7)]
    # Every skipped image with its reason, also without the warnings (training lists them once).
    assert sorted(dataset.skipped) == ["3.jpg", "5.jpg", "7.jpg"]
    assert dataset.skipped["7.jpg"] == "missing" and "Error" in dataset.skipped["5.jpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = FaceDataset(image_dir, attr_file, size=8, cache_dir=tmp_path / "cache", warn=False)
    assert quiet.skipped == dataset.skipped and quiet.files == dataset.files


def test_cache_is_built_once_atomically_and_reused(tmp_path, monkeypatch):
    image_dir, attr_file = make_celeba(tmp_path)
    decoded = []
    real_load_image = data_cache.load_image
    monkeypatch.setattr(
        data_cache, "load_image", lambda *args: decoded.append(args) or real_load_image(*args)
    )
    cache_dir = tmp_path / "cache"

    first = FaceDataset(image_dir, attr_file, size=8, cache_dir=cache_dir)
    assert len(decoded) == N_IMAGES
    assert sorted(p.suffix for p in cache_dir.iterdir()) == [".json", ".npy"]  # no temp files left
    cache = np.load(first.cache_path, mmap_mode="r")
    assert cache.dtype == np.uint8 and cache.shape == (N_IMAGES, 8, 8, 3)
    mtime = first.cache_path.stat().st_mtime_ns

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for split in ("train", "val", "test"):
            assert (
                FaceDataset(
                    image_dir, attr_file, split=split, size=8, cache_dir=cache_dir
                ).cache_path
                == first.cache_path
            )
    assert len(decoded) == N_IMAGES  # nothing decoded again
    assert first.cache_path.stat().st_mtime_ns == mtime

    other = FaceDataset(image_dir, attr_file, size=16, cache_dir=cache_dir)
    assert other.cache_path != first.cache_path and len(decoded) == 2 * N_IMAGES


def test_interrupted_preprocessing_leaves_no_cache(tmp_path, monkeypatch):
    image_dir, attr_file = make_celeba(tmp_path)
    cache_dir = tmp_path / "cache"

    def interrupted(path, size):
        if path.endswith("000004.jpg"):
            raise KeyboardInterrupt
        return np.zeros((size, size, 3), np.uint8)

    monkeypatch.setattr(data_cache, "load_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        FaceDataset(image_dir, attr_file, size=8, cache_dir=cache_dir)
    assert list(cache_dir.iterdir()) == []
    monkeypatch.undo()
    dataset = FaceDataset(image_dir, attr_file, size=8, cache_dir=cache_dir)
    assert dataset[0][0].abs().sum() > 0  # real pixels, not the interrupted run's zeros


def test_parallel_preprocessing_matches_serial(tmp_path, monkeypatch):
    image_dir, attr_file = make_celeba(tmp_path)
    (image_dir / "000002.jpg").write_text("broken")
    monkeypatch.setattr(data_cache, "_MIN_PARALLEL", 1)
    with pytest.warns(UserWarning, match="000002.jpg"):
        serial = FaceDataset(image_dir, attr_file, size=8, workers=1, cache_dir=tmp_path / "serial")
    with pytest.warns(UserWarning, match="000002.jpg"):
        parallel = FaceDataset(
            image_dir, attr_file, size=8, workers=2, cache_dir=tmp_path / "parallel"
        )
    np.testing.assert_array_equal(np.load(serial.cache_path), np.load(parallel.cache_path))
    assert serial.files == parallel.files


def test_flip_mirrors_about_half_the_items_and_batches(tmp_path):
    root = tmp_path / "faces"
    (root / "a").mkdir(parents=True)
    halves = np.zeros((16, 16, 3), np.uint8)
    halves[:, 8:] = 255  # black left half, white right half
    for i in range(4):
        Image.fromarray(halves).save(root / "a" / f"{i}.png")
    plain = FaceDataset(root, size=16, cache_dir=tmp_path / "cache")
    original = plain[0][0]
    assert original[:, :, 0].max() < -0.9 and original[:, :, -1].min() > 0.9
    flipping = FaceDataset(root, size=16, flip=True, cache_dir=tmp_path / "cache")

    torch.manual_seed(0)
    mirrored = [torch.equal(flipping[0][0], original.flip(-1)) for _ in range(40)]
    assert 5 < sum(mirrored) < 35
    assert all(m or torch.equal(flipping[0][0], original) for m in mirrored[:5])

    images, _ = flipping.batch(
        torch.zeros(64, dtype=torch.long), generator=torch.Generator().manual_seed(1)
    )
    rows_mirrored = [torch.equal(image, original.flip(-1)) for image in images]
    assert 10 < sum(rows_mirrored) < 54
    assert all(m or torch.equal(image, original) for m, image in zip(rows_mirrored, images))
    again, _ = flipping.batch(
        torch.zeros(64, dtype=torch.long), generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(images, again)


def test_batch_and_iter_batches_match_items(tmp_path):
    image_dir, attr_file = make_celeba(tmp_path)
    dataset = FaceDataset(
        image_dir, attr_file, attrs=["Male", "Smiling"], size=8, cache_dir=tmp_path / "cache"
    )
    indices = [5, 0, 5, 11]
    images, labels = dataset.batch(indices)
    assert images.shape == (4, 3, 8, 8) and images.dtype == torch.float32 and images.is_contiguous()
    assert torch.equal(images, torch.stack([dataset[i][0] for i in indices]))
    assert torch.equal(labels, torch.stack([dataset[i][1] for i in indices]))

    epoch = list(
        dataset.iter_batches(5, drop_last=False, generator=torch.Generator().manual_seed(0))
    )
    assert [len(b[0]) for b in epoch] == [5, 5, 5, 1]
    seen = torch.cat([b[1] for b in epoch])
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, dataset.labels.tolist()))
    assert [len(b[0]) for b in dataset.iter_batches(5)] == [5, 5, 5]


def test_pickled_dataset_reopens_the_memmap_instead_of_copying_it(tmp_path):
    image_dir, attr_file = make_celeba(tmp_path)
    dataset = FaceDataset(image_dir, attr_file, size=64, cache_dir=tmp_path / "cache")
    payload = pickle.dumps(dataset)
    assert len(payload) < dataset.cache_path.stat().st_size / 10
    clone = pickle.loads(payload)
    assert torch.equal(clone[3][0], dataset[3][0]) and clone.files == dataset.files


def test_load_image_crops_the_central_square(tmp_path):
    bands = np.zeros((60, 40, 3), np.uint8)  # portrait: red top, green middle, blue bottom
    bands[:10, :, 0] = bands[10:50, :, 1] = bands[50:, :, 2] = 255
    Image.fromarray(bands).save(tmp_path / "portrait.png")
    Image.fromarray(bands.transpose(1, 0, 2).copy()).save(tmp_path / "landscape.png")
    for name in ("portrait.png", "landscape.png"):
        image = load_image(tmp_path / name, size=8)
        assert image.shape == (8, 8, 3) and image.dtype == np.uint8
        # Lanczos reaches a little past the crop box (16/255 at the edges); a wrong crop would
        # put whole red or blue rows in the image.
        np.testing.assert_allclose(image.reshape(-1, 3), [[0, 255, 0]] * 64, atol=24)


def test_to_tensor_maps_uint8_to_minus_one_one():
    pixels = np.array([[[0, 255, 51]]], np.uint8)
    assert to_tensor(pixels).flatten().tolist() == pytest.approx([-1.0, 1.0, -0.6])
    assert to_tensor(pixels).shape == (3, 1, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": 0}, "size must be a positive integer, got 0"),
        ({"size": -64}, "size must be a positive integer"),
        ({"size": 2.5}, "size must be a positive integer"),
        ({"crop": "top"}, "crop must be one of 'center', 'celeba', got 'top'"),
        ({"split": "dev"}, "split must be one of 'train', 'val', 'test'"),
        (
            {"attrs": ["Smilling"]},
            r"unknown attrs \['Smilling'\]; valid names: Male, Smiling, Young",
        ),
        ({"attrs": []}, "valid names: Male, Smiling, Young"),
        ({"limit": 0}, "limit must be a positive integer"),
        ({"workers": 0}, "workers must be a positive integer"),
    ],
)
def test_bad_arguments_are_named_in_the_error(tmp_path, kwargs, match):
    image_dir, attr_file = make_celeba(tmp_path)
    with pytest.raises(ValueError, match=match):
        FaceDataset(image_dir, attr_file, cache_dir=tmp_path / "cache", **kwargs)


def test_missing_paths_are_named_in_the_error(tmp_path):
    image_dir, attr_file = make_celeba(tmp_path)
    with pytest.raises(FileNotFoundError, match="image_dir .*nowhere"):
        FaceDataset(tmp_path / "nowhere", attr_file)
    with pytest.raises(FileNotFoundError, match="attr_file .*nothing.txt"):
        FaceDataset(image_dir, tmp_path / "nothing.txt")
    with pytest.raises(FileNotFoundError, match="partition_file .*nope.txt"):
        FaceDataset(image_dir, attr_file, partition_file=tmp_path / "nope.txt")


def test_limit_uses_the_first_listed_images(tmp_path):
    image_dir, attr_file = make_celeba(tmp_path)
    dataset = FaceDataset(
        image_dir, attr_file, split="train", limit=10, size=8, cache_dir=tmp_path / "cache"
    )
    assert len(dataset) == 8 and all(int(f[:6]) <= 10 for f in dataset.files)
    assert np.load(dataset.cache_path, mmap_mode="r").shape[0] == 10


@pytest.mark.skipif(
    not (REAL_DATA / "celebahq").is_dir(),
    reason=f"real CelebA-HQ data not found at {REAL_DATA}/celebahq",
)
def test_real_celebahq_subset(tmp_path):
    root = REAL_DATA / "celebahq"
    attr_file = root / "CelebAMask-HQ-attribute-anno.txt"
    dataset = FaceDataset(
        root / "images64", attr_file, attrs=["Smiling", "Male"], limit=300, cache_dir=tmp_path
    )
    assert len(dataset) == 240 and dataset.labels.shape == (240, 2)
    assert 0.2 < dataset.labels[:, 0].mean() < 0.8  # Smiling is 1 for about 47% of the faces
    image, attrs = dataset[7]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert -1 <= image.min() < -0.5 and 0.5 < image.max() <= 1
    # 64-px sources are cached unchanged, and labels follow the attribute file's rows.
    source = np.asarray(Image.open(root / "images64" / dataset.files[7]).convert("RGB"))
    assert torch.equal(image, to_tensor(source))
    table = read_attribute_file(attr_file)
    row = table.files.index(dataset.files[7])
    columns = [table.names.index("Smiling"), table.names.index("Male")]
    assert attrs.tolist() == table.values[row, columns].tolist()


@pytest.mark.skipif(
    not (REAL_DATA / "london_faces").is_dir(),
    reason=f"London faces not found at {REAL_DATA}/london_faces",
)
def test_real_london_faces_as_class_folders(tmp_path):
    dataset = FaceDataset(
        REAL_DATA / "london_faces", attrs=["smiling"], size=32, split="test", cache_dir=tmp_path
    )
    assert dataset.attr_names == ["smiling"] and len(dataset) == 8
    assert dataset.labels.squeeze(1).tolist() == [
        float(f.startswith("smiling/")) for f in dataset.files
    ]
    assert dataset[0][0].shape == (3, 32, 32)
