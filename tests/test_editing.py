"""Editing: model files, the Editor on aligned faces, whole photos and interpolation grids
(exprfast.editing, exprfast.checkpoints)."""

import errno
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

pytest.importorskip("cv2", reason="exprfast.editing.faces needs opencv-python-headless<5")

from conftest import fake_training_checkpoint, tiny_model  # noqa: E402
from exprfast import checkpoints, editing  # noqa: E402
from exprfast.editing import faces  # noqa: E402


@pytest.fixture(scope="module")
def editor():
    return editing.Editor(tiny_model(("Smiling", "Mouth_Slightly_Open")))


@pytest.fixture(scope="module")
def sample():
    with Image.open(editing.SAMPLE_PHOTOS[0]) as image:
        return image.convert("RGB")


# ----------------------------------------------------------------------------- photos


def photo_for_mode(sample, mode):
    if mode == "RGBA":
        image = sample.convert("RGBA")
        alpha = np.tile(np.linspace(0, 255, sample.width).astype(np.uint8), (sample.height, 1))
        image.putalpha(Image.fromarray(alpha))
        return image
    return sample.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
@pytest.mark.parametrize("paste", editing.PASTE_MODES)
def test_edit_photo_keeps_size_mode_and_outside_pixels(sample, editor, mode, paste):
    photo = photo_for_mode(sample, mode)
    out, edited = editing.edit_photo(photo, {"Smiling": 1.0}, editor, paste=paste,
                                  return_faces=True)
    assert out.size == photo.size and out.mode == photo.mode and len(edited) == 1
    before, after = np.asarray(photo), np.asarray(out)
    size = editor.img_size if paste == "replace" else int(min(
        editing.photo.MAX_WORK_SIZE, max(editor.img_size, round(edited[0].crop_side))))
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
    out, edited = editing.edit_photo(path, {"Smiling": 0.0}, editor, paste="replace",
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
    out, edited = editing.edit_photo(canvas, {"Smiling": 1}, editor, face=1, paste="replace",
                                  return_faces=True)
    assert len(edited) == 1 and edited[0].box[0] > 600  # the smaller face
    assert np.array_equal(np.asarray(out)[:, :600], np.asarray(canvas)[:, :600])
    with pytest.raises(ValueError, match="face index must be 0..1"):
        editing.edit_photo(canvas, {"Smiling": 1}, editor, face=2)
    with pytest.raises(editing.NoFaceFound, match="no face found"):
        editing.edit_photo(Image.new("RGB", (320, 240), (128, 128, 128)), {"Smiling": 1}, editor)
    assert issubclass(editing.NoFaceFound, ValueError)
    with pytest.raises(ValueError, match="unknown attribute 'Smile'; this model has: Smiling, "
                                         "Mouth_Slightly_Open"):
        editing.edit_photo(sample, {"Smile": 1}, editor)


def test_edit_photo_unreadable_file(editor, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    with pytest.raises(ValueError, match="notes.jpg is not a readable image"):
        editing.edit_photo(bad, {"Smiling": 1}, editor)
    with pytest.raises(FileNotFoundError):
        editing.edit_photo(tmp_path / "missing.jpg", {"Smiling": 1}, editor)


@pytest.mark.parametrize("code, cause", [(errno.EROFS, "read-only file system"),
                                         (errno.ENOSPC, "no space left on device")])
def test_save_image_errors_name_the_target_and_the_cause(sample, tmp_path, monkeypatch, code,
                                                         cause):
    def failing_save(image, fp, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(fp))  # names the temporary file

    monkeypatch.setattr(Image.Image, "save", failing_save)
    target = tmp_path / "photos" / "x.jpg"
    with pytest.raises(OSError) as error:
        editing.save_image(sample, target)
    assert str(error.value) == f"cannot write {target}: {cause}"
    assert not list(target.parent.iterdir())  # no temporary file left behind
    monkeypatch.undo()
    editing.save_image(sample, target)  # the same call works once the folder can be written
    assert [p.name for p in target.parent.iterdir()] == ["x.jpg"]


# ----------------------------------------------------------------------------- model files


def test_save_load_round_trip(tmp_path):
    model = tiny_model()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    attrs = torch.tensor([[0.0], [1.0], [0.5], [1.5]])
    with torch.no_grad():
        z, x_hat = model(x, attrs)
    path = tmp_path / "models" / "tiny.pt"
    checkpoints.save_model(model, path, meta={"steps": 3})
    assert not list(path.parent.glob("*.tmp"))
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "exprfast-model" and payload["version"] == 1
    assert payload["meta"] == {"steps": 3}
    floats = [v for v in payload["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)

    loaded = editing.load(path)
    assert isinstance(loaded, editing.Editor) and loaded.meta == {"steps": 3}
    assert loaded.attrs == ("Smiling",) and loaded.img_size == 32
    assert not loaded.model.training
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert loaded.model.config == model.config
    with torch.no_grad():
        z2, x_hat2 = loaded.model(x, attrs)
    torch.testing.assert_close(z2, z, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(x_hat2, x_hat, atol=2e-2, rtol=0)

    checkpoints.save_model(model, path, half=False)  # overwrites in place; float32 is exact
    with torch.no_grad():
        torch.testing.assert_close(editing.load(path).model(x, attrs)[1], x_hat, atol=0, rtol=0)


def test_load_reads_training_checkpoints(tmp_path):
    model = tiny_model()
    path = fake_training_checkpoint(model, tmp_path / "checkpoint-0000010.pt")
    loaded = editing.load(path)
    assert loaded.meta["step"] == 10 and loaded.attrs == ("Smiling",)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    attrs = torch.tensor([[0.0], [1.0]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x, attrs)[1], model(x, attrs)[1])


def test_load_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "DEFAULT_MODEL", tmp_path / "pretrained" / "none.pt")
    with pytest.raises(FileNotFoundError, match="no bundled model"):
        editing.load()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        editing.load(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 definitely not a checkpoint" * 10)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    truncated = tmp_path / "truncated.pt"
    checkpoints.save_model(tiny_model(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    wrong = tmp_path / "wrong.pt"
    checkpoints.save_model(tiny_model(), wrong)
    payload = torch.load(wrong, weights_only=True)
    payload["state_dict"].pop(next(iter(payload["state_dict"])))
    torch.save(payload, wrong)
    newer = tmp_path / "newer.pt"
    torch.save({**payload, "version": 99}, newer)
    for path, reason in ((garbage, "not an exprfast model file .unreadable"),
                         (other, "not an exprfast model file"),
                         (truncated, "not an exprfast model file .unreadable"),
                         (wrong, "does not hold a valid model"),
                         (newer, "version 99")):
        with pytest.raises(ValueError, match=reason) as info:
            editing.load(path)
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
    # residual, hybrid and warp: the change only; setting the current values changes nothing
    for paste in ("residual", "hybrid", "warp"):
        same = editor.edit(x, {"Smiling": 0.0}, current={"Smiling": 0.0,
                                                        "Mouth_Slightly_Open": 1.0}, paste=paste)
        assert torch.equal(same, x)


@pytest.mark.parametrize("paste", ["residual", "hybrid", "warp"])
def test_edit_decodes_both_values_as_two_decodes_would(editor, paste):
    """edit decodes the new and the current values with one decode call each."""
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    current = {"Smiling": 0.3, "Mouth_Slightly_Open": 0.0}
    out = editor.edit(x, {"Smiling": 1.5}, current=current, paste=paste)
    with torch.no_grad():
        z = editor.model.encode(x)
        new, base = (editor.model.decode(z, torch.tensor([[s, 0.0]] * 3)) for s in (1.5, 0.3))
        expected = editor.compose(x, new, base, paste)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_hybrid_paste_draws_large_changes_and_adds_the_brightness_of_small_ones():
    painter = editing.Editor(PaintingModel())  # img_size 16
    images = torch.rand(2, 3, 64, 64) * 1.6 - 0.8
    current = torch.rand(2, 3, 16, 16) * 1.2 - 0.6
    compose = lambda change: painter.compose(images, current + change, current)  # noqa: E731
    assert torch.equal(compose(torch.zeros(3, 1, 1)), images)
    # a small change: its brightness is added, its colour tint is dropped
    torch.testing.assert_close(compose(torch.tensor([0.03, -0.03, 0.0])[:, None, None]), images)
    torch.testing.assert_close(compose(torch.full((3, 1, 1), 0.02)), images + 0.02)
    # a large change everywhere: the decoding, with some of the input's finer detail
    resize = editing.editor._resize
    detail = images - resize(resize(images, 16), 64)
    drawn = resize(current + 0.3, 64) + editing.editor.HYBRID_DETAIL * detail
    torch.testing.assert_close(compose(torch.full((3, 1, 1), 0.3)), drawn.clamp(-1, 1))
    # a large change in one corner: drawn there, the input (plus brightness) far from it
    corner = torch.zeros(1, 1, 16, 16)
    corner[..., :6, :6] = 0.5
    out = compose(corner)
    drawn = resize(current + corner, 64) + editing.editor.HYBRID_DETAIL * detail
    torch.testing.assert_close(out[..., :8, :8], drawn.clamp(-1, 1)[..., :8, :8])
    assert torch.equal(out[..., 40:, 40:], images[..., 40:, 40:])
    with pytest.raises(ValueError, match="paste must be one of hybrid, residual, replace, warp"):
        painter.compose(images, current, current, paste="blend")
    with pytest.raises(ValueError, match="paste='residual' needs current_decoded"):
        painter.compose(images, current, paste="residual")


def smooth_texture(n, size, seed=0):
    """Random smooth RGB images in [-1, 1]: 16x16 noise enlarged to ``size``, bicubic."""
    noise = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return F.interpolate(noise, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


def test_flow_finds_a_shift_and_the_warp_paste_moves_the_photo_by_it():
    painter = editing.Editor(PaintingModel())
    painter.img_size = 128  # the flow window scales with the model's resolution
    source = smooth_texture(2, 128)
    target = source.clone()
    target[1] = torch.roll(source[1], 2, dims=-1)  # face 1 moves 2 px to the right
    flow = painter.flow(source, target)
    assert flow.shape == (2, 2, 128, 128) and flow.dtype == torch.float32
    inner = (slice(None), slice(16, -16), slice(16, -16))
    torch.testing.assert_close(flow[1][inner].mean((1, 2)), torch.tensor([-2.0, 0.0]),
                               atol=0.05, rtol=0)
    photos = smooth_texture(2, 256, seed=1)
    out = painter.compose(photos, target, source, paste="warp")
    assert torch.equal(out[0], photos[0])  # decodings that agree leave the photo as it was
    moved = torch.roll(photos[1], 4, dims=-1)  # 2 px at 128 is 4 px at 256
    error = (out[1] - moved)[:, 32:-32, 32:-32].abs().mean()
    assert error < 0.2 * (photos[1] - moved)[:, 32:-32, 32:-32].abs().mean()


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
    painter = editing.Editor(PaintingModel())
    values = torch.tensor([0.0, 0.25, 0.75, 1.0])
    images = (2 * values - 1)[:, None, None, None].expand(-1, 3, 16, 16)
    torch.testing.assert_close(painter.estimate(images)[:, 0], values)
    # an unchanged attribute keeps its estimate: editing nothing reproduces the input
    torch.testing.assert_close(painter.edit(images, {}), images)


# ----------------------------------------------------------------------------- grid


def test_interpolation_grid_size(editor):
    grid = editing.interpolation_grid(editing.SAMPLE_PHOTOS[0], "Smiling", steps=5, model=editor,
                                   cell=48)
    assert grid.size == (6 * 48, 48) and grid.mode == "RGB"
    grid = editing.interpolation_grid(editing.SAMPLE_PHOTOS[0], ["Smiling", "Mouth_Slightly_Open"],
                                   model=editor, attrs={"Smiling": 0.0})
    assert grid.size == (8 * 128, 2 * 128)
    # columns 1.. are the decodings; with align=False too
    tiles = editing.interpolation_grid(editing.SAMPLE_PHOTOS[0], "Smiling", steps=2, model=editor,
                                    align=False, cell=32)
    assert tiles.size == (3 * 32, 32)
    with pytest.raises(ValueError, match="unknown attribute"):
        editing.interpolation_grid(editing.SAMPLE_PHOTOS[0], "Age", model=editor)



def test_bundled_model_edits_the_bundled_sample():
    model = editing.load()  # exprfast/pretrained/smiling.pt, shipped in the package
    assert model.attrs == ("Smiling",) and model.img_size == 128
    assert model.reader is not None  # it reads a photo's current values itself
    photo = Image.open(editing.SAMPLE_PHOTOS[0]).convert("RGB")
    smiling = editing.edit_photo(photo, {"Smiling": 1.5}, model=model)
    before, after = np.asarray(photo, dtype=np.int16), np.asarray(smiling, dtype=np.int16)
    assert after.shape == before.shape
    changed = np.abs(after - before).max(axis=2) > 2
    assert changed.mean() > 0.01  # the face changed
    assert not changed[:, :40].any() and not changed[-40:].any()  # the borders did not
