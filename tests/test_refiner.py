"""The mouth refiner (``models.refiner``): its box and fade, its training stage on a frozen model
(what changes, exact resume, refused flags), model files that carry it, and edits that use it."""
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, make_celebahq
from exprfast import checkpoints, editing, evaluation, models, training
from exprfast.cli import main as cli_main
from exprfast.models import MouthCritic, MouthReader, MouthRefiner, refine_box, resize, upsample

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def faces64(tmp_path_factory):
    return make_celebahq(tmp_path_factory.mktemp("celebahq64"), n=40, size=64)


@pytest.fixture(scope="module")
def trained64(faces64, cache_dir, tmp_path_factory):
    """A tiny 64 px model file with an attribute reader (two steps of the recipe with the
    classifier loss)."""
    run = tmp_path_factory.mktemp("base")
    result = training.train(config(faces64, run, cache_dir, mouth_refiner=0, init_from=None,
                                   steps=2, lambda_clf=0.05))
    path = run / "model.pt"
    assert cli_main(["export", result["checkpoint"], "-o", str(path), "--float32"]) == 0
    return path


def config(data_root, run_dir, cache_dir, **changes):
    settings = dict(
        data_root=data_root, run_dir=run_dir, cache_dir=cache_dir, img_size=64, batch_size=4,
        attrs=("Smiling",), steps=3, model_overrides=TINY, log_every=1, val_every=2,
        sample_every=2, checkpoint_every=100, val_images=4, sample_images=2, progress=False,
        mouth_refiner=4,
    )
    return training.TrainConfig(**{**settings, **changes})


def trained_refiner(img_size=64, seed=0, n_attrs=1, highpass=0.0):
    """A refiner whose output conv is no longer zero, so that it changes faces."""
    torch.manual_seed(seed)
    refiner = MouthRefiner(img_size, width=4, n_attrs=n_attrs, highpass=highpass)
    torch.nn.init.normal_(refiner.out.weight, std=0.1)
    torch.nn.init.normal_(refiner.out.bias, std=0.1)
    return refiner.eval()


def test_refine_box_is_the_mouth_with_sides_that_three_downsamplings_divide():
    assert refine_box(128) == (68, 116, 32, 96)
    for size in (64, 128, 256, 512):
        top, bottom, left, right = refine_box(size)
        assert (bottom - top) % 8 == 0 and (right - left) % 8 == 0, size
    with pytest.raises(ValueError, match="img_size must be a power of two >= 64"):
        MouthRefiner(32)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        MouthRefiner(64, width=0)


def test_a_fresh_refiner_changes_nothing_and_a_trained_one_only_its_box():
    faces = torch.rand(2, 3, 64, 64) * 2 - 1
    values = torch.tensor([[0.0], [1.0]])
    assert torch.equal(MouthRefiner(64, width=4)(faces, values), faces)
    refiner = trained_refiner()
    with torch.no_grad():
        out = refiner(faces, values)
    top, bottom, left, right = refine_box(64)
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[top:bottom, left:right] = False
    assert torch.equal(out[:, :, outside], faces[:, :, outside])
    change = out - faces
    box = change[:, :, top:bottom, left:right]
    # the full change inside; faded towards the box's edge, never cut off by a seam
    middle = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    box_in = faces[:, :, top:bottom, left:right]
    redrawn = refiner.redraw(box_in, values) - box_in
    assert torch.allclose(box[middle], redrawn.detach()[middle], atol=1e-6)
    assert box[:, :, 0].abs().max() < box[middle].abs().max()
    with torch.no_grad():  # the values are an input: another value, another mouth
        assert not torch.equal(refiner(faces, 1 - values), out)
    with pytest.raises(ValueError, match=r"faces must have shape \(N, 3, 64, 64\)"):
        refiner(torch.zeros(1, 3, 128, 128), values[:1])
    with pytest.raises(ValueError, match=r"attrs must have shape \(2, 1\)"):
        refiner(faces, torch.zeros(2, 2))


