"""exprfast.training: a short run on real faces, exact resume, checkpoint contents, 2-process DDP
(gloo), SIGINT, the data order, and clear errors for bad data and flags. Tiny models at 32 px."""
import argparse
import ctypes
import ctypes.util
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REAL_CELEBAHQ, REPO, TINY
from exprfast import checkpoints, files, training
from exprfast.cli import main as cli_main
from exprfast.files import WriteError
from exprfast.training import allocator, trainer
from exprfast.training import run as run_module
from exprfast.training.stream import BatchStream
from exprfast.models import build

SCRIPT = REPO / "scripts" / "train_fast.py"
TINY_FLAGS = ["--init-fm", "8", "--max-fm", "32", "--dis-hidden", "64"]
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(data_root, run_dir, cache_dir, **changes):
    settings = dict(
        data_root=data_root, run_dir=run_dir, cache_dir=cache_dir, img_size=32, batch_size=8,
        steps=4, model_overrides=TINY, log_every=1, val_every=2, sample_every=2,
        checkpoint_every=100, val_images=8, sample_images=4, progress=False,
    )
    return training.TrainConfig(**{**settings, **changes})


def warm_cache(data_root, cache_dir):
    """Build the image cache now, so that its progress bar stays out of a test's stderr."""
    training.open_datasets(tiny_config(data_root, "unused", cache_dir))


def records(run_dir, key):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if key in r]


def tiny_flags(data_root, run_dir, cache_dir):
    return [
        "--data-root", str(data_root), "--run-dir", str(run_dir), "--cache-dir", str(cache_dir),
        "--img-size", "32", "--batch-size", "8", "--log-every", "1", "--val-images", "4",
        "--sample-images", "2", "--no-progress", *TINY_FLAGS,
    ]


# ----------------------------------------------------------------------------- training runs


@pytest.mark.skipif(not REAL_CELEBAHQ.is_dir(), reason=f"no CelebA-HQ faces at {REAL_CELEBAHQ}")
def test_real_faces_reconstruction_loss_falls(tmp_path):
    config = tiny_config(
        REAL_CELEBAHQ, tmp_path / "run", None, limit=300, batch_size=16, steps=40, log_every=10,
        val_every=40, sample_every=40, val_images=30,
    )
    result = training.train(config)
    losses = [r["recon_loss"] for r in records(config.run_dir, "recon_loss")]
    assert len(losses) == 4 and losses[-1] < 0.75 * losses[0], losses
    assert result["step"] == 40 and not result["interrupted"]
    assert 0 < result["val_recon_mse"] < 1 and 0 <= result["val_dis_acc"] <= 1
    assert result["samples_per_s"] > 0
    # 4 faces x (original | reconstruction | Smiling flipped), 32 px tiles with 2 px gaps.
    with Image.open(tmp_path / "run" / "samples" / "step-0000040.png") as grid:
        assert grid.size == (3 * 34 + 2, 4 * 34 + 2)
    assert json.loads((tmp_path / "run" / "result.json").read_text()) == result


def test_resume_reproduces_the_uninterrupted_run(class_faces, cache_dir, tmp_path):
    # 6 steps cross an epoch boundary (5 batches of 8 per epoch, 2 batches per step);
    # mid-run checkpoints, validation and samples must not disturb anything.
    straight = training.train(tiny_config(class_faces, tmp_path / "a", cache_dir, steps=6,
                                    checkpoint_every=2))
    training.train(tiny_config(class_faces, tmp_path / "b", cache_dir, steps=3))
    resumed = training.train(tiny_config(class_faces, tmp_path / "b", cache_dir, steps=6, resume="auto"))
    assert straight["step"] == resumed["step"] == 6

    a = checkpoints.load_checkpoint(straight["checkpoint"])
    b = checkpoints.load_checkpoint(resumed["checkpoint"])
    assert a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for key in ("ae_optimizer", "dis_optimizer"):
        for p, state in a[key]["state"].items():
            for name, value in state.items():
                assert torch.equal(value, b[key]["state"][p][name]), (key, p, name)
    same = ("recon_loss", "adv_loss", "dis_loss", "dis_acc", "lambda")
    logged = [[{k: r[k] for k in ("step", *same)} for r in records(run, "recon_loss")]
              for run in (tmp_path / "a", tmp_path / "b")]
    assert logged[0] == logged[1] and len(logged[0]) == 6  # the resumed log replaces 4..6
    # keep_checkpoints=2: the step-2 checkpoint of run a was removed.
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path / "a")] == [
        "checkpoint-0000004.pt", "checkpoint-0000006.pt"]


