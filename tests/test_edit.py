"""Face detection, alignment and paste-back (exprfast.faces); model files, editing, grids and
the edit/grid commands (exprfast.edit)."""

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch import nn

pytest.importorskip("cv2", reason="exprfast.faces needs opencv-python-headless<5")

from exprfast import edit, faces  # noqa: E402
from exprfast.models import build  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LONDON = SHARED / "london_faces"
CELEBAHQ = SHARED / "celebahq" / "images256"
needs_london = pytest.mark.skipif(not LONDON.is_dir(), reason=f"{LONDON} absent")
needs_celebahq = pytest.mark.skipif(not CELEBAHQ.is_dir(), reason=f"{CELEBAHQ} absent")


def tiny_model(attrs=("Smiling",), seed=0):
    torch.manual_seed(seed)
    model = build("paper", 32, attrs, init_fm=8, max_fm=32)
    # non-trivial BatchNorm statistics, so that they are checked by the round trip
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def editor():
    return edit.Editor(tiny_model(("Smiling", "Mouth_Slightly_Open")))


@pytest.fixture(scope="module")
def sample():
    with Image.open(edit.SAMPLE_PHOTOS[0]) as image:
        return image.convert("RGB")


def similarity(scale, degrees, centre_from, centre_to):
    """2x3 map rotating by ``degrees`` (counter-clockwise as displayed) and scaling about
    ``centre_from``, which goes to ``centre_to``."""
    theta = math.radians(degrees)
    linear = scale * np.array([[math.cos(theta), math.sin(theta)],
                               [-math.sin(theta), math.cos(theta)]])
    offset = np.asarray(centre_to) - linear @ np.asarray(centre_from)
    return np.hstack([linear, offset[:, None]])


def corner_error(matrix, true_matrix):
    """RMS distance (crop units) between where the crop corners and centre land under two
    photo -> crop-unit maps."""
    points = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5]], dtype=float)
    back = np.linalg.inv(faces._to3(true_matrix))
    photo = (back[:2, :2] @ points.T + back[:2, 2:]).T
    mapped = (matrix[:, :2] @ photo.T + matrix[:, 2:]).T
    return float(np.sqrt(((mapped - points) ** 2).sum(1).mean()))


# ----------------------------------------------------------------------------- detection


def test_samples_exist_with_attribution():
    assert len(edit.SAMPLE_PHOTOS) >= 1
    readme = (edit.SAMPLES_DIR / "README.md").read_text()
    assert ("DeBruine, L., & Jones, B. (2017). Face Research Lab London Set (Version 5). "
            "figshare. https://doi.org/10.6084/m9.figshare.5047666.v5") in readme
    assert "CC BY 4.0" in readme
    for path in edit.SAMPLE_PHOTOS:
        assert path.is_file() and path.stat().st_size < 100_000


@pytest.mark.parametrize("index", range(len(edit.SAMPLE_PHOTOS)))
def test_one_face_in_each_sample(index):
    with Image.open(edit.SAMPLE_PHOTOS[index]) as image:
        found = faces.detect_faces(image)
    assert len(found) == 1
    assert found[0].aligned_by == "eyes" and abs(found[0].roll) < 10


@needs_london
@pytest.mark.parametrize("name", ["neutral/001.jpg", "neutral/021.jpg", "neutral/043.jpg",
                                  "smiling/005.jpg", "smiling/030.jpg", "smiling/038.jpg"])
def test_one_face_in_london_photos(name):
    with Image.open(LONDON / name) as image:
        found = faces.detect_faces(image)
    assert len(found) == 1 and found[0].aligned_by == "eyes"