def test_a_finer_refiner_draws_its_box_at_twice_the_size():
    """scale=2: the face comes back at twice its side, upsampled (bilinear) wherever the
    refiner does not draw, the change drawn at the finer size inside the box."""
    faces = torch.rand(2, 3, 64, 64) * 2 - 1
    values = torch.tensor([[0.0], [1.0]])
    up = upsample(faces, 2)
    assert up.shape == (2, 3, 128, 128)
    assert torch.equal(MouthRefiner(64, width=4, scale=2)(faces, values), up)
    torch.manual_seed(0)
    refiner = MouthRefiner(64, width=4, scale=2, highpass=1.0).eval()
    torch.nn.init.normal_(refiner.out.weight, std=0.1)
    assert refiner.config == {"img_size": 64, "width": 4, "n_attrs": 1, "highpass": 1.0,
                              "scale": 2} and refiner.out_size == 128
    assert len(refiner.highpass_taps) == len(models.refiner.gaussian_taps(2.0))  # σ in 64 px
    with torch.no_grad():
        out = refiner(faces, values)
        top, bottom, left, right = refine_box(64)
        box = faces[:, :, top:bottom, left:right]
        drawn = refiner.redraw(box, values) - upsample(box, 2)
    assert drawn.shape == (2, 3, 2 * (bottom - top), 2 * (right - left))
    top, bottom, left, right = refine_box(128)
    outside = torch.ones(128, 128, dtype=torch.bool)
    outside[top:bottom, left:right] = False
    assert torch.equal(out[:, :, outside], up[:, :, outside])
    middle = (slice(None), slice(None), slice(16, -16), slice(16, -16))
    change = (out - up)[:, :, top:bottom, left:right]
    assert change[middle].abs().max() > 0.01
    torch.testing.assert_close(change[middle], drawn[middle])
    for wrong in (3, 0, True, 2.0):
        with pytest.raises(ValueError, match="scale must be 1 or 2"):
            MouthRefiner(64, scale=wrong)


def test_a_high_passed_refiner_keeps_the_decoded_box_coarse_shape():
    """The change minus its blur: a flat change (the output conv's bias alone) is removed
    exactly, a pixel grid passes almost whole, and the same weights without the high-pass
    change the box's coarse shape far more."""
    box = torch.rand(2, 3, 48, 64) * 2 - 1
    values = torch.tensor([[0.0], [1.0]])
    flat = MouthRefiner(128, width=4, highpass=2.0)
    torch.nn.init.constant_(flat.out.bias, 0.3)
    assert torch.allclose(flat.redraw(box, values), box, atol=1e-6)
    grid = torch.zeros(3, 48, 64)
    grid[:, ::2] += 0.5
    grid[:, :, ::2] += 0.5
    gridded = MouthRefiner(128, width=4, highpass=2.0)  # its output conv draws the grid
    gridded.out.register_forward_hook(lambda module, inputs, output: output + grid)
    with torch.no_grad():
        passed = gridded.redraw(box, values) - box
    inside = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert ((passed - (grid - grid.mean()))[inside]).abs().max() < 0.01

    sharp, high_passed = trained_refiner(128), trained_refiner(128, highpass=2.0)
    blur = MouthReader(128).blur  # sigma 2 px, like the high-pass's
    with torch.no_grad():
        coarse = [(blur(r.redraw(box, values) - box))[inside].abs().mean()
                  for r in (sharp, high_passed)]
    assert coarse[1] < 0.2 * coarse[0]
    assert high_passed.config == {"img_size": 128, "width": 4, "n_attrs": 1, "highpass": 2.0}
    assert sharp.config == {"img_size": 128, "width": 4, "n_attrs": 1}  # as files before it
    for wrong in (-1.0, 17.0, True, "2"):
        with pytest.raises(ValueError, match=r"highpass must be a number of pixels in \[0, 16\]"):
            MouthRefiner(128, highpass=wrong)


