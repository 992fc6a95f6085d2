"""The exprfast command: every subcommand's exit codes, output files and one-line errors."""
import errno
import json

import pytest
import torch
from PIL import Image

pytest.importorskip("cv2", reason="exprfast.editing.faces needs opencv-python-headless<5")

from conftest import fake_training_checkpoint, make_celebahq, tiny_model  # noqa: E402
from exprfast import checkpoints, cli, editing, models  # noqa: E402
from exprfast.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    checkpoints.save_model(tiny_model(), path)
    return path


# ----------------------------------------------------------------------------- edit, grid, export


def test_edit_folder_with_bad_files(model_file, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in editing.SAMPLE_PHOTOS:
        (photos / path.name).write_bytes(path.read_bytes())
    (photos / "broken.jpg").write_bytes(b"GIF89a nonsense")
    Image.new("L", (200, 160), 90).save(photos / "wall.png")
    (photos / "readme.txt").write_text("not listed: not an image suffix")
    out = tmp_path / "out"
    assert main(["edit", str(photos), "--set", "Smiling=1", "-o", str(out),
                 "--model", str(model_file)]) == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2
    assert any("broken.jpg" in line and "not a readable image" in line for line in errors)
    assert any("wall.png" in line and "no face found" in line for line in errors)
    assert all(line.startswith("exprfast edit: error: ") for line in errors)
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(p.name for p in editing.SAMPLE_PHOTOS)
    for path in editing.SAMPLE_PHOTOS:
        with Image.open(out / path.name) as result, Image.open(path) as source:
            assert result.size == source.size and result.format == "JPEG"


def test_edit_single_file_and_argument_errors(model_file, tmp_path, capsys):
    target = tmp_path / "smile.png"
    assert main(["edit", str(editing.SAMPLE_PHOTOS[0]), "--set", "Smiling=0.8", "-o",
                 str(target), "--model", str(model_file), "--face", "0", "--paste",
                 "replace"]) == 0
    with Image.open(target) as result:
        assert result.format == "PNG" and result.size == (512, 512)
    assert "1 face" in capsys.readouterr().out

    for argv, message in ((["--set", "Happy=1"], "unknown attribute 'Happy'"),
                          (["--set", "Smiling"], "NAME=VALUE"),
                          (["--set", "Smiling=yes"], "NAME=VALUE")):
        assert main(["edit", str(editing.SAMPLE_PHOTOS[0]), *argv, "-o", str(tmp_path / "x"),
                     "--model", str(model_file)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"junk")
    assert main(["edit", str(editing.SAMPLE_PHOTOS[0]), "--set", "Smiling=1", "-o",
                 str(tmp_path / "x"), "--model", str(corrupt)]) == 2
    err = capsys.readouterr().err
    assert "corrupt.pt" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_grid(model_file, tmp_path, capsys):
    target = tmp_path / "grid.png"
    assert main(["grid", str(editing.SAMPLE_PHOTOS[1]), "--attr", "Smiling", "--steps", "4",
                 "--range", "-1", "2", "-o", str(target), "--model", str(model_file)]) == 0
    with Image.open(target) as grid:
        assert grid.size == (5 * 128, 128)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (100, 100)).save(blank)
    assert main(["grid", str(blank), "-o", str(target), "--model", str(model_file)]) == 1
    assert "no face found" in capsys.readouterr().err


def test_export_writes_a_half_precision_model_file(tmp_path, capsys):
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
        torch.testing.assert_close(editing.load(out).model(x, attrs)[1], model.eval()(x, attrs)[1],
                                   atol=2e-2, rtol=0)
    assert main(["export", str(tmp_path / "missing.pt"), "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------- evaluate, train-classifier


def test_train_classifier_command(tmp_path, capsys):
    root = make_celebahq(tmp_path / "celebahq")
    out = tmp_path / "clf.pt"
    flags = ["--img-size", "16", "--steps", "3", "--batch-size", "8", "--data-root", str(root),
             "--cache-dir", str(tmp_path / "cache"), "-o", str(out)]
    assert main(["train-classifier", "--attrs", "Smiling", "Male", *flags]) == 0
    assert checkpoints.load_classifier(out).attrs == ["Smiling", "Male"]
    assert "test accuracy (4 images): Smiling" in capsys.readouterr().out

    assert main(["train-classifier", "--attrs", "Smiles", *flags]) == 2
    assert "exprfast train-classifier: error: unknown attrs ['Smiles']" in capsys.readouterr().err


def test_evaluate_command_judges_the_attributes_named(tmp_path, capsys):
    """A two-attribute model with a one-attribute classifier: --attrs picks what is judged."""
    root = make_celebahq(tmp_path / "celebahq", size=32)
    model_path, clf_path = tmp_path / "model.pt", tmp_path / "clf.pt"
    checkpoints.save_model(tiny_model(("Smiling", "Male")), model_path)
    checkpoints.save_classifier(models.AttributeClassifier(32, ["Smiling"], init_fm=8,
                                                           hid_dim=16), clf_path, {})
    flags = ["evaluate", "--model", str(model_path), "--classifier", str(clf_path),
             "--data-root", str(root), "--cache-dir", str(tmp_path / "cache"),
             "-o", str(tmp_path / "out")]
    assert main(flags) == 2
    assert "the classifier does not predict ['Male']" in capsys.readouterr().err
    assert main([*flags, "--attrs", "Smiling"]) == 0
    results = json.loads((tmp_path / "out" / "model.json").read_text())
    assert results["attrs"] == ["Smiling"] and list(results["flip_success"]) == ["Smiling"]


def test_evaluate_command_reports_missing_files(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "nope.pt"), "--classifier",
                 str(tmp_path / "clf.pt"), "-o", str(tmp_path / "out")]) == 2
    assert f"model file {tmp_path / 'nope.pt'} does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", "m.pt", "--classifier", "c.pt", "-o", "o", "--limit", "0"])