def test_reuse_latent_encodes_once_per_step_and_resumes_exactly(class_faces, cache_dir,
                                                                tmp_path):
    config = tiny_config(class_faces, tmp_path / "probe", cache_dir, reuse_latent=True)
    train_set, _ = training.open_datasets(config)
    probe = training.Trainer(config, train_set, torch.device("cpu"))
    encodes, batches, read = [], [], probe.batch
    probe.model.encoder.register_forward_hook(lambda *_: encodes.append(1))
    probe.batch = lambda number: (batches.append(number), read(number))[1]
    before = [p.clone() for p in probe.model.latent_discriminator.parameters()]
    metrics = probe.train_step()
    # one encoder forward (the autoencoder's) and one batch (the autoencoder's) per step
    assert len(encodes) == 1 and batches == [1] and np.isfinite(metrics["dis_loss"].item())
    after = list(probe.model.latent_discriminator.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(before, after))  # it did learn

    straight = training.train(tiny_config(class_faces, tmp_path / "a", cache_dir, steps=4,
                                          reuse_latent=True))
    training.train(tiny_config(class_faces, tmp_path / "b", cache_dir, steps=2,
                               reuse_latent=True))
    resumed = training.train(tiny_config(class_faces, tmp_path / "b", cache_dir, steps=4,
                                         reuse_latent=True, resume="auto"))
    a, b = (checkpoints.load_checkpoint(r["checkpoint"]) for r in (straight, resumed))
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_lat_dis_reset_every_starts_a_fresh_discriminator_and_resumes_exactly(class_faces,
                                                                              cache_dir, tmp_path):
    config = tiny_config(class_faces, tmp_path / "probe", cache_dir, lat_dis_reset_every=2)
    train_set, _ = training.open_datasets(config)
    probe = training.Trainer(config, train_set, torch.device("cpu"))
    discriminator = probe.model.latent_discriminator
    probe.train_step()
    probe.train_step()
    trained = {k: v.clone() for k, v in discriminator.state_dict().items()}
    weights = [p for p in discriminator.parameters()]
    probe._reset_discriminator()
    # new weights in the same tensors (the optimizer's views stay valid), new Adam moments,
    # the BatchNorm statistics back to their start
    assert [p for p in discriminator.parameters()] == weights
    assert not probe.dis_optimizer.state
    fresh = discriminator.state_dict()
    assert all(not torch.equal(fresh[k], trained[k]) for k in trained
               if k.endswith("weight") and fresh[k].dim() > 1)
    assert all(torch.equal(v, torch.zeros_like(v)) for k, v in fresh.items()
               if k.endswith("running_mean"))
    with torch.no_grad():
        for p in discriminator.parameters():
            p.add_(1)
    probe._reset_discriminator()  # the same step: the same weights
    assert all(torch.equal(discriminator.state_dict()[k], v) for k, v in fresh.items())

    straight = training.train(tiny_config(class_faces, tmp_path / "a", cache_dir, steps=5,
                                          lat_dis_reset_every=2))
    plain = training.train(tiny_config(class_faces, tmp_path / "plain", cache_dir, steps=5))
    training.train(tiny_config(class_faces, tmp_path / "b", cache_dir, steps=2,
                               lat_dis_reset_every=2))
    resumed = training.train(tiny_config(class_faces, tmp_path / "b", cache_dir, steps=5,
                                         lat_dis_reset_every=2, resume="auto"))
    a, b, c = (checkpoints.load_checkpoint(r["checkpoint"]) for r in (straight, resumed, plain))
    assert a["train_config"]["lat_dis_reset_every"] == 2
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert any(not torch.equal(t, c["model"][name]) for name, t in a["model"].items()
               if name.startswith("latent_discriminator."))
    with pytest.raises(ValueError, match="--lat-dis-reset-every"):
        training.TrainConfig(lat_dis_reset_every=0)