def test_a_coupled_attribute_takes_the_first_value_in_use():
    """In use nothing sets a coupled attribute: ``forward`` gives it the model's first value,
    while ``redraw`` (training) takes every value, and each one reaches the U-Net."""
    refiner = MouthRefiner(64, width=4, n_attrs=2, coupled=["Mouth_Slightly_Open"])
    torch.nn.init.normal_(refiner.out.weight, std=0.1)
    assert refiner.n_values == 3
    assert refiner.config == {"img_size": 64, "width": 4, "n_attrs": 2,
                              "coupled": ["Mouth_Slightly_Open"]}
    seen = []
    refiner.stem.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    faces, attrs = torch.rand(2, 3, 64, 64), torch.tensor([[1.0, 0.0], [0.25, 1.0]])
    with torch.no_grad():
        refiner(faces, attrs)
    maps = seen[-1][:, 3:, 0, 0]  # the value maps, 2 a - 1
    assert torch.equal(maps, torch.tensor([[1.0, -1.0, 1.0], [-0.5, 1.0, -0.5]]))
    top, bottom, left, right = refine_box(64)
    box = faces[:, :, top:bottom, left:right]
    with torch.no_grad():
        open_, closed = (refiner.redraw(box, torch.tensor([[1.0, 0.0, v]] * 2)) for v in (1, 0))
    assert not torch.equal(open_, closed)
    with pytest.raises(ValueError, match=r"attrs must have shape \(2, 2\)"):
        refiner(faces, torch.zeros(2, 3))  # a coupled value is not given in use
    for wrong in ("Mouth_Slightly_Open", [""], [1], None):
        with pytest.raises(ValueError, match="coupled must be a list of attribute names"):
            MouthRefiner(64, coupled=wrong)


def test_the_critic_reads_a_box_beside_its_decoding():
    critic = MouthCritic(width=8, n_attrs=2)
    logits = critic(torch.zeros(2, 3, 24, 32), torch.zeros(2, 3, 24, 32), torch.zeros(2, 2))
    assert logits.shape == (2, 1, 3, 4)


def test_the_mouth_reader_reads_a_blurred_box():
    """Its blur keeps a box's shape (smooth content, its mean) and removes fine texture such as
    the grids a refiner drew to please a reader of the sharp box."""
    reader = MouthReader(128, width=8, n_attrs=2).eval()
    assert reader(torch.zeros(3, 3, 48, 64)).shape == (3, 2, 2)
    flat = torch.full((1, 3, 48, 64), 0.3)
    assert torch.allclose(reader.blur(flat), flat)
    rows = torch.linspace(-1, 1, 48)[:, None].expand(48, 64)
    shape = torch.stack([rows, -rows, torch.cos(math.pi / 2 * rows)])[None]  # over tens of px
    grid = torch.zeros(48, 64)
    grid[::2] += 0.5
    grid[:, ::2] += 0.5
    inside = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert (reader.blur(shape) - shape)[inside].abs().max() < 0.02
    blurred_grid = reader.blur(grid.expand(1, 3, 48, 64))[inside]
    assert (blurred_grid - grid.mean()).abs().max() < 0.01  # the grid is gone, its mean kept


def one_step_seen(train_config):
    """The training data of ``train_config``, a trainer of it after one step, and the inputs its
    refiner's U-Net and its critic saw in that step (in that order)."""
    train_set, _ = training.open_datasets(train_config)
    trainer = training.Trainer(train_config, train_set, torch.device("cpu"))
    seen = []
    trainer.refiner.stem.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    trainer.refiner_critic.layers[0].register_forward_pre_hook(
        lambda module, inputs: seen.append(inputs[0]))
    trainer.train_step()
    return train_set, trainer, seen