# ----------------------------------------------------------------------------- edit: hardening


def test_edit_refuses_a_file_output_for_several_photos(model_file, tmp_path, capsys):
    photos = [str(p) for p in editing.SAMPLE_PHOTOS]
    folder = tmp_path / "photos"
    folder.mkdir()
    for inputs, what in ((photos, "2 inputs"), ([str(folder)], "a folder")):
        target = tmp_path / "x.jpg"
        assert main(["edit", *inputs, "--set", "Smiling=1", "-o", str(target),
                     "--model", str(model_file)]) == 2
        err = capsys.readouterr().err
        assert err == (f"exprfast edit: error: -o {target} is a file name but {what} were "
                       "given; pass an output folder (e.g. -o out/)\n")
        assert not target.exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--quality", "500", "argument --quality: must be an integer in 1..100, got 500"),
    ("--quality", "0", "argument --quality: must be an integer in 1..100, got 0"),
    ("--face", "-1", "argument --face: must be an integer >= 0, got -1"),
    ("--face", "first", "argument --face: must be an integer >= 0, got 'first'"),
])
def test_edit_validates_quality_and_face(flag, value, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["edit", str(editing.SAMPLE_PHOTOS[0]), "--set", "Smiling=1", "-o",
              str(tmp_path / "x.jpg"), flag, value])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.jpg").exists()


def test_edit_write_errors_name_the_output_not_a_temporary_file(model_file, tmp_path,
                                                                monkeypatch, capsys):
    def read_only(image, fp, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(fp))

    monkeypatch.setattr(Image.Image, "save", read_only)
    source, target = editing.SAMPLE_PHOTOS[0], tmp_path / "out" / "x.jpg"
    assert main(["edit", str(source), "--set", "Smiling=1", "-o", str(target),
                 "--model", str(model_file)]) == 1
    assert capsys.readouterr().err == (f"exprfast edit: error: {source}: cannot write {target}: "
                                       "read-only file system\n")


def test_ctrl_c_during_edit_exits_130_with_one_line(model_file, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "edit_photo", interrupted)
    assert main(["edit", str(editing.SAMPLE_PHOTOS[0]), "--set", "Smiling=1", "-o",
                 str(tmp_path / "out"), "--model", str(model_file)]) == 130
    assert capsys.readouterr().err == "exprfast edit: interrupted\n"
    assert not (tmp_path / "out").exists()