def test_lat_dis_steps_trains_the_discriminator_on_that_many_fresh_batches(class_faces, cache_dir,
                                                                           tmp_path):
    config = tiny_config(class_faces, tmp_path / "probe", cache_dir, lat_dis_steps=3)
    train_set, _ = training.open_datasets(config)
    probe = training.Trainer(config, train_set, torch.device("cpu"))
    batches, read = [], probe.batch
    probe.batch = lambda number: (batches.append(number), read(number))[1]
    probe.train_step()
    probe.train_step()
    # step k: batches 4k..4k+2 encoded for three discriminator updates, 4k+3 for the autoencoder
    assert batches == [0, 1, 2, 3, 4, 5, 6, 7]
    assert probe.dis_optimizer.state_dict()["state"][0]["step"].item() == 6
    assert probe.ae_optimizer.state_dict()["state"][0]["step"].item() == 2

    straight = training.train(tiny_config(class_faces, tmp_path / "a", cache_dir, steps=4,
                                          lat_dis_steps=2))
    training.train(tiny_config(class_faces, tmp_path / "b", cache_dir, steps=2, lat_dis_steps=2))
    resumed = training.train(tiny_config(class_faces, tmp_path / "b", cache_dir, steps=4,
                                         lat_dis_steps=2, resume="auto"))
    a, b = (checkpoints.load_checkpoint(r["checkpoint"]) for r in (straight, resumed))
    assert a["train_config"]["lat_dis_steps"] == b["train_config"]["lat_dis_steps"] == 2
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_init_from_starts_a_new_run_from_a_model_files_weights(class_faces, cache_dir,
                                                               tmp_path):
    first = training.train(tiny_config(class_faces, tmp_path / "first", cache_dir, steps=2,
                                       lambda_clf=0.05))
    exported = tmp_path / "model.pt"  # float16, no latent discriminator: what export writes
    assert cli_main(["export", first["checkpoint"], "-o", str(exported)]) == 0
    assert checkpoints.holds_discriminator(first["checkpoint"])
    assert not checkpoints.holds_discriminator(exported)

    config = tiny_config(class_faces, tmp_path / "tune", cache_dir, steps=1, lambda_clf=0.05,
                         init_from=exported)
    train_set, _ = training.open_datasets(config)
    tuner = training.Trainer(config, train_set, torch.device("cpu"))
    fresh = {k: v.clone() for k, v in tuner.model.state_dict().items()}
    start = checkpoints.load_model(exported)
    assert tuner.start_from(start, False, "--init-from x") == ["encoder", "decoder", "reader"]
    given = start.model.state_dict()
    for name, tensor in tuner.model.state_dict().items():
        kept = name.startswith("latent_discriminator.")  # the file has none: a fresh one
        assert torch.equal(tensor, fresh[name] if kept else given[name]), name
    for name, tensor in tuner.reader.state_dict().items():
        assert torch.equal(tensor, start.reader.state_dict()[name]), name
    with_dis = checkpoints.load_model(first["checkpoint"])
    assert tuner.start_from(with_dis, True, "x")[:3] == ["encoder", "decoder",
                                                         "latent discriminator"]
    for name, tensor in tuner.model.state_dict().items():
        assert torch.equal(tensor, with_dis.model.state_dict()[name]), name

    # through train(): a new run from step 0 that records where it started, then resumes
    # from its own checkpoints
    result = training.train(config)
    assert result["step"] == 1
    saved = checkpoints.load_checkpoint(result["checkpoint"])
    assert saved["train_config"]["init_from"] == str(exported)
    assert saved["ae_optimizer"]["state"][0]["step"].item() == 1
    resumed = training.train(tiny_config(class_faces, tmp_path / "tune", cache_dir, steps=2,
                                         lambda_clf=0.05, resume="auto"))
    assert resumed["step"] == 2


@pytest.mark.parametrize("changes, message", [
    ({"img_size": 64}, r"--init-from .*model\.pt: these flags build another model .*--img-size 64"),
    ({"init_from": "nowhere.pt"},
     r"--init-from nowhere\.pt: model file nowhere\.pt does not exist"),
])
def test_init_from_refuses_a_file_that_does_not_fit_before_reading_data(tmp_path, changes,
                                                                        message):
    path = tmp_path / "model.pt"
    checkpoints.save_model(build("paper", 32, ["Smiling"], **TINY), path)
    config = tiny_config(tmp_path / "no-data", tmp_path / "run", tmp_path / "cache",
                         attrs=("Smiling",), **{"init_from": path, **changes})
    with pytest.raises(ValueError, match=message):
        training.train(config)
    assert not (tmp_path / "cache").exists()