@pytest.mark.parametrize("lambda_refiner_clf", [0.0, 1.0])
def test_the_refiner_stage_trains_the_refiner_alone_and_resumes_exactly(faces64, cache_dir,
                                                                      trained64, tmp_path,
                                                                      lambda_refiner_clf):
    def config_(run, **changes):
        return config(faces64, tmp_path / run, cache_dir, init_from=trained64,
                      lambda_refiner_clf=lambda_refiner_clf, **changes)

    straight = training.train(config_("a", steps=4))
    keys = ["refiner_l1", "refiner_adv", "refiner_critic_loss", "decoded_l1", "val_mouth_l1",
            "val_mouth_l1_refined", "val_flip_acc"]
    edit_keys = ["refiner_clf_loss", "refiner_flip_acc", "mouth_reader_loss"]  # only when asked
    for key in keys + edit_keys * bool(lambda_refiner_clf):
        assert torch.isfinite(torch.tensor(straight[key])), key
    assert lambda_refiner_clf or not any(key in straight for key in edit_keys)
    a = checkpoints.load_checkpoint(straight["checkpoint"])
    start = checkpoints.load_model(trained64)
    for name, tensor in a["model"].items():  # the model is frozen, BatchNorm statistics too
        if not name.startswith("latent_discriminator."):
            assert torch.equal(tensor, start.model.state_dict()[name]), name
    for name, tensor in a["reader"].items():  # and its reader travels on, unchanged
        assert torch.equal(tensor, start.reader.state_dict()[name]), name
    assert not torch.equal(a["refiner"]["out.weight"], torch.zeros_like(a["refiner"]["out.weight"]))
    assert a["refiner_config"] == {"img_size": 64, "width": 4, "n_attrs": 1}

    training.train(config_("b", steps=2))
    resumed = training.train(config_("b", steps=4, resume="auto"))
    b = checkpoints.load_checkpoint(resumed["checkpoint"])
    for part in ("refiner", "refiner_critic", "mouth_reader")[:3 if lambda_refiner_clf else 2]:
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), (part, name)

    with pytest.raises(ValueError, match="the run's refiner has width 4, not --mouth-refiner 8"):
        training.train(config_("b", steps=5, mouth_refiner=8, resume="auto"))
    with pytest.raises(ValueError, match="the run's refiner has highpass 0, not "
                                         "--refiner-highpass 2.0"):
        training.train(config_("b", steps=5, refiner_highpass=2.0, resume="auto"))
    with pytest.raises(ValueError, match="the run was trained with --mouth-refiner"):
        training.train(config(faces64, tmp_path / "b", cache_dir, init_from=trained64,
                              steps=5, mouth_refiner=0, resume="auto"))
    wrong = 1.0 - lambda_refiner_clf  # the mouth reader is there or not, as in the run
    with pytest.raises(ValueError, match="the run was trained with"
                                         f"{'out' * bool(wrong)} --lambda-refiner-clf"):
        training.train(config(faces64, tmp_path / "b", cache_dir, init_from=trained64,
                              steps=5, lambda_refiner_clf=wrong, resume="auto"))


def test_refining_edits_changes_what_the_refiner_learns(faces64, cache_dir, trained64, tmp_path):
    """The same seed and batches: the edits' terms are the only difference."""
    runs = [training.train(config(faces64, tmp_path / str(weight), cache_dir, steps=2,
                                  init_from=trained64, lambda_refiner_clf=weight))
            for weight in (0.0, 10.0)]
    plain, edits = (checkpoints.load_checkpoint(run["checkpoint"])["refiner"] for run in runs)
    assert not torch.equal(plain["stem.weight"], edits["stem.weight"])