def test_no_face_in_flat_or_noise_images():
    assert faces.detect_faces(np.full((300, 400, 3), 128, np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (240, 320), dtype=np.uint8)
    assert faces.detect_faces(noise) == []


def test_faces_are_ordered_largest_first(sample):
    pixels = np.asarray(sample)
    canvas = np.full((700, 1200, 3), 200, np.uint8)
    small = np.asarray(sample.resize((300, 300), Image.Resampling.LANCZOS))
    canvas[100:400, 50:350] = small
    canvas[60:572, 600:1112] = pixels
    found = faces.detect_faces(canvas)
    assert len(found) == 2
    assert found[0].box[2] > found[1].box[2] and found[0].box[0] > 500


def test_alignment_follows_a_known_transform(sample):
    """Scaling, rotating and moving a photo moves its canonical crop with it."""
    pixels = np.asarray(sample)
    face = faces.detect_faces(pixels)[0]
    for scale, degrees in ((1.6, 0.0), (0.8, 12.0), (1.2, -30.0)):
        transform = similarity(scale, degrees, (256, 256), (500, 380))
        photo = faces.cv2.warpAffine(pixels, transform, (1000, 760), flags=faces.cv2.INTER_CUBIC,
                                     borderMode=faces.cv2.BORDER_REPLICATE)
        moved = faces.detect_faces(photo)
        assert len(moved) == 1
        # the crop of the moved face should be the original's crop: matrix o transform^-1
        expected = faces._to3(face.matrix) @ np.linalg.inv(faces._to3(transform))
        assert corner_error(moved[0].matrix, expected[:2]) < 0.06, (scale, degrees)
        assert abs(moved[0].roll - (face.roll - degrees)) < 4


@needs_celebahq
def test_calibration_rederived_on_celebahq():
    """The CANONICAL_* constants come back (approximately) from 60 CelebA-HQ training crops."""
    result = faces.measure_framing([CELEBAHQ / f"{i}.jpg" for i in range(1, 61)])
    assert result["faces"] >= 55 and result["eyes"] >= 45
    assert np.allclose(result["box_center"], faces.CANONICAL_BOX_CENTER, atol=0.01)
    assert abs(result["box_size"] - faces.CANONICAL_BOX_SIZE) < 0.02
    assert np.allclose(result["left_eye"], faces.CANONICAL_LEFT_EYE, atol=0.01)
    assert np.allclose(result["right_eye"], faces.CANONICAL_RIGHT_EYE, atol=0.01)


@needs_celebahq
def test_training_crops_align_to_themselves():
    """CelebA-HQ crops put into bigger photos (scaled, rotated, moved) are cut out again nearly
    as they were: the photo framing matches the training framing."""
    result = faces.measure_alignment([CELEBAHQ / f"{i}.jpg" for i in range(4989, 5001)])
    assert result["found"] >= 10 and result["eyes"] >= 8
    assert result["median"] < 0.06 and result["max"] < 0.25


# ----------------------------------------------------------------------------- crop and paste


def test_crop_and_inverse_warp_round_trip(sample):
    pixels = np.asarray(sample)
    face = faces.detect_faces(pixels)[0]
    crop = faces.crop_face(pixels, face, 256)
    assert crop.shape == (256, 256, 3) and crop.dtype == np.uint8
    # pasting the unedited crop back changes the photo only by resampling blur
    back = faces.paste_face(pixels, crop, face)
    weights, (top, left, bottom, right) = faces.photo_mask(face, pixels.shape, 256)
    inside = weights > 0.99
    assert inside.sum() > 10_000
    diff = np.abs(back[top:bottom, left:right].astype(int) - pixels[top:bottom, left:right])
    assert diff[inside].mean() < 3.0
    # and a canvas in crop coordinates goes out and back: crop of the crop's paste
    assert np.abs(faces.crop_face(back, face, 256).astype(int) - crop).mean() < 3.0


def test_paste_changes_only_the_masked_pixels(sample):
    pixels = np.asarray(sample)
    face = faces.detect_faces(pixels)[0]
    crop = 255 - faces.crop_face(pixels, face, 128)
    out = faces.paste_face(pixels, crop, face)
    weights, (top, left, bottom, right) = faces.photo_mask(face, pixels.shape, 128)
    outside = np.ones(pixels.shape[:2], bool)
    outside[top:bottom, left:right] = weights == 0
    assert np.array_equal(out[outside], pixels[outside])
    assert (out[~outside] != pixels[~outside]).any(axis=-1).mean() > 0.9
    # the mask is feathered: weights between 0 and 1 on a band around the face
    assert ((weights > 0.05) & (weights < 0.95)).sum() > 1000
    # grey photos and crops work the same
    grey = faces.paste_face(pixels[..., 0], crop[..., 0], face)
    assert grey.shape == pixels.shape[:2]
    assert np.array_equal(grey[outside], pixels[..., 0][outside])


def photo_for_mode(sample, mode):
    if mode == "RGBA":
        image = sample.convert("RGBA")
        alpha = np.tile(np.linspace(0, 255, sample.width).astype(np.uint8), (sample.height, 1))
        image.putalpha(Image.fromarray(alpha))
        return image
    return sample.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
@pytest.mark.parametrize("residual", [False, True])
def test_edit_photo_keeps_size_mode_and_outside_pixels(sample, editor, mode, residual):
    photo = photo_for_mode(sample, mode)
    out, edited = edit.edit_photo(photo, {"Smiling": 1.0}, editor, residual=residual,
                                  return_faces=True)
    assert out.size == photo.size and out.mode == photo.mode and len(edited) == 1
    before, after = np.asarray(photo), np.asarray(out)
    size = editor.img_size if not residual else int(min(
        edit.MAX_WORK_SIZE, max(editor.img_size, round(edited[0].crop_side))))
    weights, (top, left, bottom, right) = faces.photo_mask(edited[0], before.shape, size)
    outside = np.ones(before.shape[:2], bool)
    outside[top:bottom, left:right] = weights == 0
    assert np.array_equal(after[outside], before[outside])
    assert not np.array_equal(after, before)
    if mode == "RGBA":
        assert np.array_equal(after[..., 3], before[..., 3])


def test_edit_photo_applies_exif_orientation(sample, editor, tmp_path):
    # store the photo sideways with an orientation tag saying how to turn it upright
    sideways = sample.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": upright again
    path = tmp_path / "sideways.jpg"
    sideways.save(path, quality=95, exif=exif)
    with Image.open(path) as raw:
        upright = np.asarray(ImageOps.exif_transpose(raw))
    assert np.abs(upright.astype(int) - np.asarray(sample)).mean() < 3  # JPEG noise only
    out, edited = edit.edit_photo(path, {"Smiling": 0.0}, editor, residual=False,
                                  return_faces=True)
    assert out.size == (upright.shape[1], upright.shape[0]) and out.mode == "RGB"
    assert len(edited) == 1 and abs(edited[0].roll) < 10  # found upright, not sideways
    assert out.getexif().get(0x0112) in (None, 1)
    weights, (top, left, bottom, right) = faces.photo_mask(edited[0], upright.shape,
                                                          editor.img_size)
    outside = np.ones(upright.shape[:2], bool)
    outside[top:bottom, left:right] = weights == 0
    assert np.array_equal(np.asarray(out)[outside], upright[outside])


def test_edit_photo_face_index_and_errors(sample, editor):
    canvas = Image.new("RGB", (1100, 600), (200, 200, 200))
    canvas.paste(sample, (20, 40))
    canvas.paste(sample.resize((300, 300)), (700, 150))
    out, edited = edit.edit_photo(canvas, {"Smiling": 1}, editor, face=1, residual=False,
                                  return_faces=True)
    assert len(edited) == 1 and edited[0].box[0] > 600  # the smaller face
    assert np.array_equal(np.asarray(out)[:, :600], np.asarray(canvas)[:, :600])
    with pytest.raises(ValueError, match="face index must be 0..1"):
        edit.edit_photo(canvas, {"Smiling": 1}, editor, face=2)
    with pytest.raises(edit.NoFaceFound, match="no face found"):
        edit.edit_photo(Image.new("RGB", (320, 240), (128, 128, 128)), {"Smiling": 1}, editor)
    assert issubclass(edit.NoFaceFound, ValueError)
    with pytest.raises(ValueError, match="unknown attribute 'Smile'; this model has: Smiling, "
                                         "Mouth_Slightly_Open"):
        edit.edit_photo(sample, {"Smile": 1}, editor)


def test_edit_photo_unreadable_file(editor, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    with pytest.raises(ValueError, match="notes.jpg is not a readable image"):
        edit.edit_photo(bad, {"Smiling": 1}, editor)
    with pytest.raises(FileNotFoundError):
        edit.edit_photo(tmp_path / "missing.jpg", {"Smiling": 1}, editor)


# ----------------------------------------------------------------------------- model files


def test_save_load_round_trip(tmp_path):
    model = tiny_model()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    attrs = torch.tensor([[0.0], [1.0], [0.5], [1.5]])
    with torch.no_grad():
        z, x_hat = model(x, attrs)
    path = tmp_path / "models" / "tiny.pt"
    edit.save_model(model, path, meta={"steps": 3})
    assert not list(path.parent.glob("*.tmp"))
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "exprfast-model" and payload["version"] == 1
    assert payload["meta"] == {"steps": 3}
    floats = [v for v in payload["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)

    loaded = edit.load(path)
    assert isinstance(loaded, edit.Editor) and loaded.meta == {"steps": 3}
    assert loaded.attrs == ("Smiling",) and loaded.img_size == 32
    assert not loaded.model.training
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert loaded.model.config == model.config
    with torch.no_grad():
        z2, x_hat2 = loaded.model(x, attrs)
    torch.testing.assert_close(z2, z, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(x_hat2, x_hat, atol=2e-2, rtol=0)

    edit.save_model(model, path, half=False)  # overwrites in place; float32 is exact
    with torch.no_grad():
        torch.testing.assert_close(edit.load(path).model(x, attrs)[1], x_hat, atol=0, rtol=0)


def fake_training_checkpoint(model, path):
    # the layout of exprfast.train's checkpoints (Trainer.state_dict)
    torch.save({"format": "exprfast-train-checkpoint", "version": 1,
                "model_config": dict(model.config), "model": model.state_dict(),
                "ae_optimizer": {}, "dis_optimizer": {}, "scaler": {}, "step": 10,
                "data": {}, "train_config": {"img_size": 32}}, path)
    return path


def test_load_reads_training_checkpoints(tmp_path):
    model = tiny_model()
    path = fake_training_checkpoint(model, tmp_path / "checkpoint-0000010.pt")
    loaded = edit.load(path)
    assert loaded.meta["step"] == 10 and loaded.attrs == ("Smiling",)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    attrs = torch.tensor([[0.0], [1.0]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x, attrs)[1], model(x, attrs)[1])


def test_export_writes_a_half_precision_model_file(tmp_path, capsys):
    from exprfast.cli import main

    model = tiny_model()
    checkpoint = fake_training_checkpoint(model, tmp_path / "checkpoint-0000010.pt")
    out = tmp_path / "model.pt"
    assert main(["export", str(checkpoint), "-o", str(out)]) == 0
    payload = torch.load(out, weights_only=True)
    assert payload["format"] == "exprfast-model" and payload["meta"]["step"] == 10
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())
    assert not any(k.startswith("latent_discriminator.") for k in payload["state_dict"])
    x, attrs = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([[0.0], [1.0]])
    with torch.no_grad():
        torch.testing.assert_close(edit.load(out).model(x, attrs)[1], model.eval()(x, attrs)[1],
                                   atol=2e-2, rtol=0)
    assert main(["export", str(tmp_path / "missing.pt"), "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_load_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(edit, "DEFAULT_MODEL", tmp_path / "pretrained" / "none.pt")
    with pytest.raises(FileNotFoundError, match="no bundled model"):
        edit.load()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        edit.load(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 definitely not a checkpoint" * 10)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    truncated = tmp_path / "truncated.pt"
    edit.save_model(tiny_model(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    wrong = tmp_path / "wrong.pt"
    edit.save_model(tiny_model(), wrong)
    payload = torch.load(wrong, weights_only=True)
    payload["state_dict"].pop(next(iter(payload["state_dict"])))
    torch.save(payload, wrong)
    newer = tmp_path / "newer.pt"
    torch.save({**payload, "version": 99}, newer)
    for path, reason in ((garbage, "not a readable exprfast model"),
                         (other, "not an exprfast model file"),
                         (truncated, "not a readable exprfast model"),
                         (wrong, "does not hold a valid model"),
                         (newer, "version 99")):
        with pytest.raises(ValueError, match=reason) as info:
            edit.load(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message


# ----------------------------------------------------------------------------- Editor


def test_edit_returns_the_input_kind(editor):
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    out = editor.edit(batch, {"Smiling": 1.0})
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == batch.shape

    bigger = torch.from_numpy(rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8))
    out = editor.edit(bigger, {"Smiling": 0.0})
    assert torch.is_tensor(out) and out.dtype == torch.uint8 and out.shape == bigger.shape

    floats = torch.rand(2, 3, 64, 64) * 2 - 1
    out = editor.edit(floats, {"Smiling": 1.0, "Mouth_Slightly_Open": 0.3})
    assert out.dtype == torch.float32 and out.shape == floats.shape
    assert out.min() >= -1 and out.max() <= 1

    double = floats[:1].double().numpy()
    out = editor.edit(double, {"Smiling": 1.0})
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == double.shape

    single = batch[0]
    assert editor.edit(single, {"Smiling": 1.0}).shape == single.shape


def test_edit_matches_the_decoder(editor):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = editor.edit(x, {"Smiling": 1.0}, current={"Mouth_Slightly_Open": 0.0})
    with torch.no_grad():
        expected = editor.model.decode(editor.model.encode(x), torch.tensor([[1.0, 0.0]] * 2))
    torch.testing.assert_close(out, expected)
    # residual: the change only; setting the current values changes nothing
    same = editor.edit(x, {"Smiling": 0.0}, current={"Smiling": 0.0,
                                                    "Mouth_Slightly_Open": 1.0}, residual=True)
    torch.testing.assert_close(same, x)


def test_edit_errors(editor):
    images = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown attribute 'Happy'; this model has: Smiling, "
                                         "Mouth_Slightly_Open"):
        editor.edit(images, {"Happy": 1.0})
    with pytest.raises(ValueError, match="finite number"):
        editor.edit(images, {"Smiling": float("nan")})
    with pytest.raises(ValueError, match="square"):
        editor.edit(np.zeros((1, 32, 40, 3), np.uint8), {"Smiling": 1.0})
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        editor.edit(np.zeros((1, 32, 32, 4), np.uint8), {"Smiling": 1.0})


class PaintingModel(nn.Module):
    """encode: identity; decode: a flat image of value 2 * Smiling - 1."""

    attrs, img_size = ("Smiling",), 16

    def encode(self, x):
        return x

    def decode(self, z, attrs):
        return (2 * attrs[:, :1, None, None] - 1).expand(-1, 3, *z.shape[2:]).clone()


def test_estimate_picks_the_best_reconstruction():
    painter = edit.Editor(PaintingModel())
    values = torch.tensor([0.0, 0.25, 0.75, 1.0])
    images = (2 * values - 1)[:, None, None, None].expand(-1, 3, 16, 16)
    torch.testing.assert_close(painter.estimate(images)[:, 0], values)
    # an unchanged attribute keeps its estimate: editing nothing reproduces the input
    torch.testing.assert_close(painter.edit(images, {}), images)


# ----------------------------------------------------------------------------- grid


def test_interpolation_grid_size(editor):
    grid = edit.interpolation_grid(edit.SAMPLE_PHOTOS[0], "Smiling", steps=5, model=editor,
                                   cell=48)
    assert grid.size == (6 * 48, 48) and grid.mode == "RGB"
    grid = edit.interpolation_grid(edit.SAMPLE_PHOTOS[0], ["Smiling", "Mouth_Slightly_Open"],
                                   model=editor, attrs={"Smiling": 0.0})
    assert grid.size == (8 * 128, 2 * 128)
    # columns 1.. are the decodings; with align=False too
    tiles = edit.interpolation_grid(edit.SAMPLE_PHOTOS[0], "Smiling", steps=2, model=editor,
                                    align=False, cell=32)
    assert tiles.size == (3 * 32, 32)
    with pytest.raises(ValueError, match="unknown attribute"):
        edit.interpolation_grid(edit.SAMPLE_PHOTOS[0], "Age", model=editor)


# ----------------------------------------------------------------------------- commands


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    edit.save_model(tiny_model(), path)
    return path


def parse(add_arguments, argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_run_edit_folder_with_bad_files(model_file, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in edit.SAMPLE_PHOTOS:
        (photos / path.name).write_bytes(path.read_bytes())
    (photos / "broken.jpg").write_bytes(b"GIF89a nonsense")
    Image.new("L", (200, 160), 90).save(photos / "wall.png")
    (photos / "readme.txt").write_text("not listed: not an image suffix")
    out = tmp_path / "out"
    args = parse(edit.add_edit_arguments, [str(photos), "--set", "Smiling=1", "-o", str(out),
                                           "--model", str(model_file)])
    assert edit.run_edit(args) == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2
    assert any("broken.jpg" in line and "not a readable image" in line for line in errors)
    assert any("wall.png" in line and "no face found" in line for line in errors)
    assert all(line.startswith("exprfast edit: error: ") for line in errors)
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(p.name for p in edit.SAMPLE_PHOTOS)
    for path in edit.SAMPLE_PHOTOS:
        with Image.open(out / path.name) as result, Image.open(path) as source:
            assert result.size == source.size and result.format == "JPEG"


def test_run_edit_single_file_and_argument_errors(model_file, tmp_path, capsys):
    target = tmp_path / "smile.png"
    args = parse(edit.add_edit_arguments, [str(edit.SAMPLE_PHOTOS[0]), "--set", "Smiling=0.8",
                                           "-o", str(target), "--model", str(model_file),
                                           "--face", "0", "--replace"])
    assert edit.run_edit(args) == 0
    with Image.open(target) as result:
        assert result.format == "PNG" and result.size == (512, 512)
    assert "1 face" in capsys.readouterr().out

    for argv, message in ((["--set", "Happy=1"], "unknown attribute 'Happy'"),
                          (["--set", "Smiling"], "NAME=VALUE"),
                          (["--set", "Smiling=yes"], "NAME=VALUE")):
        args = parse(edit.add_edit_arguments, [str(edit.SAMPLE_PHOTOS[0]), *argv, "-o",
                                               str(tmp_path / "x"), "--model", str(model_file)])
        assert edit.run_edit(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"junk")
    args = parse(edit.add_edit_arguments, [str(edit.SAMPLE_PHOTOS[0]), "--set", "Smiling=1",
                                           "-o", str(tmp_path / "x"), "--model", str(corrupt)])
    assert edit.run_edit(args) == 2
    err = capsys.readouterr().err
    assert "corrupt.pt" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_run_grid(model_file, tmp_path, capsys):
    target = tmp_path / "grid.png"
    args = parse(edit.add_grid_arguments, [str(edit.SAMPLE_PHOTOS[1]), "--attr", "Smiling",
                                           "--steps", "4", "--range", "-1", "2", "-o",
                                           str(target), "--model", str(model_file)])
    assert edit.run_grid(args) == 0
    with Image.open(target) as grid:
        assert grid.size == (5 * 128, 128)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (100, 100)).save(blank)
    args = parse(edit.add_grid_arguments, [str(blank), "-o", str(target), "--model",
                                           str(model_file)])
    assert edit.run_grid(args) == 1
    assert "no face found" in capsys.readouterr().err


def test_bundled_model_edits_the_bundled_sample():
    model = edit.load()  # exprfast/pretrained/smiling.pt, shipped in the package
    assert model.attrs == ("Smiling",) and model.img_size == 64
    photo = Image.open(edit.SAMPLE_PHOTOS[0]).convert("RGB")
    smiling = edit.edit_photo(photo, {"Smiling": 1.5}, model=model)
    before, after = np.asarray(photo, dtype=np.int16), np.asarray(smiling, dtype=np.int16)
    assert after.shape == before.shape
    changed = np.abs(after - before).max(axis=2) > 2
    assert changed.mean() > 0.01  # the face changed
    assert not changed[:, :40].any() and not changed[-40:].any()  # the borders did not
