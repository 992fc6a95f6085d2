"""The edit losses of issue 'smiles a person can see': the attribute reader's classification loss
on decode(z, flipped) (trained alongside or frozen), the patch critic, their checkpoints and
exact resume, the reader in model files and the Editor's readout with it."""
import numpy as np
import pytest
import torch

from conftest import TINY, tiny_model
from exprfast import checkpoints, editing, models, training

pytestmark = pytest.mark.usefixtures("one_thread")



def config(data_root, run_dir, cache_dir, **changes):
    settings = dict(
        data_root=data_root, run_dir=run_dir, cache_dir=cache_dir, img_size=32, batch_size=8,
        steps=4, model_overrides=TINY, log_every=1, val_every=2, sample_every=100,
        checkpoint_every=100, val_images=8, progress=False, lambda_lat=0.01,
        lambda_ramp_steps=2, lambda_clf=0.5, lambda_patch=0.1,
    )
    return training.TrainConfig(**{**settings, **changes})


def test_the_paper_recipe_has_no_edit_losses():
    defaults = training.TrainConfig()
    assert defaults.lambda_clf == 0 and defaults.lambda_patch == 0


def test_edit_losses_are_logged_validated_and_checkpointed(class_faces, cache_dir, tmp_path):
    result = training.train(config(class_faces, tmp_path / "run", cache_dir))
    for key in ("clf_loss", "flip_acc", "reader_loss", "reader_acc", "patch_loss",
                "patch_dis_loss", "val_flip_acc"):
        assert np.isfinite(result[key]), key
    checkpoint = checkpoints.load_checkpoint(result["checkpoint"])
    for key in ("reader", "reader_optimizer", "patch", "patch_optimizer", "reader_config"):
        assert key in checkpoint, key
    assert checkpoint["train_config"]["lambda_clf"] == 0.5


def test_resume_with_edit_losses_reproduces_the_uninterrupted_run(class_faces, cache_dir,
                                                                  tmp_path):
    straight = training.train(config(class_faces, tmp_path / "a", cache_dir, steps=6))
    training.train(config(class_faces, tmp_path / "b", cache_dir, steps=3))
    resumed = training.train(config(class_faces, tmp_path / "b", cache_dir, steps=6,
                                    resume="auto"))
    a = checkpoints.load_checkpoint(straight["checkpoint"])
    b = checkpoints.load_checkpoint(resumed["checkpoint"])
    for part in ("model", "reader", "patch"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), (part, name)


def test_frozen_reader_stops_training_after_clf_train_steps(class_faces, cache_dir, tmp_path):
    run = tmp_path / "frozen"
    training.train(config(class_faces, run, cache_dir, steps=2, clf_train_steps=2,
                          lambda_patch=0.0))
    before = checkpoints.load_checkpoint(checkpoints.list_checkpoints(run)[-1])["reader"]
    result = training.train(config(class_faces, run, cache_dir, steps=4, clf_train_steps=2,
                                   lambda_patch=0.0, resume="auto"))
    after = checkpoints.load_checkpoint(result["checkpoint"])
    assert "reader_loss" not in result and np.isfinite(result["clf_loss"])
    for name, tensor in before.items():
        assert torch.equal(tensor, after["reader"][name]), name
    assert not torch.equal(before["head.weight"], torch.zeros_like(before["head.weight"]))


def test_resume_refuses_other_edit_loss_flags(class_faces, cache_dir, tmp_path):
    run = tmp_path / "run"
    training.train(config(class_faces, run, cache_dir, steps=2))
    with pytest.raises(ValueError, match="the run was trained with --lambda-clf"):
        training.train(config(class_faces, run, cache_dir, steps=3, lambda_clf=0.0,
                              resume="auto"))


def test_resume_refuses_another_reader_luminance(class_faces, cache_dir, tmp_path):
    run = tmp_path / "run"
    training.train(config(class_faces, run, cache_dir, steps=2, reader_luminance=True))
    with pytest.raises(ValueError, match="without --reader-luminance|with --reader-luminance"):
        training.train(config(class_faces, run, cache_dir, steps=3, reader_luminance=False,
                              resume="auto"))