@pytest.mark.parametrize("changes, message", [
    ({"init_from": None}, "--init-from must name the trained model"),
    ({"lambda_clf": 0.05}, "--lambda-clf must be 0 with --mouth-refiner"),
    ({"lambda_patch": 0.01}, "--lambda-patch must be 0 with --mouth-refiner"),
    ({"mouth_refiner": -1}, "--mouth-refiner must be an integer >= 0"),
    ({"lambda_refiner_l1": -1.0}, "--lambda-refiner-l1 must be a number >= 0"),
    ({"lambda_refiner_clf": -1.0}, "--lambda-refiner-clf must be a number >= 0"),
    ({"lambda_refiner_clf": 1.0, "mouth_refiner": 0}, "--lambda-refiner-clf needs --mouth-refiner"),
    ({"img_size": 32}, "--img-size must be 64 or more with --mouth-refiner"),
    ({"refiner_highpass": -1.0}, r"--refiner-highpass must be a number of pixels in \[0, 8\]"),
    ({"refiner_highpass": 2.0, "mouth_refiner": 0}, "--refiner-highpass needs --mouth-refiner"),
    ({"refiner_coupled": ("",)}, "--refiner-coupled must be attribute names"),
    ({"refiner_coupled": ("Male",), "mouth_refiner": 0}, "--refiner-coupled needs --mouth-refiner"),
    ({"refiner_coupled": ("Male",), "attrs": None}, "--refiner-coupled needs --mouth-refiner and "
                                                    "--attrs"),
    ({"refiner_coupled": ("Smiling",)}, "names other attributes than --attrs, each once"),
    ({"refiner_coupled": ("Male", "Male")}, "names other attributes than --attrs, each once"),
    ({"refiner_coupled": ("Male",), "lambda_refiner_clf": 1.0},
     "--lambda-refiner-clf must be 0 with --refiner-coupled"),
    ({"refiner_cycle": 1.5}, r"--refiner-cycle must be a fraction of the batch in \[0, 1\]"),
    ({"refiner_cycle": float("nan")}, "--refiner-cycle must be a fraction"),
    ({"refiner_cycle": 0.5, "mouth_refiner": 0}, "--refiner-cycle needs --mouth-refiner"),
    ({"refiner_scale": 4}, "--refiner-scale must be 1 or 2"),
    ({"refiner_scale": 2, "mouth_refiner": 0}, "--refiner-scale needs --mouth-refiner"),
    ({"refiner_scale": 2, "lambda_refiner_clf": 1.0},
     "--refiner-scale must be 1 with --lambda-refiner-clf"),
])
def test_refiner_flags_are_checked(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, tmp_path / "run", tmp_path / "cache",
               **{"init_from": tmp_path / "model.pt", **changes})


def test_a_coupled_refiner_learns_from_the_data_labels_and_travels(faces64, cache_dir, trained64,
                                                                   tmp_path):
    """Trained on a one-attribute model (Smiling) with Male coupled: the data gives both labels,
    the model and its reader get Smiling's, the refiner and its critic both; the exported
    refiner couples Male to Smiling; a resume with other coupled attributes is refused."""
    coupled = config(faces64, tmp_path / "run", cache_dir, init_from=trained64,
                     refiner_coupled=("Male",), steps=2)
    train_set, trainer, seen = one_step_seen(coupled)
    assert tuple(train_set.attr_names) == ("Smiling", "Male")
    assert tuple(trainer.model.attrs) == ("Smiling",) and trainer.refiner.n_values == 2
    _, labels = trainer.batch(0)
    assert len(set(labels[:, 0].tolist())) == 2 and len(set(labels[:, 1].tolist())) == 2
    refiner_maps, critic_maps = seen[0][:, 3:, 0, 0], seen[1][:, 6:, 0, 0]
    assert torch.equal(refiner_maps, 2 * labels - 1)
    assert torch.equal(critic_maps, 2 * torch.cat([labels, labels]) - 1)  # real, redrawn

    result = training.train(coupled)
    assert {"val_mouth_l1_refined", "val_flip_acc"} <= set(result)
    exported = tmp_path / "coupled.pt"
    assert cli_main(["export", result["checkpoint"], "-o", str(exported), "--float32"]) == 0
    refiner = checkpoints.load_model(exported).refiner
    assert refiner.coupled == ("Male",) and refiner.n_attrs == 1
    with pytest.raises(ValueError, match=r"the run's refiner has coupled \('Male',\), not "
                                         r"--refiner-coupled \('Eyeglasses',\)"):
        training.train(config(faces64, tmp_path / "run", cache_dir, init_from=trained64,
                              refiner_coupled=("Eyeglasses",), steps=3, resume="auto"))