def test_checkpoint_holds_plain_data_and_rebuilds_the_model(class_faces, cache_dir, tmp_path):
    result = training.train(tiny_config(class_faces, tmp_path / "run", cache_dir, steps=2))
    checkpoint = torch.load(result["checkpoint"], weights_only=True)
    assert checkpoint["format"] == checkpoints.TRAIN_FORMAT and checkpoint["step"] == 2
    assert checkpoint["model_config"]["attrs"] == ("happy", "neutral")
    assert checkpoint["data"] == {"seed": 0, "batch_size": 8, "dataset_size": 40,
                                  "next_batch": 4}
    assert len(checkpoint["rng"]) == 1 and set(checkpoint["rng"][0]) == {
        "torch", "cuda", "numpy", "python"}
    model = checkpoints.model_from_checkpoint(result["checkpoint"])
    assert not model.training and model.preset == "paper"
    rebuilt = build(**checkpoint["model_config"])
    rebuilt.load_state_dict(checkpoint["model"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    attrs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.equal(model(x, attrs)[1], rebuilt.eval()(x, attrs)[1])


@pytest.mark.parametrize("preset, precision, channels_last", [
    ("fader", "bf16", True),
    ("paper-eager", "fp32", True),
    ("paper", "bf16", False),
])
def test_presets_precisions_and_memory_formats_train(class_faces, cache_dir, tmp_path, preset,
                                                     precision, channels_last):
    result = training.train(tiny_config(class_faces, tmp_path / "run", cache_dir, steps=2, preset=preset,
                                  precision=precision, channels_last=channels_last))
    assert result["step"] == 2 and np.isfinite(result["recon_loss"])
    assert np.isfinite(result["val_recon_mse"])


# the plain recipe, and a mouth critic with R1 (a double backward through the DDP critic)
@pytest.mark.parametrize("extra", [[], ["--lambda-clf", "0.05", "--lambda-patch", "0.05",
                                        "--patch-region", "mouth", "--r1-gamma", "1"]],
                         ids=["plain", "r1"])
def test_two_process_ddp_over_gloo(class_faces, cache_dir, tmp_path, extra):
    run_dir = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(SCRIPT), *tiny_flags(class_faces, run_dir, cache_dir), "--steps", "3", *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180,
                          env=ONE_THREAD_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["step"] == 3 and result["ranks_agree"] is True
    checkpoint = checkpoints.load_checkpoint(result["checkpoint"])
    assert checkpoint["step"] == 3 and len(checkpoint["rng"]) == 2
    # Each rank drew different dropout masks: their torch RNG streams differ.
    assert not torch.equal(checkpoint["rng"][0]["torch"], checkpoint["rng"][1]["torch"])


def test_sigint_saves_a_checkpoint_that_resumes(class_faces, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, str(SCRIPT), *tiny_flags(class_faces, run_dir, cache_dir),
               "--steps", "100000", "--checkpoint-every", "100000"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=ONE_THREAD_ENV)
    try:
        _wait_for(lambda: len(_lines(run_dir / "metrics.jsonl")) >= 3, process)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    assert "interrupted at step" in stderr
    result = json.loads(stdout[stdout.index("{"):])
    assert result["interrupted"] is True and 3 <= result["step"] < 100000
    step = result["step"]
    assert [p.name for p in checkpoints.list_checkpoints(run_dir)] == [f"checkpoint-{step:07d}.pt"]

    resumed = training.train(tiny_config(class_faces, run_dir, cache_dir, steps=step + 2, resume="auto",
                                   val_images=4, sample_images=2))
    assert resumed["step"] == step + 2 and not resumed["interrupted"]


def _lines(path):
    return path.read_text().splitlines() if path.is_file() else []


def _wait_for(condition, process, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"training did not start: {process.communicate()[1][-3000:]}")
        time.sleep(0.05)


# ----------------------------------------------------------------------------- data order, lambda


def test_batch_stream_is_a_pure_function_of_seed_and_batch(class_faces, cache_dir):
    dataset = training.open_datasets(tiny_config(class_faces, "unused", cache_dir))[0]
    stream = BatchStream(dataset, batch_size=8, seed=3)
    epoch = [stream.batch(b) for b in range(5)]
    labels = torch.cat([attrs for _, attrs in epoch])
    assert labels.sum(0).tolist() == dataset.labels.sum(0).tolist()  # one epoch: every image
    again = BatchStream(dataset, batch_size=8, seed=3).batch(4)
    assert torch.equal(again[0], epoch[4][0])
    assert not torch.equal(stream.batch(5)[0], epoch[0][0])  # a new epoch, a new order
    assert not torch.equal(BatchStream(dataset, 8, seed=4).batch(0)[0], epoch[0][0])
    # Two ranks split each batch: together they hold its samples (up to the flips).
    shards = [BatchStream(dataset, 8, seed=3, rank=r, world_size=2).batch(1) for r in (0, 1)]
    assert all(len(images) == 4 for images, _ in shards)
    assert sorted(torch.cat([a for _, a in shards]).tolist()) == sorted(epoch[1][1].tolist())


def test_lambda_ramps_linearly_then_stays():
    assert trainer.lambda_at(0, 1e-2, 1000) == 0
    assert trainer.lambda_at(500, 1e-2, 1000) == pytest.approx(5e-3)
    assert trainer.lambda_at(5000, 1e-2, 1000) == 1e-2
    assert trainer.lambda_at(0, 1e-2, 0) == 1e-2


def test_adversarial_loss_targets_the_flipped_attributes():
    logits = torch.tensor([[-5.0, 5.0, 5.0, -5.0]])  # attribute 0 -> class 1, attribute 1 -> 0
    attrs = torch.tensor([[0.9, 0.2]])
    targets = trainer.attribute_targets(attrs)
    assert targets.tolist() == [[1, 0]]
    assert trainer.discriminator_loss(logits, targets) < 1e-3  # the discriminator is right
    assert trainer.discriminator_loss(logits, 1 - targets) > 9  # summed over the 2 attributes
    assert trainer.discriminator_accuracy(logits, targets) == 1


# ----------------------------------------------------------------------------- errors


def test_bad_data_root_names_the_flag(tmp_path, class_faces, cache_dir):
    with pytest.raises(ValueError, match="--data-root .*missing is not an existing folder"):
        training.train(tiny_config(tmp_path / "missing", tmp_path / "run", cache_dir))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="--data-root .*neither"):
        training.train(tiny_config(tmp_path / "empty", tmp_path / "run", cache_dir))
    with pytest.raises(ValueError, match="--batch-size 64 exceeds the 40 training images"):
        training.train(tiny_config(class_faces, tmp_path / "run", cache_dir, batch_size=64))
    with pytest.raises(ValueError, match="--resume"):
        training.train(tiny_config(class_faces, tmp_path / "run", cache_dir, resume=tmp_path / "no.pt"))
    with pytest.raises(ValueError, match="--precision fp16 needs a CUDA device"):
        training.train(tiny_config(class_faces, tmp_path / "run", cache_dir, precision="fp16",
                             device="cpu"))


def _parser():
    parser = argparse.ArgumentParser(prog="train")
    training.add_arguments(parser)
    return parser


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--img-size", "48"], "--img-size must be a power of two >= 32, got 48"),
    (["--lambda-lat", "-1"], "--lambda-lat must be a number >= 0, got -1.0"),
    (["--lat-dis-steps", "0"], "--lat-dis-steps must be a positive integer, got 0"),
    (["--lat-dis-steps", "2", "--reuse-latent"], "--lat-dis-steps must be 1 with --reuse-latent"),
    (["--betas", "0.5", "1.5"], r"--betas must be two numbers in \[0, 1\)"),
    (["--init-fm", "0"], "bad model flags .*init_fm must be a positive int"),
    (["--attrs", "Smiling", "Smiling"], "bad model flags .*attrs must not repeat"),
])
def test_bad_flag_values_name_the_flag(flags, message, capsys):
    with pytest.raises(ValueError, match=message):
        training.config_from_args(_parser().parse_args(flags))
    assert cli_main(["train", *flags]) == 2
    assert "exprfast train: error: " in capsys.readouterr().err


