import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REAL_CELEBAHQ, make_celebahq, tiny_model
from exprfast import checkpoints, evaluation, models
from exprfast.data import ATTR_FILE, celebahq_paths



# ----------------------------------------------------------------------------- stubs


class PaintingModel(nn.Module):
    """``encode`` is the identity; ``decode`` paints attribute j into image row j (+1 for 1, -1
    for 0), or returns the input untouched when ``use_labels`` is False."""

    def __init__(self, attrs, img_size=16, use_labels=True):
        super().__init__()
        self.attrs, self.img_size, self.use_labels = list(attrs), img_size, use_labels

    def encode(self, x):
        return x.clone()

    def decode(self, z, attrs):
        x = z.clone()
        if self.use_labels:
            for j in range(attrs.shape[1]):
                x[:, :, j, :] = attrs[:, j, None, None] * 2 - 1
        return x

    def decode_many(self, z, attr_sets):  # FaderModel's interface
        return [self.decode(z, attrs) for attrs in attr_sets]


class RowReader(nn.Module):
    """Classifier that reads attribute ``attrs[k]`` from image row ``rows[k]``."""

    def __init__(self, attrs, rows, img_size=16):
        super().__init__()
        self.attrs, self.rows, self.img_size = list(attrs), list(rows), img_size

    def forward(self, x):
        score = x[:, :, self.rows, :].mean((1, 3))  # (N, A)
        return torch.stack([-score, score], -1)


class TensorFaces:
    """Stand-in for FaceDataset: fixed images and labels with ``batch``."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def batch(self, indices):
        return self.images[indices], self.labels[indices]


def painted_faces(labels, img_size=16, seed=0):
    """Random images whose row j shows attribute j's true value, as PaintingModel paints it."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(len(labels), 3, img_size, img_size, generator=g) * 2 - 1
    return PaintingModel(["a"] * labels.shape[1]).decode(images, labels)


def balanced_labels(n=40):
    smiling = torch.arange(n) % 2
    male = (torch.arange(n) // 2) % 2
    return torch.stack([smiling, male], 1).float()


# ----------------------------------------------------------------------------- metrics


def test_psnr_and_ssim_of_identical_images():
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    assert torch.isinf(evaluation.psnr(x, x)).all()
    assert torch.allclose(evaluation.ssim(x, x), torch.ones(4), atol=1e-6)


def test_psnr_of_known_errors():
    x = torch.rand(2, 3, 64, 64) * 1.6 - 0.8
    # A constant offset of 0.02 on the [-1, 1] range: MSE 4e-4, PSNR 10 log10(4 / 4e-4) = 40 dB.
    assert torch.allclose(evaluation.psnr(x + 0.02, x), torch.full((2,), 40.0), atol=1e-3)
    # Gaussian noise of std 0.1: 10 log10(4 / 0.01) = 26.02 dB.
    noise = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.1
    assert torch.allclose(evaluation.psnr(x + noise, x), torch.full((2,), 26.02), atol=0.1)


def test_ssim_falls_with_noise_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    noise = torch.randn(2, 3, 32, 32, generator=g)
    values = [evaluation.ssim((x + s * noise).clamp(-1, 1), x).mean().item() for s in (0.01, 0.1, 0.5)]
    assert 1 > values[0] > values[1] > values[2] > 0
    y = (x + 0.1 * noise).clamp(-1, 1)
    assert torch.allclose(evaluation.ssim(x, y), evaluation.ssim(y, x), atol=1e-6)


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        evaluation.psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 4))


# ----------------------------------------------------------------------------- latent probe