def test_a_cycled_fraction_of_the_batch_is_refined_from_its_round_trip(faces64, cache_dir,
                                                                       trained64, tmp_path,
                                                                       monkeypatch):
    """With --refiner-cycle 0.5 the batch's first half reaches the refiner (and its critic, as
    the decoding beside the box) decoded from its round trip through the flipped values, the
    rest from its reconstruction; the target stays the real face."""
    monkeypatch.setattr(training.trainer, "_REFINE_JITTER", (0.0, 0.0))  # the box, unmoved
    cycled = config(faces64, tmp_path / "run", cache_dir, init_from=trained64, refiner_cycle=0.5)
    _, trainer, seen = one_step_seen(cycled)
    images, attrs = trainer.batch(0)
    model = trainer.model.eval()
    with torch.no_grad():
        z = model.encode(images)
        reconstructed = model.decode(z, attrs)
        other = model.decode(z[:2], 1 - training.trainer.attribute_targets(attrs[:2]).float())
        round_trip = model.decode(model.encode(other), attrs[:2])
    top, bottom, left, right = refine_box(64)
    box = (slice(None), slice(None), slice(top, bottom), slice(left, right))
    expected = torch.cat([round_trip[box], reconstructed[2:][box]])
    assert not torch.allclose(round_trip[box], reconstructed[:2][box], atol=1e-3)
    torch.testing.assert_close(seen[0][:, :3], expected)  # the refiner's input
    torch.testing.assert_close(seen[1][:, :3], torch.cat([expected, expected]))  # real, redrawn
    torch.testing.assert_close(seen[1][:4, 3:6], images[box])  # the real boxes


def test_a_finer_refiner_learns_from_the_finer_faces_and_edits_come_out_at_its_size(
        faces64, cache_dir, trained64, tmp_path, monkeypatch):
    """--refiner-scale 2 on a 64 px model: the data comes at 128 px, the model sees it resized
    to 64, the refiner draws 128 px boxes and its critic gets the real 128 px boxes beside the
    upsampled decoded ones; the exported refiner makes edits at 128 px, evaluation judges them
    at 64; a resume at another scale is refused, and so is one whose critic does not fit (e.g.
    written by a version whose critic differed)."""
    root = make_celebahq(tmp_path / "faces", n=40, size=128)
    (root / "images64").symlink_to(faces64 / "images64")  # the same names, other pixels
    monkeypatch.setattr(training.trainer, "_REFINE_JITTER", (0.0, 0.0))  # the box, unmoved
    finer = config(root, tmp_path / "run", cache_dir, init_from=trained64, refiner_scale=2,
                   steps=2)
    train_set, trainer, seen = one_step_seen(finer)
    fine, attrs = trainer.batch(0)
    assert fine.shape[-1] == 128 and trainer.refiner.out_size == 128
    model = trainer.model.eval()
    with torch.no_grad():
        decoded = model.decode(model.encode(resize(fine, 64)), attrs)
    top, bottom, left, right = refine_box(64)
    box = decoded[:, :, top:bottom, left:right]
    torch.testing.assert_close(seen[0][:, :3], upsample(box, 2))  # the refiner's input
    shown = seen[1]  # the critic's: decoded box upsampled, then the candidate
    torch.testing.assert_close(shown[:, :3], torch.cat([upsample(box, 2)] * 2))
    top, bottom, left, right = refine_box(128)
    torch.testing.assert_close(shown[:4, 3:6], fine[:, :, top:bottom, left:right])

    result = training.train(finer)
    assert math.isfinite(result["val_mouth_l1_refined"])
    exported = tmp_path / "finer.pt"
    assert cli_main(["export", result["checkpoint"], "-o", str(exported), "--float32"]) == 0
    editor = editing.load(exported)
    assert editor.refiner.scale == 2 and editor.out_size == 128
    faces = torch.rand(2, 3, 64, 64) * 2 - 1
    z = editor.model.encode(faces)
    assert editor.decode(z, torch.tensor([[0.0], [1.0]])).shape == (2, 3, 128, 128)
    edited = editor.edit(faces, {"Smiling": 1.0}, current={"Smiling": 0.0}, paste="hybrid")
    assert edited.shape == faces.shape and torch.isfinite(edited).all()
    faces64_val = training.open_datasets(config(faces64, tmp_path / "unused", cache_dir,
                                                init_from=trained64))[1]
    scores = evaluation.evaluate_dataset(editor.model, editor.reader, faces64_val,
                                         refiner=editor.refiner)
    assert scores["refiner"] and math.isfinite(scores["psnr"])
    with pytest.raises(ValueError, match=r"the run's refiner has scale 2, not --refiner-scale 1"):
        training.train(config(root, tmp_path / "run", cache_dir, init_from=trained64, steps=3,
                              resume="auto"))
    checkpoint = torch.load(result["checkpoint"], weights_only=False)
    narrower = MouthCritic(width=16, n_attrs=trainer.refiner.n_values)
    checkpoint["refiner_critic"] = narrower.state_dict()
    (tmp_path / "old").mkdir()
    torch.save(checkpoint, tmp_path / "old" / Path(result["checkpoint"]).name)
    with pytest.raises(ValueError, match=r"checkpoint's refiner_critic does not fit .*start this "):
        training.train(config(root, tmp_path / "old", cache_dir, init_from=trained64,
                              refiner_scale=2, steps=3, resume="auto"))