@pytest.mark.parametrize("flags, flag", [
    (["--precision", "fp8"], "--precision"),
    (["--preset", "unet"], "--preset"),
    (["--steps", "many"], "--steps"),
])
def test_unparsable_flags_exit_naming_the_flag(flags, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(flags)
    assert exit_info.value.code == 2 and flag in capsys.readouterr().err


def test_every_config_field_is_a_flag_with_its_default():
    config = training.config_from_args(_parser().parse_args([]))
    assert config == training.TrainConfig()
    args = _parser().parse_args(["--init-fm", "8", "--attrs", "Smiling", "Male",
                                 "--no-flip", "--betas", "0.9", "0.99"])
    config = training.config_from_args(args)
    assert config.model_overrides == {"init_fm": 8} and config.attrs == ("Smiling", "Male")
    assert config.flip is False and config.betas == (0.9, 0.99)


# ----------------------------------------------------------------------------- hardening


def test_stale_temp_files_of_killed_writes_are_removed_at_start(class_faces, cache_dir,
                                                                tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = [".checkpoint-0000100.pt.4194303-0a1b2c3d.tmp", ".checkpoint-0000002.pt.12345.tmp",
             ".metrics.jsonl.777-00ff00ff.tmp"]
    unrelated = [".notes.txt.12.tmp", "mine.tmp", ".checkpoint-0000002.pt"]
    for name in stale + unrelated:
        (run_dir / name).write_bytes(b"partial")
    training.train(tiny_config(class_faces, run_dir, cache_dir, steps=1))
    left = {p.name for p in run_dir.iterdir()}
    assert not left & set(stale) and set(unrelated) <= left


def test_torn_or_malformed_metrics_and_resuming_a_finished_run(class_faces, cache_dir,
                                                               tmp_path):
    run_dir = tmp_path / "run"
    metrics = run_dir / "metrics.jsonl"
    training.train(tiny_config(class_faces, run_dir, cache_dir, steps=2))
    with metrics.open("a") as file:
        file.write('{"step": 3, "recon_lo')  # killed mid-append
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: dropped its torn last line"):
        result = training.train(tiny_config(class_faces, run_dir, cache_dir, steps=3,
                                            resume="auto"))
    assert result["step"] == 3
    assert [r["step"] for r in records(run_dir, "val_recon_mse")] == [2, 3]

    # Resuming the finished run changes nothing and reports its last metrics again.
    before = metrics.read_text()
    again = training.train(tiny_config(class_faces, run_dir, cache_dir, steps=3, resume="auto"))
    assert metrics.read_text() == before
    assert again["step"] == 3 and again["val_recon_mse"] == result["val_recon_mse"]
    assert again["recon_loss"] == result["recon_loss"] and not again["interrupted"]

    lines = before.splitlines()
    metrics.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2: not a metrics record"):
        training.train(tiny_config(class_faces, run_dir, cache_dir, steps=4, resume="auto"))


def test_resume_auto_takes_the_run_settings_and_checks_the_model_first(class_faces, cache_dir,
                                                                       tmp_path, capsys):
    run_dir = tmp_path / "run"
    flags = [*tiny_flags(class_faces, run_dir, cache_dir), "--steps", "3", "--lr", "1e-3",
             "--lambda-lat", "0.01", "--lambda-ramp-steps", "2"]
    assert cli_main(["train", *flags]) == 0
    capsys.readouterr()
    val_records = len(records(run_dir, "val_recon_mse"))

    # The README's form: nothing but --resume auto and the run dir. The run is finished.
    assert cli_main(["train", "--resume", "auto", "--run-dir", str(run_dir)]) == 0
    captured = capsys.readouterr()
    assert f"resumed from {run_dir / 'checkpoint-0000003.pt'} at step 3" in captured.err
    assert json.loads(captured.out)["step"] == 3
    assert len(records(run_dir, "val_recon_mse")) == val_records

    assert cli_main(["train", "--resume", "auto", "--run-dir", str(run_dir), "--steps", "5"]) == 0
    captured = capsys.readouterr()
    assert "--steps 5 (the run had 3)" in captured.err and "--lr" not in captured.err
    config = checkpoints.load_checkpoint(run_dir / "checkpoint-0000005.pt")["train_config"]
    assert config["lr"] == 1e-3 and config["lambda_ramp_steps"] == 2 and config["steps"] == 5
    assert config["model_overrides"] == TINY and config["img_size"] == 32
    assert [r["step"] for r in records(run_dir, "recon_loss")] == [1, 2, 3, 4, 5]  # log_every 1

    # A flag that builds another model is refused before any image cache is built for it.
    cached = sorted(p.name for p in Path(cache_dir).iterdir())
    assert cli_main(["train", "--resume", "auto", "--run-dir", str(run_dir), "--steps", "6",
                     "--img-size", "64", "--max-fm", "64"]) == 2
    err = capsys.readouterr().err
    assert "--img-size 64 (the run's is 32)" in err and "--max-fm 64 (the run's is 32)" in err
    assert err.count("\n") == 1
    assert sorted(p.name for p in Path(cache_dir).iterdir()) == cached


def test_explicit_options_counts_flags_given_with_their_default_value():
    assert training.config.explicit_options(["--steps", "10000", "--no-flip", "--init-fm",
                                             "8", "--run-dir", "r"]) == {
        "steps", "flip", "init_fm", "run_dir"}
    assert training.config.explicit_options([]) == frozenset()


def test_bad_images_are_reported_once_and_listed_in_full(cache_dir, tmp_path):
    root = tmp_path / "faces"
    rng = np.random.default_rng(0)
    for name in ("happy", "neutral"):
        (root / name).mkdir(parents=True)
        for i in range(24):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                root / name / f"{i}.png")
    broken = [f"happy/{i}.png" for i in range(11)]
    for name in broken:
        (root / name).write_bytes(b"not a png")
    run_dir = tmp_path / "run"
    with pytest.warns(UserWarning) as caught:
        training.train(tiny_config(root, run_dir, cache_dir, steps=1))
    about_images = [str(w.message) for w in caught if "images" in str(w.message)]
    assert len(about_images) == 1, about_images
    assert "11 listed images" in about_images[0]
    assert str(run_dir / "bad_images.txt") in about_images[0]
    listed = (run_dir / "bad_images.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in listed) == sorted(broken)


def test_full_disk_during_a_checkpoint_keeps_the_saved_one(class_faces, cache_dir, tmp_path,
                                                          monkeypatch, capsys):
    real_save = torch.save
    calls = []

    def save(payload, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(payload, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run_dir = tmp_path / "run"
    with pytest.raises(WriteError, match=r"cannot write .*checkpoint-0000004\.pt: no space left "
                                         "on device"):
        training.train(tiny_config(class_faces, run_dir, cache_dir, checkpoint_every=2))
    assert sorted(p.name for p in run_dir.glob("*.pt*")) == ["checkpoint-0000002.pt"]
    assert not list(run_dir.glob(".*.tmp"))
    assert checkpoints.load_checkpoint(run_dir / "checkpoint-0000002.pt")["step"] == 2

    calls.clear()
    other = tmp_path / "cli"
    capsys.readouterr()
    assert cli_main(["train", *tiny_flags(class_faces, other, cache_dir), "--steps", "4",
                     "--checkpoint-every", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("exprfast train: error: cannot write ")
    assert err.rstrip().endswith("checkpoint-0000004.pt: no space left on device")


@pytest.mark.parametrize("read_only, cause", [(True, "read-only file system"),
                                              (False, "no space left on device")])
def test_torch_stream_errors_are_named_from_the_file_system(tmp_path, monkeypatch, read_only,
                                                            cause):
    def failing_save(payload, path, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0"
                           if read_only else "basic_ios::clear: iostream error")

    stats = os.statvfs(tmp_path)
    fake = type("Stats", (), {"f_flag": os.ST_RDONLY if read_only else 0, "f_blocks": 100,
                              "f_bavail": 100 if read_only else 0, "f_files": 0,
                              "f_favail": stats.f_favail})
    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(os, "statvfs", lambda path: fake)
    target = tmp_path / "c.pt"
    with pytest.raises(WriteError, match=f"^{re.escape(f'cannot write {target}')}: {cause}$"):
        files.atomic_torch_save({}, target)


def test_run_dir_that_cannot_be_written_is_refused_before_training(class_faces, cache_dir,
                                                                   tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(WriteError, match=r"--run-dir .*file/run is not writable: not a dir"):
        training.train(tiny_config(class_faces, tmp_path / "file" / "run", cache_dir))

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(files, "open", read_only, raising=False)
    monkeypatch.setattr(training.run, "open_datasets", lambda *a, **k: pytest.fail("opened"))
    run_dir = tmp_path / "run"
    assert cli_main(["train", *tiny_flags(class_faces, run_dir, cache_dir)]) == 2
    assert capsys.readouterr().err == (f"exprfast train: error: --run-dir {run_dir} is not "
                                       "writable: read-only file system\n")


class _NotHandled(Exception):
    pass


@pytest.fixture
def sigterm_guard():
    """SIGTERM raises _NotHandled instead of killing pytest, should train leave it alone."""
    def handler(signum, frame):
        raise _NotHandled("SIGTERM reached the default handler")

    previous = signal.signal(signal.SIGTERM, handler)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_start_up_exits_with_one_line(class_faces, cache_dir, tmp_path,
                                                    monkeypatch, capsys, sigterm_guard, signum,
                                                    code):
    def interrupted_open(*args, **kwargs):
        os.kill(os.getpid(), signum)
        time.sleep(5)
        pytest.fail("the signal did not interrupt the start-up")

    monkeypatch.setattr(training.run, "open_datasets", interrupted_open)
    assert cli_main(["train", *tiny_flags(class_faces, tmp_path / "run", cache_dir)]) == code
    assert capsys.readouterr().err == "exprfast train: interrupted before training started\n"


def test_second_signal_while_saving_lets_the_save_finish(class_faces, cache_dir, tmp_path,
                                                         monkeypatch, capsys):
    real_save = training.run.atomic_torch_save

    def save_under_signals(payload, path):
        for _ in range(2):  # a first and a second Ctrl-C while the checkpoint is written
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        return real_save(payload, path)

    monkeypatch.setattr(training.run, "atomic_torch_save", save_under_signals)
    run_dir = tmp_path / "run"
    warm_cache(class_faces, cache_dir)
    capsys.readouterr()
    assert cli_main(["train", *tiny_flags(class_faces, run_dir, cache_dir), "--steps", "4",
                     "--checkpoint-every", "2"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted again at step 2, after saving" in err
    assert checkpoints.load_checkpoint(run_dir / "checkpoint-0000002.pt")["step"] == 2


def test_plain_progress_lines_when_stderr_is_not_a_terminal(class_faces, cache_dir, tmp_path,
                                                            capsys):
    warm_cache(class_faces, cache_dir)
    capsys.readouterr()
    training.train(tiny_config(class_faces, tmp_path / "run", cache_dir, progress=True,
                               log_every=2, val_every=100))
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err and "step/s" not in err
    lines = [line for line in err.splitlines() if line.startswith("exprfast: step")]
    assert [line.split(":")[1] for line in lines] == [" step 2/4", " step 4/4", " step 4/4"]
    assert "recon " in lines[0] and "img/s " in lines[0] and "val_mse " in lines[2]


# ----------------------------------------------------------------------------- allocator


def _mapped_blocks():
    """glibc's count of memory blocks it has mmapped (mallinfo2().hblks)."""
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2().hblks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_keep_freed_memory_stops_mapping_large_blocks():
    if not hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    assert allocator.keep_freed_memory() == ("allocator keeps freed memory "
                                             "(glibc: no mmap blocks, no trimming)")
    before = _mapped_blocks()
    big = torch.empty(64 * 2**20, dtype=torch.uint8)  # far above any mmap threshold
    assert _mapped_blocks() == before  # from the heap, so freeing it keeps it for reuse
    del big


def test_run_result_says_what_the_allocator_does(class_faces, cache_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(run_module, "keep_freed_memory", lambda: calls.append(1) or "kept")
    result = training.train(tiny_config(class_faces, tmp_path / "on", cache_dir, steps=1))
    assert calls == [1] and result["allocator"] == "kept"
    result = training.train(tiny_config(class_faces, tmp_path / "off", cache_dir, steps=1,
                                        keep_freed_memory=False))
    assert calls == [1] and "--no-keep-freed-memory" in result["allocator"]
    assert json.loads((tmp_path / "off" / "result.json").read_text())["allocator"] == \
        result["allocator"]