@pytest.mark.parametrize("name, value", [("lambda_clf", -1.0), ("lambda_patch", "x"),
                                         ("clf_train_steps", 0)])
def test_bad_edit_loss_flags_are_named(name, value):
    with pytest.raises(ValueError, match="--" + name.replace("_", "-")):
        training.TrainConfig(**{name: value})


# ----------------------------------------------------------------------------- networks


def test_reader_and_judge_are_different_architectures():
    reader = models.AttributeReader(64, ["Smiling"])
    judge = models.AttributeClassifier(64, ["Smiling"])
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    assert reader(x).shape == judge(x).shape == (3, 1, 2)
    # the reader stops at an 8x8 map (64 px: 3 convs), the judge goes down to 1x1 (6 convs)
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) for net in (reader, judge)]
    assert convs == [3, 6]
    # global average pooling and one linear layer against the judge's 1x1 map and two
    linears = [m for m in reader.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 and sum(isinstance(m, torch.nn.Linear) for m in judge.modules()) == 2
    probabilities = reader.probabilities(x)
    assert probabilities.shape == (3, 1) and ((0 <= probabilities) & (probabilities <= 1)).all()


def test_patch_discriminator_scores_patches():
    critic = models.PatchDiscriminator(64)
    assert critic(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 8, 8)
    assert models.least_squares_loss(torch.ones(4), real=True) == 0
    assert models.least_squares_loss(torch.zeros(4), real=False) == 0
    assert models.critic_loss(torch.ones(4), torch.zeros(4)) == 0
    assert models.critic_loss(torch.zeros(4), torch.ones(4)) == 1


# ----------------------------------------------------------------------------- model files


def test_luminance_reader_sees_no_colour():
    torch.manual_seed(0)
    reader = models.AttributeReader(32, ["Smiling"], luminance=True).eval()
    assert reader.conv_layers[0].in_channels == 1
    x = torch.rand(2, 3, 32, 32)
    # A per-pixel change of colour with no change of luma: orthogonal to the BT.601 weights.
    luma = torch.tensor(models.classifiers.LUMA_WEIGHTS)
    chroma = torch.tensor([1.0, 0.0, 0.0]) - luma * (luma[0] / luma.dot(luma))
    recoloured = x + 0.3 * torch.rand(2, 1, 32, 32) * chroma.view(1, 3, 1, 1)
    torch.testing.assert_close(reader(recoloured), reader(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(reader(x), reader(x.flip(-2)))  # it does see the image
    rebuilt = models.AttributeReader(**reader.config)
    rebuilt.load_state_dict(reader.state_dict())
    assert rebuilt.luminance and torch.equal(rebuilt.eval()(x), reader(x))


@pytest.mark.parametrize("luminance", [False, True])
def test_reader_features_are_what_its_head_reads(luminance):
    torch.manual_seed(0)
    reader = models.AttributeReader(32, ["Smiling", "Male"], luminance=luminance).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    features = reader.features(x)
    assert features.shape == (3, reader.head.in_features)
    torch.testing.assert_close(reader.head(features).view(3, 2, 2), reader(x))
    with pytest.raises(ValueError):
        reader.features(torch.rand(3, 3, 16, 16))


def test_model_file_carries_the_reader_and_the_editor_reads_with_it(tmp_path):
    model = tiny_model()
    torch.manual_seed(1)
    reader = models.AttributeReader(32, ["Smiling"]).eval()
    path = tmp_path / "model.pt"
    checkpoints.save_model(model, path, reader=reader, half=False)
    loaded = checkpoints.load_model(path)
    for name, tensor in reader.state_dict().items():
        assert torch.equal(tensor, loaded.reader.state_dict()[name]), name
    editor = editing.load(path)
    faces = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = (reader.probabilities(faces) + reader.probabilities(faces.flip(3))) / 2
    torch.testing.assert_close(editor.estimate(faces), expected)  # the face and its mirror
    # without a reader: the reconstruction sweep's grid values
    plain = editing.Editor(model)
    assert set(plain.estimate(faces).flatten().tolist()) <= set(editing.editor.ESTIMATE_GRID)


def test_export_keeps_the_reader_of_a_training_run(class_faces, cache_dir, tmp_path):
    from exprfast.cli import main

    result = training.train(config(class_faces, tmp_path / "run", cache_dir, steps=2))
    out = tmp_path / "model.pt"
    assert main(["export", result["checkpoint"], "-o", str(out)]) == 0
    loaded = checkpoints.load_model(out)
    assert loaded.reader is not None and loaded.reader.attrs == ["happy", "neutral"]
    assert next(loaded.reader.parameters()).dtype == torch.float32


def test_editor_refuses_a_reader_of_other_attributes():
    with pytest.raises(ValueError, match="the reader reads"):
        editing.Editor(tiny_model(), reader=models.AttributeReader(32, ["Male"]))


def test_patch_on_reader_trains_one_shared_critic_and_resumes_exactly(class_faces, cache_dir,
                                                                      tmp_path):
    shared = dict(patch_on_reader=True, steps=4)
    straight = training.train(config(class_faces, tmp_path / "a", cache_dir, **shared))
    for key in ("patch_loss", "patch_dis_loss", "reader_loss", "clf_loss"):
        assert np.isfinite(straight[key]), key
    a = checkpoints.load_checkpoint(straight["checkpoint"])
    assert "patch" not in a and a["reader_config"]["critic"]
    assert any(name.startswith("realness.") for name in a["reader"])
    training.train(config(class_faces, tmp_path / "b", cache_dir, **{**shared, "steps": 2}))
    resumed = training.train(config(class_faces, tmp_path / "b", cache_dir, **shared,
                                    resume="auto"))
    b = checkpoints.load_checkpoint(resumed["checkpoint"])
    for part in ("model", "reader"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), (part, name)
    with pytest.raises(ValueError, match="without --patch-on-reader|with --patch-on-reader"):
        training.train(config(class_faces, tmp_path / "b", cache_dir, steps=5,
                              patch_on_reader=False, resume="auto"))


@pytest.mark.parametrize("changes", [dict(lambda_clf=0.0), dict(lambda_patch=0.0),
                                     dict(clf_train_steps=10)])
def test_patch_on_reader_needs_a_training_reader_and_a_patch_weight(changes):
    with pytest.raises(ValueError, match="--patch-on-reader"):
        training.TrainConfig(**{"lambda_clf": 0.05, "lambda_patch": 0.05,
                                "patch_on_reader": True, **changes})


def test_patch_region_shows_the_critic_only_that_region(class_faces, cache_dir, tmp_path):
    run_config = config(class_faces, tmp_path / "run", cache_dir, patch_region="mouth")
    train_set, _ = training.open_datasets(run_config)
    trainer = training.Trainer(run_config, train_set, torch.device("cpu"))
    seen = []
    trainer.patch.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    images, _ = trainer.batch(1)  # the autoencoder's batch of step 0
    metrics = trainer.train_step()
    assert np.isfinite(metrics["patch_loss"].item()) and np.isfinite(metrics["patch_dis_loss"].item())
    # 32 px faces: rows 18..27 and columns 8..23 (data.FACE_REGIONS["mouth"]), real and edited
    assert len(seen) == 3 and all(x.shape[-2:] == (10, 16) for x in seen)
    assert any(torch.equal(x, images[..., 18:28, 8:24]) for x in seen)
    result = training.train(run_config)
    saved = checkpoints.load_checkpoint(result["checkpoint"])["train_config"]
    assert saved["patch_region"] == "mouth"


def test_r1_adds_the_critics_squared_gradient_at_the_real_faces(class_faces, cache_dir, tmp_path):
    run_config = config(class_faces, tmp_path / "run", cache_dir, patch_region="mouth",
                        r1_gamma=2.0)
    train_set, _ = training.open_datasets(run_config)
    trainer = training.Trainer(run_config, train_set, torch.device("cpu"))
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    flips = torch.rand(4, 3, 32, 32) * 2 - 1
    real = images[..., 18:28, 8:24].clone().requires_grad_(True)
    real_logits = trainer.patch(real)
    gradient, = torch.autograd.grad(real_logits.sum(), real)
    expected = models.critic_loss(real_logits, trainer.patch(flips[..., 18:28, 8:24])) \
        + 2.0 / 2 * gradient.pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(trainer._patch_update(images, flips), expected.detach())
    result = training.train(run_config)
    assert np.isfinite(result["patch_dis_loss"])
    assert checkpoints.load_checkpoint(result["checkpoint"])["train_config"]["r1_gamma"] == 2.0


@pytest.mark.parametrize("changes", [dict(patch_region="nose"), dict(lambda_patch=0.0),
                                     dict(patch_on_reader=True)])
def test_patch_region_needs_a_region_and_the_separate_critic(changes):
    with pytest.raises(ValueError, match="--patch-region"):
        training.TrainConfig(**{"lambda_clf": 0.05, "lambda_patch": 0.05,
                                "patch_region": "mouth", **changes})


@pytest.mark.parametrize("changes", [dict(r1_gamma=-1.0), dict(r1_gamma=float("nan")),
                                     dict(lambda_patch=0.0), dict(patch_on_reader=True)])
def test_r1_needs_a_number_and_the_separate_critic(changes):
    with pytest.raises(ValueError, match="--r1-gamma"):
        training.TrainConfig(**{"lambda_clf": 0.05, "lambda_patch": 0.05, "r1_gamma": 1.0,
                                **changes})


def test_critic_reader_scores_realness_per_patch_and_rebuilds_from_its_config():
    reader = models.AttributeReader(64, ["Smiling"], critic=True).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    logits, realness = reader(x, with_realness=True)
    assert logits.shape == (2, 1, 2) and realness.shape == (2, 1, 8, 8)
    assert torch.equal(reader(x), logits)
    rebuilt = models.AttributeReader(**reader.config)
    rebuilt.load_state_dict(reader.state_dict())
    with pytest.raises(ValueError, match="critic=True"):
        models.AttributeReader(64, ["Smiling"])(x, with_realness=True)


@pytest.mark.parametrize("size,window", [(64, 3), (128, 7)])
def test_reconstruction_losses(size, window):
    from pytorch_msssim import ms_ssim

    from exprfast.training.trainer import reconstruction_loss
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    x_hat = (images + 0.2 * torch.randn(2, 3, size, size, generator=g)).clamp(-1, 1)
    torch.testing.assert_close(reconstruction_loss(x_hat, images),
                               (x_hat - images).pow(2).mean())
    l1 = (x_hat - images).abs().mean()
    torch.testing.assert_close(reconstruction_loss(x_hat, images, "l1"), l1)
    expected = 0.84 * (1 - ms_ssim((x_hat + 1) / 2, (images + 1) / 2, data_range=1.0,
                                   win_size=window)) + 0.16 * l1
    with torch.autocast("cpu", torch.bfloat16):  # as in a bf16 training step: float32 inside
        torch.testing.assert_close(reconstruction_loss(x_hat, images, "msssim-l1"), expected)
    assert reconstruction_loss(images, images, "msssim-l1").abs() < 1e-6


def test_rec_loss_is_checkpointed(class_faces, cache_dir, tmp_path):
    result = training.train(config(class_faces, tmp_path / "run", cache_dir, rec_loss="l1"))
    assert np.isfinite(result["recon_loss"])
    assert checkpoints.load_checkpoint(result["checkpoint"])["train_config"]["rec_loss"] == "l1"


@pytest.mark.parametrize("changes", [dict(rec_loss="l2"), dict(rec_loss="msssim-l1", img_size=32)])
def test_rec_loss_needs_a_known_loss_and_room_for_ms_ssim(changes):
    with pytest.raises(ValueError, match="--rec-loss"):
        training.TrainConfig(**changes)