def _planted_latents(model, n, seed, planted):
    """``n`` random latents of ``model``'s shape with 0/1 labels; with ``planted`` the label
    shifts one channel, else the latents say nothing about it."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, 1, generator=generator) < 0.4).float()
    z = torch.randn(n, *model.latent_shape, generator=generator)
    if planted:
        z[:, 0] += 2 * labels.view(n, 1, 1)
    return z, labels


def test_encode_split_encodes_the_first_faces_in_eval_mode():
    model = tiny_model().train()
    images = torch.rand(10, 3, 32, 32) * 2 - 1
    labels = balanced_labels(10)
    latents, read = evaluation.encode_split(model, TensorFaces(images, labels), n=7, batch_size=3)
    assert model.training  # its mode is restored
    with torch.no_grad():
        expected = model.eval().encode(images[:7])
    assert torch.allclose(latents, expected, atol=1e-6) and torch.equal(read, labels[:7])


@pytest.mark.parametrize("planted", [True, False])
def test_latent_probe_reads_an_attribute_only_where_the_latent_carries_it(planted):
    model = tiny_model()
    train = _planted_latents(model, 400, 0, planted)
    held_out = _planted_latents(model, 200, 1, planted)
    result = evaluation.latent_probe(model, train, held_out, steps=(300, 50))
    assert result["steps"] == [50, 300] and len(result["accuracy"]) == 2
    majority = result["majority"][0]
    assert majority == pytest.approx(max(held_out[1].mean(), 1 - held_out[1].mean()))
    final = result["accuracy"][-1][0]
    if planted:
        assert final > 0.95
    else:
        assert abs(final - majority) < 0.12
    again = evaluation.latent_probe(model, train, held_out, steps=(50, 300))
    assert again == result  # seeded: the same numbers every time
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        evaluation.latent_probe(model, train, held_out, steps=(0,))


# ----------------------------------------------------------------------------- swap accuracy


def test_edit_strength_is_the_mean_change_along_the_direction_in_its_units():
    torch.manual_seed(0)
    before = torch.rand(6, 3, 8, 8)
    direction = torch.randn(3, 8, 8)
    other = torch.randn(3, 8, 8)
    other -= (other * direction).sum() / direction.pow(2).sum() * direction  # orthogonal to it
    scale = torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0, 1.2]).view(6, 1, 1, 1)  # mean 0.7
    after = before + scale * direction + other
    assert evaluation.edit_strength(before, after, direction) == pytest.approx(0.7, rel=1e-6)
    assert evaluation.edit_strength(before, before + other, direction) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError):
        evaluation.edit_strength(before, after[:3], direction)


def test_regional_strengths_split_an_edit_by_face_region():
    size = 32
    masks = evaluation.region_masks(size)
    assert set(masks) == {"mouth", "eyes", "rest"}
    assert torch.equal(sum(masks.values()), torch.ones(1, size, size))  # a partition
    assert masks["mouth"][0, 24, 16] == 1 and masks["eyes"][0, 13, 10] == 1  # mouth, left eye
    faces = torch.rand(2, 3, size, size)
    mouth = evaluation.crop_region(faces, "mouth")
    assert mouth.numel() == 2 * 3 * masks["mouth"].sum()
    assert torch.equal(mouth.flatten(), faces[:, :, masks["mouth"][0].bool()].flatten())
    with pytest.raises(ValueError, match="face region"):
        evaluation.crop_region(faces, "nose")
    torch.manual_seed(0)
    before = torch.rand(4, 3, size, size)
    direction = torch.randn(3, size, size)
    # the whole change in the mouth, as far as the direction there; nothing elsewhere
    after = before + direction * masks["mouth"]
    strengths = evaluation.regional_strengths(before, after, direction)
    assert strengths["mouth"] == pytest.approx(1, rel=1e-6)
    assert strengths["eyes"] == pytest.approx(0, abs=1e-9)
    assert strengths["rest"] == pytest.approx(0, abs=1e-9)
    whole = evaluation.edit_strength(before, after, direction)
    shares = evaluation.regional_shares(direction, other=direction * masks["mouth"])
    assert whole == pytest.approx(shares["mouth"]["energy_share"], rel=1e-6)
    assert sum(v["energy_share"] for v in shares.values()) == pytest.approx(1, rel=1e-9)
    assert shares["mouth"]["cosine"] == pytest.approx(1, rel=1e-9)


def test_sharpness_sees_fine_detail_where_it_is():
    size = 32
    flat = torch.full((2, 3, size, size), 0.3)
    assert evaluation.sharpness(flat) == 0
    torch.manual_seed(0)
    noisy = flat + 0.2 * torch.randn(2, 1, size, size).expand(2, 3, size, size)
    blurred = nn.functional.avg_pool2d(noisy, 3, 1, 1, count_include_pad=False)
    assert evaluation.sharpness(blurred) < 0.2 * evaluation.sharpness(noisy)
    # detail only outside the mouth box: the mouth scores 0, the whole face does not
    mouth = evaluation.region_masks(size)["mouth"]
    elsewhere = flat + (noisy - flat) * (1 - mouth)
    assert evaluation.sharpness(elsewhere, "mouth") == 0 < evaluation.sharpness(elsewhere)
    # a grey edge (all channels alike) of height h: the Laplacian is +-h on the two columns
    edge = torch.zeros(1, 3, 8, 8)
    edge[..., 4:] = 0.5
    assert evaluation.sharpness(edge) == pytest.approx(2 * 0.5 ** 2 / 6, rel=1e-9)
    with pytest.raises(ValueError, match=r"\(N, 3, S, S\)"):
        evaluation.sharpness(edge[0])


def test_swap_accuracy_is_perfect_when_the_decoder_shows_the_labels():
    labels = balanced_labels()
    model = PaintingModel(["Smiling", "Male"])
    # The classifier lists the attributes in another order, plus one the model lacks.
    classifier = RowReader(["Male", "Eyeglasses", "Smiling"], rows=[1, 5, 0])
    results = evaluation.evaluate_dataset(model, classifier, TensorFaces(painted_faces(labels), labels),
                                  batch_size=16)
    assert results["n_images"] == 40 and results["attrs"] == ["Smiling", "Male"]
    for attr in ("Smiling", "Male"):
        assert results["swap_accuracy"][attr] == {"0": 1.0, "1": 1.0, "mean": 1.0}
        assert results["flip_success"][attr] == {"to_1": 1.0, "to_0": 1.0}
        assert results["classifier_accuracy"][attr] == 1.0
    assert results["swap_accuracy_mean"] == 1.0
    assert math.isinf(results["psnr"]) and results["ssim"] == pytest.approx(1.0)


def test_swap_accuracy_of_a_decoder_that_ignores_labels_follows_the_data():
    model = PaintingModel(["Smiling", "Male"], use_labels=False)
    classifier = RowReader(["Smiling", "Male"], rows=[0, 1])
    labels = balanced_labels()
    results = evaluation.evaluate_dataset(model, classifier, TensorFaces(painted_faces(labels), labels))
    assert results["swap_accuracy_mean"] == 0.5
    assert results["swap_accuracy"]["Smiling"] == {"0": 0.5, "1": 0.5, "mean": 0.5}
    # Unbalanced: 3 of 4 faces smile, so "set to 1" reads back 75 % and "set to 0" 25 %.
    labels[:, 0] = (torch.arange(40) % 4 != 0).float()
    results = evaluation.evaluate_dataset(model, classifier, TensorFaces(painted_faces(labels), labels),
                                  attrs=["Smiling"], limit=20, batch_size=7)
    assert results["n_images"] == 20 and results["attrs"] == ["Smiling"]
    assert results["swap_accuracy"]["Smiling"] == {"0": 0.25, "1": 0.75, "mean": 0.5}
    # Nothing flips: the faces without a smile stay read as without, and the converse.
    assert results["flip_success"]["Smiling"] == {"to_1": 0.0, "to_0": 0.0}


class OpeningPainter(PaintingModel):
    """A PaintingModel of Smiling whose smiles open the mouth (row 2: +1) and whose neutral
    faces close it (-1)."""

    def decode(self, z, attrs):
        x = super().decode(z, attrs)
        x[:, :, 2, :] = torch.where(attrs[:, :1, None] > 0.5, 1.0, -1.0)
        return x


def test_a_judge_of_other_attributes_tells_what_else_the_flips_change():
    """Smiling flipped by a model that opens every mouth it smiles, read by a judge of Smiling
    and Mouth_Slightly_Open (row 2): every flip to 1 is read open and every flip to 0 closed,
    the real faces as often as their mouths are open (half the smiles, a quarter of the rest)."""
    labels = balanced_labels()[:, :1]  # Smiling alternates
    faces = painted_faces(labels)
    i = torch.arange(40)
    open_mouth = (i % 4 == 1) | (i % 8 == 0)  # half the smiles (odd i), a quarter of the rest
    faces[:, :, 2, :] = torch.where(open_mouth[:, None, None], 1.0, -1.0)
    judge = RowReader(["Smiling", "Mouth_Slightly_Open"], rows=[0, 2])
    results = evaluation.evaluate_dataset(OpeningPainter(["Smiling"]), judge,
                                          TensorFaces(faces, labels), batch_size=16)
    assert results["flip_success"]["Smiling"] == {"to_1": 1.0, "to_0": 1.0}
    assert results["side_effects"] == {"Smiling": {"Mouth_Slightly_Open": {
        "to_1": 1.0, "real_1": 0.5, "to_0": 0.0, "real_0": 0.25}}}
    table = evaluation.results_markdown(results, "opening")
    assert "| Smiling | Mouth_Slightly_Open | 100.0 % | 50.0 % | 0.0 % | 25.0 % |" in table
    plain = evaluation.evaluate_dataset(OpeningPainter(["Smiling"]), RowReader(["Smiling"], [0]),
                                        TensorFaces(faces, labels))
    assert plain["side_effects"] == {"Smiling": {}}
    assert "What else" not in evaluation.results_markdown(plain, "plain")


def test_evaluate_reads_a_celebahq_folder_and_writes_results(tmp_path):
    root = make_celebahq(tmp_path / "celebahq")
    model = PaintingModel(["Smiling", "Male"]).train()
    classifier = RowReader(["Smiling", "Male"], rows=[0, 1])
    results = evaluation.evaluate(model, classifier, root, cache_dir=tmp_path / "cache")
    assert model.training  # the caller's mode is restored
    assert results["split"] == "test" and results["n_images"] == 4  # 10 % of 40
    assert results["swap_accuracy_mean"] == 1.0
    assert 5 < results["psnr"] < 40 and 0 < results["ssim"] < 1  # two rows repainted
    assert evaluation.evaluate(model, classifier, root, split="val", limit=3,
                       cache_dir=tmp_path / "cache")["n_images"] == 3

    json_path, md_path = evaluation.write_results(results, tmp_path / "out", "painter")
    assert json.loads(json_path.read_text()) == results
    table = md_path.read_text()
    assert "| Smiling | 100.0 % | 100.0 % | 100.0 % |" in table and "PSNR" in table


def test_evaluate_runs_a_fader_model_with_a_trained_classifier_architecture():
    torch.manual_seed(0)
    model = models.build("paper", 32, ["Smiling", "Male"], init_fm=8, max_fm=32)
    classifier = models.AttributeClassifier(32, ["Male", "Smiling"], init_fm=8, hid_dim=16)
    labels = balanced_labels(10)
    faces = TensorFaces(torch.rand(10, 3, 32, 32) * 2 - 1, labels)
    results = evaluation.evaluate_dataset(model, classifier, faces, batch_size=4)
    assert results["n_images"] == 10 and results["attrs"] == ["Smiling", "Male"]
    assert math.isfinite(results["psnr"]) and -1 <= results["ssim"] <= 1
    for swap in results["swap_accuracy"].values():
        assert all(0 <= swap[k] <= 1 for k in ("0", "1", "mean"))
    assert model.training and classifier.training  # modes restored


def test_evaluate_rejects_incompatible_models_and_classifiers():
    labels = balanced_labels(8)
    faces = TensorFaces(painted_faces(labels), labels)
    model = PaintingModel(["Smiling", "Male"])
    with pytest.raises(ValueError, match=r"does not predict \['Male'\]"):
        evaluation.evaluate_dataset(model, RowReader(["Smiling"], [0]), faces)
    with pytest.raises(ValueError, match="32 px images"):
        evaluation.evaluate_dataset(model, RowReader(["Smiling", "Male"], [0, 1], img_size=32), faces)
    with pytest.raises(ValueError, match=r"unknown attrs \['Bald'\]"):
        evaluation.evaluate_dataset(model, RowReader(["Smiling", "Male"], [0, 1]), faces, attrs=["Bald"])
    with pytest.raises(ValueError, match="img_size 32 differs"):
        evaluation.evaluate(model, RowReader(["Smiling", "Male"], [0, 1]), img_size=32)


# ----------------------------------------------------------------------------- classifier


def test_classifier_shapes_follow_fader():
    classifier = models.AttributeClassifier(64, ["Smiling", "Male"])
    convs = [m for m in classifier.conv_layers if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256, 512, 512]  # 64 px -> 1x1
    assert sum(isinstance(m, nn.BatchNorm2d) for m in classifier.conv_layers) == 5
    assert classifier(torch.zeros(3, 3, 64, 64)).shape == (3, 2, 2)
    with pytest.raises(ValueError, match="power of two"):
        models.AttributeClassifier(48, ["Smiling"])
    with pytest.raises(ValueError, match="expected images"):
        classifier(torch.zeros(1, 3, 32, 32))


def test_classifier_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    classifier = models.AttributeClassifier(16, ["Smiling", "Male"], init_fm=8, hid_dim=16)
    classifier.train()(torch.randn(8, 3, 16, 16))  # move the BatchNorm running statistics
    classifier.eval()
    path = tmp_path / "sub" / "clf.pt"
    checkpoints.save_classifier(classifier, path, {"test_accuracy": {"Smiling": 0.9, "Male": 0.8}})
    assert [p.name for p in path.parent.iterdir()] == ["clf.pt"]  # no temporary file left

    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "exprfast-classifier" and payload["version"] == 1
    assert payload["config"] == {"img_size": 16, "attrs": ["Smiling", "Male"], "init_fm": 8,
                                 "max_fm": 512, "hid_dim": 16}
    loaded = checkpoints.load_classifier(path)
    assert not loaded.training and loaded.attrs == ["Smiling", "Male"]
    assert loaded.meta["test_accuracy"]["Male"] == 0.8
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(loaded(x), classifier(x))


def test_load_classifier_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoints.load_classifier(tmp_path / "missing.pt")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not an exprfast classifier"):
        checkpoints.load_classifier(text)
    other = tmp_path / "other.pt"
    torch.save({"format": "exprfast-model", "state_dict": {}}, other)
    with pytest.raises(ValueError, match="not an exprfast classifier"):
        checkpoints.load_classifier(other)
    future = tmp_path / "future.pt"
    torch.save({"format": checkpoints.CLASSIFIER_FORMAT, "version": 99}, future)
    with pytest.raises(ValueError, match="version 99"):
        checkpoints.load_classifier(future)


def test_train_classifier_argument_errors(tmp_path):
    root = make_celebahq(tmp_path / "celebahq")
    with pytest.raises(ValueError, match=r"unknown attrs \['Smiles'\]"):
        evaluation.train_classifier(root, 16, ["Smiles"], steps=1, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="exceeds the 32 training images"):
        evaluation.train_classifier(root, 16, ["Smiling"], steps=1, batch_size=64,
                            cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        evaluation.train_classifier(root, 16, ["Smiling"], steps=0)
    with pytest.raises(FileNotFoundError, match="has no CelebAMask-HQ"):
        evaluation.train_classifier(tmp_path, 16, ["Smiling"], steps=1)


def test_celebahq_paths_pick_the_smallest_folder_that_is_large_enough(tmp_path):
    for size in (16, 64):
        (tmp_path / f"images{size}").mkdir()
    (tmp_path / ATTR_FILE).write_text("0\nSmiling\n")
    assert celebahq_paths(tmp_path, 8)[0].name == "images16"
    assert celebahq_paths(tmp_path, 32)[0].name == "images64"
    assert celebahq_paths(tmp_path, 128)[0].name == "images64"


@pytest.mark.skipif(
    not REAL_CELEBAHQ.is_dir(), reason=f"real CelebA-HQ data not found at {REAL_CELEBAHQ}"
)
def test_classifier_learns_on_real_faces(tmp_path):
    out = tmp_path / "clf.pt"
    run = evaluation.train_classifier(REAL_CELEBAHQ, 32, ["Smiling", "Male"], steps=60, batch_size=32,
                              out_path=out, limit=300, cache_dir=tmp_path, progress=False)
    assert len(run.losses) == 60
    assert np.mean(run.losses[-10:]) < 0.5 * np.mean(run.losses[:10])  # measured ~0.25
    assert run.meta["n_train"] == 240 and run.meta["n_test"] == 30
    assert set(run.meta["test_accuracy"]) == {"Smiling", "Male"}
    loaded = checkpoints.load_classifier(out)
    assert loaded.meta == run.meta
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    assert torch.equal(loaded(x), run.classifier(x))
