"""Face detection, alignment, crop and paste-back (exprfast.editing.faces), and the scripts that
measure faces: the calibration on real crops, the London report, the slider strength."""
import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("cv2", reason="exprfast.editing.faces needs opencv-python-headless<5")

from conftest import (REAL_CELEBAHQ, REAL_LONDON, REPO, make_celebahq, needs_london,  # noqa: E402
                      tiny_model)
from exprfast import checkpoints, editing, evaluation, models  # noqa: E402
from exprfast.data import open_split  # noqa: E402
from exprfast.editing import faces  # noqa: E402

CELEBAHQ = REAL_CELEBAHQ / "images256"
LONDON = REAL_LONDON
needs_celebahq = pytest.mark.skipif(not CELEBAHQ.is_dir(), reason=f"{CELEBAHQ} absent")


def script(name: str):
    """scripts/``name``.py as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sample():
    with Image.open(editing.SAMPLE_PHOTOS[0]) as image:
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
    assert len(editing.SAMPLE_PHOTOS) >= 1
    readme = (editing.photo.SAMPLES_DIR / "README.md").read_text()
    assert ("DeBruine, L., & Jones, B. (2017). Face Research Lab London Set (Version 5). "
            "figshare. https://doi.org/10.6084/m9.figshare.5047666.v5") in readme
    assert "CC BY 4.0" in readme
    for path in editing.SAMPLE_PHOTOS:
        assert path.is_file() and path.stat().st_size < 100_000


@pytest.mark.parametrize("index", range(len(editing.SAMPLE_PHOTOS)))
def test_one_face_in_each_sample(index):
    with Image.open(editing.SAMPLE_PHOTOS[index]) as image:
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
    crops = [CELEBAHQ / f"{i}.jpg" for i in range(1, 61)]
    result = script("calibrate_faces").measure_framing(crops)
    assert result["faces"] >= 55 and result["eyes"] >= 45
    assert np.allclose(result["box_center"], faces.CANONICAL_BOX_CENTER, atol=0.01)
    assert abs(result["box_size"] - faces.CANONICAL_BOX_SIZE) < 0.02
    assert np.allclose(result["left_eye"], faces.CANONICAL_LEFT_EYE, atol=0.01)
    assert np.allclose(result["right_eye"], faces.CANONICAL_RIGHT_EYE, atol=0.01)


@needs_celebahq
def test_training_crops_align_to_themselves():
    """CelebA-HQ crops put into bigger photos (scaled, rotated, moved) are cut out again nearly
    as they were: the photo framing matches the training framing."""
    crops = [CELEBAHQ / f"{i}.jpg" for i in range(4989, 5001)]
    result = script("calibrate_faces").measure_alignment(crops)
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


# ----------------------------------------------------------------------------- London report


@needs_london
@pytest.mark.parametrize("paste", ["hybrid", "replace"])
def test_london_pairs_report_and_figure(tmp_path, paste):
    """scripts/london_pairs.py on two people with a tiny model and judge: the report's rates are
    the per-person readings (of the judge's other attribute too), and no pixel away from the
    faces changes in either paste mode."""
    london_pairs = script("london_pairs")
    checkpoints.save_model(tiny_model(), tmp_path / "model.pt")
    judge = models.AttributeClassifier(32, ["Smiling", "Mouth_Slightly_Open"], init_fm=8,
                                       hid_dim=16).eval()
    checkpoints.save_classifier(judge, tmp_path / "judge.pt", {})
    london = tmp_path / "london"
    for kind in ("neutral", "smiling"):
        (london / kind).mkdir(parents=True)
        for pid in ("001", "002"):
            (london / kind / f"{pid}.jpg").symlink_to(LONDON / kind / f"{pid}.jpg")
    args = ["--model", str(tmp_path / "model.pt"), "--judge", str(tmp_path / "judge.pt"),
            "--london", str(london), "--people", "001", "--cell", "40",
            "--figure", str(tmp_path / "pairs.png"), "--report", str(tmp_path / "report"),
            "--mouths", str(tmp_path / "mouths.png"),
            "--data-root", str(make_celebahq(tmp_path / "data", n=80, size=32))]
    assert london_pairs.main(args + ["--paste", paste]) == 0
    with Image.open(tmp_path / "pairs.png") as figure:
        assert figure.size == (6 * 40 + 8, 40)
    with Image.open(tmp_path / "mouths.png") as mouths:  # photo + 4 paste modes, 2 rows
        assert mouths.size == (5 * 40, 2 * 32)
    report = json.loads((tmp_path / "report.json").read_text())
    rows, summary = report["people"], report["summary"]
    assert [row["person"] for row in rows] == ["001", "002"]
    assert summary["edited_neutral_judged_smiling"] == sum(
        row["edited_neutral_smiling"] for row in rows) / 2
    assert summary["pixels_changed_outside_faces"] == 0
    mouth_open = summary["other_attributes_judged_present"]["Mouth_Slightly_Open"]
    for kind in ("edited_neutral", "real_smiling", "edited_smiling", "real_neutral"):
        assert mouth_open[kind] == sum(row[f"{kind}_Mouth_Slightly_Open"] for row in rows) / 2
    assert (f"| judged Mouth_Slightly_Open: smiling photo set to Smiling=0 vs real neutral | "
            f"{100 * mouth_open['edited_smiling']:.1f} %") in (tmp_path / "report.md").read_text()
    assert all(math.isfinite(summary[key]) for key in ("strength_neutral_set_to_smile",
                                                        "strength_smiling_set_to_0",
                                                        "strength_reconstruction_ceiling"))
    regions = summary["strength_by_region"]
    assert set(regions["neutral"]) == set(regions["d"]) == {"mouth", "eyes", "rest"}
    assert sum(r["energy_share"] for r in regions["d"].values()) == pytest.approx(1)
    assert all(-1 <= r["cosine"] <= 1 for r in regions["d"].values())  # CelebA's d was there
    along = regions["along_celeba_d"]
    assert set(along) == {"real", "neutral", "smiling"}
    assert all(set(v) == {"mouth", "eyes", "rest"} for v in along.values())
    assert all(math.isfinite(x) for v in along.values() for x in v.values())
    assert "Along CelebA's d alone" in (tmp_path / "report.md").read_text()
    assert f"paste={paste!r}" in (tmp_path / "report.md").read_text()
    assert "| mouth |" in (tmp_path / "report.md").read_text()
    sharp = summary["mouth_sharpness_relative_to_real_smiles"]
    assert set(sharp) == {"neutral", "smiled", "reconstructed_smiling"}
    assert all(math.isfinite(v) and v > 0 for v in sharp.values())
    assert "Sharpness of the mouths" in (tmp_path / "report.md").read_text()
    if paste == "hybrid":  # a --data-root given but wrong is an error, not a report without it
        wrong = [a if a != args[-1] else str(tmp_path / "nowhere") for a in args]
        with pytest.raises(ValueError, match="nowhere"):
            london_pairs.main(wrong + ["--paste", paste])
        without_judge = args[:2] + args[4:]  # a report is the judge's: asked for without one
        with pytest.raises(SystemExit, match="--report needs --judge"):
            london_pairs.main(without_judge)
    if paste == "replace":  # --couple: the model's other attribute set with Smiling
        checkpoints.save_model(tiny_model(("Smiling", "Male")), tmp_path / "two.pt")
        assert london_pairs.main(args[2:] + ["--model", str(tmp_path / "two.pt"), "--paste", paste,
                                             "--couple", "Male"]) == 0
        assert json.loads((tmp_path / "report.json").read_text())["summary"]["coupled"] == ["Male"]
        assert "Coupled to Smiling in every edit: Male." in (tmp_path / "report.md").read_text()


# ----------------------------------------------------------------------------- slider strength


@pytest.mark.parametrize("attrs, couple", [(("Smiling",), []), (("Smiling", "Male"), ["Male"])])
def test_slider_strength_report(tmp_path, attrs, couple):
    """scripts/slider_strength.py on synthetic faces with a tiny model: every cell is the mean
    edit's projection on the real smiling-minus-non-smiling difference, in units of it; --couple
    sets another attribute of the model to the slider's value in every edit."""
    slider_strength = script("slider_strength")
    root = make_celebahq(tmp_path / "data", n=80, size=32)
    checkpoints.save_model(tiny_model(attrs), tmp_path / "model.pt")
    assert slider_strength.main(["--model", str(tmp_path / "model.pt"), "--data-root", str(root),
                                 "--values", "0", "1", "--pastes", "replace",
                                 "--out", str(tmp_path)]
                                + (["--couple", *couple] if couple else [])) == 0
    report = json.loads((tmp_path / "slider_strength.json").read_text())
    data = open_split(root, 32, "val", attrs=["Smiling"])
    faces_, labels = data.batch(range(len(data)))
    present = labels[:, 0] > 0.5
    assert report["faces"] == len(faces_) and report["smiling"] == int(present.sum()) > 0
    assert report["coupled"] == couple
    direction = faces_[present].mean(0) - faces_[~present].mean(0)
    editor = editing.load(tmp_path / "model.pt")
    neutral = faces_[~present]
    with torch.no_grad():  # Smiling (and the coupled attribute) set to 1
        decoded = editor.model.decode(editor.model.encode(neutral),
                                      torch.ones(len(neutral), len(attrs)))
    expected = ((decoded - neutral).mean(0) * direction).sum() / direction.pow(2).sum()
    measured = report["pastes"]["replace"]["non_smiling_set_to"]
    assert measured[1] == pytest.approx(float(expected), rel=1e-4, abs=1e-5)
    assert "| replace: smiling faces set to s, along −d |" in (
        tmp_path / "slider_strength.md").read_text()
    mouth = report["regions"]["non_smiling_set_to"][1]["mouth"]  # s = 1, d within the mouth box
    masked = direction * evaluation.region_masks(32)["mouth"]
    expected = ((decoded - neutral).mean(0) * masked).sum() / masked.pow(2).sum()
    assert mouth == pytest.approx(float(expected), rel=1e-4, abs=1e-5)
    assert "| mouth, replace: non-smiling faces set to s, along d |" in (
        tmp_path / "slider_strength.md").read_text()
    sharp = report["pastes"]["replace"]["mouth_sharpness"][1]  # s = 1, relative to real smiles
    assert sharp == pytest.approx(evaluation.sharpness(decoded, "mouth")
                                  / evaluation.sharpness(faces_[present], "mouth"), rel=1e-4)
    assert "| replace: non-smiling faces set to s |" in (tmp_path / "slider_strength.md").read_text()


def test_edit_readings_report(tmp_path):
    """scripts/edit_readings.py: each classifier's mean logit margin on every group of faces,
    and the reader's feature distances; a model without a reader is refused by name."""
    edit_readings = script("edit_readings")
    root = make_celebahq(tmp_path / "data", n=80, size=32)
    torch.manual_seed(3)
    reader = models.AttributeReader(32, ["Smiling"]).eval()
    checkpoints.save_model(tiny_model(), tmp_path / "model.pt", reader=reader, half=False)
    judge = models.AttributeClassifier(32, ["Smiling"], init_fm=8, hid_dim=16).eval()
    checkpoints.save_classifier(judge, tmp_path / "judge.pt", {})
    assert edit_readings.main(["--model", str(tmp_path / "model.pt"), "--judge",
                               str(tmp_path / "judge.pt"), "--data-root", str(root),
                               "--values", "1", "2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "edit_readings.json").read_text())
    faces_, labels = open_split(root, 32, "val", attrs=["Smiling"]).batch(range(report["faces"]))
    has = labels[:, 0] > 0.5
    editor = editing.load(tmp_path / "model.pt")
    with torch.no_grad():
        edited = editor.model.decode(editor.model.encode(faces_[~has]),
                                     torch.full((int((~has).sum()), 1), 2.0))
        for name, classifier in (("reader", editor.reader), ("judge", judge)):
            logits = classifier(edited)[:, 0]
            expected = (logits[:, 1] - logits[:, 0]).mean().item()
            assert report["margins"][name]["without, set to 2"] == pytest.approx(expected,
                                                                                rel=1e-4)
            logits = classifier(faces_[has])[:, 0]
            assert report["margins"][name]["real, with"] == pytest.approx(
                (logits[:, 1] - logits[:, 0]).mean().item(), rel=1e-4)
    assert set(report["feature_distances"]) == {"reconstructions, with vs without",
                                                "set to 1 vs reconstructions with"}
    assert all(math.isfinite(v) and v >= 0 for v in report["feature_distances"].values())
    checkpoints.save_model(tiny_model(), tmp_path / "plain.pt")
    with pytest.raises(SystemExit, match="no attribute reader"):
        edit_readings.main(["--model", str(tmp_path / "plain.pt"), "--judge",
                            str(tmp_path / "judge.pt"), "--data-root", str(root)])


# ----------------------------------------------------------------------------- reader accuracy


def test_reader_accuracy_report(tmp_path):
    """scripts/reader_accuracy.py: the reader of the face alone and the editor's mirrored mean,
    scored against the split's labels; a model without a reader is refused by name."""
    reader_accuracy = script("reader_accuracy")
    root = make_celebahq(tmp_path / "data", n=80, size=32)
    torch.manual_seed(3)
    reader = models.AttributeReader(32, ["Smiling"]).eval()
    checkpoints.save_model(tiny_model(), tmp_path / "model.pt", reader=reader, half=False)
    assert reader_accuracy.main(["--model", str(tmp_path / "model.pt"), "--data-root", str(root),
                                 "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "reader_accuracy_val.json").read_text())
    faces_, labels = open_split(root, 32, "val", attrs=["Smiling"]).batch(range(report["faces"]))
    with torch.no_grad():
        alone = reader.probabilities(faces_)
        mirrored = (alone + reader.probabilities(faces_.flip(3))) / 2
    for name, readings in (("the face alone", alone),
                           ("face and mirror image (Editor.estimate)", mirrored)):
        expected = ((readings > 0.5).float() == labels).float().mean().item()
        assert report["readings"][name]["accuracy"][0] == pytest.approx(expected)
    checkpoints.save_model(tiny_model(), tmp_path / "plain.pt")
    with pytest.raises(SystemExit, match="no attribute reader"):
        reader_accuracy.main(["--model", str(tmp_path / "plain.pt"), "--data-root", str(root)])


# ----------------------------------------------------------------------------- latent directions


@needs_london
def test_latent_directions_report(tmp_path):
    """scripts/latent_directions.py with a tiny model: the mean direction is the train split's
    smiling-minus-other mean latent, each cell the strength of decode(z + k v, Smiling=1) of the
    neutral London crops along their real smile, and the leave-one-out oracle averages to the
    pairs' own mean; a model of other attributes is refused by name."""
    latent_directions = script("latent_directions")
    root = make_celebahq(tmp_path / "data", n=80, size=32)
    checkpoints.save_model(tiny_model(), tmp_path / "model.pt")
    london = tmp_path / "london"
    for kind in ("neutral", "smiling"):
        (london / kind).mkdir(parents=True)
        for pid in ("001", "002", "003"):
            (london / kind / f"{pid}.jpg").symlink_to(LONDON / kind / f"{pid}.jpg")
    assert latent_directions.main(["--model", str(tmp_path / "model.pt"), "--data-root",
                                   str(root), "--london", str(london), "--scales", "0", "2",
                                   "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "latent_directions.json").read_text())
    found = report["directions"]
    assert report["people"] == 3 and len(found) == 4
    oracle = found["London pairs, leave one out (oracle)"]
    assert oracle["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert len({round(d["strength"][0], 6) for d in found.values()}) == 1  # k = 0: no shift

    model = editing.load(tmp_path / "model.pt").model
    train = open_split(root, 32, "train", attrs=["Smiling"])
    images, labels = train.batch(range(len(train)))
    crops = latent_directions.london_crops(london, 32)
    with torch.no_grad():
        z = model.encode(images)
        smiling = labels[:, 0] > 0.5
        mean = z[smiling].mean(0) - z[~smiling].mean(0)
        neutral = model.encode(crops["neutral"])
        edited = model.decode(neutral + 2 * mean, torch.ones(3, 1)).clamp(-1, 1)
    real = crops["smiling"].mean(0) - crops["neutral"].mean(0)
    expected = ((edited - crops["neutral"]).mean(0) * real).sum() / real.pow(2).sum()
    assert found["mean"]["norm"] == pytest.approx(float(mean.norm()), rel=1e-4)
    assert found["mean"]["strength"][1] == pytest.approx(float(expected), rel=1e-3, abs=1e-5)

    blank = tmp_path / "blank"
    for kind in ("neutral", "smiling"):
        (blank / kind).mkdir(parents=True)
        Image.new("RGB", (64, 64), "grey").save(blank / kind / "001.jpg")
    with pytest.raises(SystemExit, match="--london: no face found in .*001.jpg"):
        latent_directions.london_crops(blank, 32)

    checkpoints.save_model(tiny_model(("Smiling", "Male")), tmp_path / "two.pt")
    with pytest.raises(SystemExit, match="--model: needs a model of Smiling alone"):
        latent_directions.main(["--model", str(tmp_path / "two.pt"), "--data-root", str(root),
                                "--london", str(london)])