def test_model_files_carry_the_refiner_and_edits_use_it(trained64, tmp_path):
    loaded = checkpoints.load_model(trained64)
    assert loaded.refiner is None
    refiner = trained_refiner()
    path = tmp_path / "refined.pt"
    checkpoints.save_model(loaded.model, path, loaded.meta, half=False, reader=loaded.reader,
                           refiner=refiner)
    again = checkpoints.load_model(path)
    for name, tensor in refiner.state_dict().items():
        assert torch.equal(tensor, again.refiner.state_dict()[name]), name

    plain, refined = editing.load(trained64), editing.load(path)
    faces = torch.rand(3, 3, 64, 64) * 2 - 1
    z = plain.model.encode(faces)
    values = torch.tensor([[0.0], [1.0], [0.5]])
    with torch.no_grad():
        expected = refiner(plain.model.decode(z, values), values)
    assert torch.allclose(refined.decode(z, values), expected, atol=1e-6)
    edited = refined.edit(faces, {"Smiling": 1.0}, current={"Smiling": 0.0})  # "replace"
    with torch.no_grad():
        smiles = refiner(plain.model.decode(z, torch.ones(3, 1)), torch.ones(3, 1))
    assert torch.allclose(edited, smiles, atol=1e-6)
    refined.refiner = None  # the decoder's own mouths again
    assert torch.equal(refined.edit(faces, {"Smiling": 1.0}, current={"Smiling": 0.0}),
                       plain.edit(faces, {"Smiling": 1.0}, current={"Smiling": 0.0}))

    other = tmp_path / "other.pt"
    checkpoints.save_model(loaded.model, other, refiner=MouthRefiner(128, width=4))
    with pytest.raises(ValueError, match="other.pt does not hold a valid model: the mouth "
                                         "refiner is for 128 px faces with 1 attr"):
        checkpoints.load_model(other)
    with pytest.raises(ValueError, match="the mouth refiner is for 128 px faces with 1 attr"):
        editing.Editor(loaded.model, refiner=MouthRefiner(128, width=4))


def test_exprfast_edit_uses_the_refiner_unless_told_not_to(tmp_path):
    pytest.importorskip("cv2", reason="exprfast.editing.faces needs opencv-python-headless<5")
    torch.manual_seed(0)
    model = models.build("paper", 64, ["Smiling"], **TINY).eval()
    plain, refined = tmp_path / "plain.pt", tmp_path / "refined.pt"
    checkpoints.save_model(model, plain, half=False)
    checkpoints.save_model(model, refined, half=False, refiner=trained_refiner())
    photo = editing.SAMPLE_PHOTOS[0]
    outputs = {}
    for name, model_path, extra in (("plain", plain, []), ("refined", refined, []),
                                    ("off", refined, ["--no-refiner"])):
        outputs[name] = tmp_path / f"{name}.png"
        assert cli_main(["edit", str(photo), "--set", "Smiling=1", "-o", str(outputs[name]),
                         "--model", str(model_path), "--paste", "replace", *extra]) == 0
    pixels = {name: torch.from_numpy(np.asarray(Image.open(path)).copy())
              for name, path in outputs.items()}
    assert torch.equal(pixels["off"], pixels["plain"])
    assert not torch.equal(pixels["refined"], pixels["plain"])


def test_evaluation_scores_the_refined_decodings():
    from test_evaluate import PaintingModel, RowReader, TensorFaces, balanced_labels, painted_faces

    labels = balanced_labels(8)
    faces = TensorFaces(painted_faces(labels, img_size=64), labels)
    model = PaintingModel(["Smiling", "Male"], img_size=64)  # paints rows 0 and 1: no mouth
    judge = RowReader(["Smiling", "Male"], rows=[0, 1], img_size=64)
    plain = evaluation.evaluate_dataset(model, judge, faces)
    assert math.isinf(plain["psnr"]) and plain["mouth_detail"] == 1.0 and not plain["refiner"]
    fresh = evaluation.evaluate_dataset(model, judge, faces,
                                        refiner=MouthRefiner(64, width=4, n_attrs=2))
    assert fresh["refiner"] and math.isinf(fresh["psnr"]) and fresh["mouth_detail"] == 1.0
    refined = evaluation.evaluate_dataset(model, judge, faces,
                                          refiner=trained_refiner(n_attrs=2))
    assert math.isfinite(refined["psnr"]) and refined["mouth_detail"] != 1.0
    assert refined["swap_accuracy_mean"] == plain["swap_accuracy_mean"] == 1.0


def test_exported_refiners_travel_and_a_new_stage_starts_from_them(faces64, cache_dir, trained64,
                                                                  tmp_path, capsys):
    result = training.train(config(faces64, tmp_path / "run", cache_dir, init_from=trained64,
                                   steps=2))
    exported = tmp_path / "refined.pt"
    assert cli_main(["export", result["checkpoint"], "-o", str(exported), "--float32"]) == 0
    loaded = checkpoints.load_model(exported)
    trained = checkpoints.load_checkpoint(result["checkpoint"])["refiner"]
    for name, tensor in loaded.refiner.state_dict().items():
        assert torch.equal(tensor, trained[name]), name

    high_passed = tmp_path / "high_passed.pt"  # the same weights, the change high-passed in use
    assert cli_main(["export", str(exported), "-o", str(high_passed), "--float32",
                     "--refiner-highpass", "2"]) == 0
    again = checkpoints.load_model(high_passed).refiner
    assert again.config == {**loaded.refiner.config, "highpass": 2.0}
    for name, tensor in again.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    for source, sigma, message in (
            (trained64, "2", "--refiner-highpass: .*base.*model.pt has no mouth refiner"),
            (exported, "-1", r"--refiner-highpass: highpass must be a number of pixels in \[0, 8")):
        assert cli_main(["export", str(source), "-o", str(tmp_path / "no.pt"),
                         "--refiner-highpass", sigma]) == 2  # a usage error
        assert re.search(message, capsys.readouterr().err)

    again = config(faces64, tmp_path / "again", cache_dir, init_from=exported)
    train_set, _ = training.open_datasets(again)
    trainer = training.Trainer(again, train_set, torch.device("cpu"))
    assert trainer.start_from(loaded, False, "x") == ["encoder", "decoder", "reader",
                                                      "mouth refiner"]
    assert loaded.reader is not None  # exported with the reader it started from
    high_passed = config(faces64, tmp_path / "hp", cache_dir, init_from=exported,
                         refiner_highpass=2.0)  # the same weights, trained into a high-pass
    trainer = training.Trainer(high_passed, train_set, torch.device("cpu"))
    assert "mouth refiner" in trainer.start_from(loaded, False, "x")
    assert trainer.refiner.config["highpass"] == 2.0
    assert torch.equal(trainer.refiner.out.weight, loaded.refiner.out.weight)
    wider = config(faces64, tmp_path / "wider", cache_dir, init_from=exported, mouth_refiner=8)
    trainer = training.Trainer(wider, train_set, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"x: its mouth refiner \(.*'width': 4, .*\) is not"):
        trainer.start_from(loaded, False, "x")


def test_the_refiner_stage_needs_a_model_file_with_a_reader(faces64, cache_dir, trained64,
                                                            tmp_path):
    loaded = checkpoints.load_model(trained64)
    readerless = tmp_path / "readerless.pt"
    checkpoints.save_model(loaded.model, readerless, half=False)
    with pytest.raises(ValueError, match="readerless.pt has no attribute reader; --mouth-refiner"):
        training.train(config(faces64, tmp_path / "run", cache_dir, init_from=readerless))
