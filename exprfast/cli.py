"""The ``exprfast`` command: parsing, printing and exit codes of every subcommand (0 done, 1 some
inputs failed, 2 bad arguments or files, 130 interrupted); the work is done by the library."""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from . import studio, training
from .checkpoints import load_classifier, load_model, save_model
from .checks import IMAGE_SUFFIXES, one_line, positive_int_arg
from .data import DEFAULT_ATTRS, SPLITS
from .editing import PASTE_MODES, edit_photo, interpolation_grid, load, save_image
from .evaluation import evaluate, percent, results_markdown, train_classifier, write_results
from .files import WriteError
from .models import PRESETS, parameter_table
from .training.config import explicit_options
from .training.distributed import env_rank
from .training.signals import Interrupted


def _info(args: argparse.Namespace) -> int:
    from . import backend_info  # loads the compiled extension

    print(json.dumps(backend_info(), indent=2))
    return 0


def _add_params(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--attrs", nargs="+", default=["Smiling"])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)


def _params(args: argparse.Namespace) -> int:
    print(parameter_table(args.img_size, tuple(args.attrs), tuple(args.presets)))
    return 0


def _run_train(args: argparse.Namespace) -> int:
    """The training command: trains and prints the result (rank 0); 2 on bad flags or data or
    a run dir that cannot be written; 128 + the signal (130 SIGINT, 143 SIGTERM) when
    interrupted before training started or by a second signal. With --resume, the flags not
    given are the interrupted run's."""
    try:
        config = training.config_from_args(args)
        result = training.train(config, explicit=explicit_options(args.command_argv))
    except (ValueError, FileNotFoundError, WriteError) as error:
        print(f"exprfast train: error: {error}", file=sys.stderr)
        return 2
    except Interrupted as interrupted:
        if env_rank() == 0:
            print(f"exprfast train: {interrupted}", file=sys.stderr)
        return interrupted.exit_code
    if env_rank() == 0:
        if result["interrupted"]:
            print(f"interrupted at step {result['step']}; resume with --resume auto",
                  file=sys.stderr)
        print(json.dumps(result, indent=2))
    return 0


def _add_edit(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``exprfast edit``."""
    parser.description = (
        "Set facial attributes (e.g. put on or remove a smile) of the faces in photos. Faces are "
        "found, aligned, edited and pasted back; the rest of each photo is left untouched.")
    parser.add_argument("photos", nargs="+", metavar="PHOTO",
                        help="photo files or folders of photos (JPEG, PNG, ...)")
    parser.add_argument("--set", dest="changes", action="append", required=True,
                        metavar="NAME=VALUE",
                        help="attribute value to set, e.g. Smiling=1 (add a smile) or Smiling=0 "
                             "(remove it); values beyond 0..1 exaggerate; repeatable")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output folder (created if needed), or an output file for a single "
                             "photo; files keep their names and formats")
    parser.add_argument("--face", type=_int_at_least(0), default=None, metavar="K",
                        help="edit only face K (0 = the largest), default every face")
    parser.add_argument("--model", type=Path, default=None,
                        help="model file (default: the bundled model)")
    parser.add_argument("--current", action="append", default=[], metavar="NAME=VALUE",
                        help="the photos' current value of an attribute, if known (otherwise "
                             "estimated by the model); repeatable")
    parser.add_argument("--paste", choices=PASTE_MODES, default="hybrid",
                        help="how the model's output goes into the photo: hybrid (default) "
                             "takes the model's drawing where it changes the face a lot and "
                             "adds only the change's brightness elsewhere; residual adds the "
                             "model's change everywhere (keeps the photo's shapes: fainter); "
                             "replace pastes the model's decoded face (blurrier); warp moves "
                             "the photo's own pixels where hybrid would draw (sharp, a little "
                             "weaker; keeps real teeth when a smile is taken off)")
    parser.add_argument("--refiner", action=argparse.BooleanOptionalAction, default=True,
                        help="redraw the decoded mouth with the model file's mouth refiner, "
                             "when it carries one (default); --no-refiner shows the decoder's "
                             "own, softer mouth")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--quality", type=_int_at_least(1, 100), default=95,
                        help="JPEG quality, 1..100 (default 95)")


def _run_edit(args: argparse.Namespace) -> int:
    """``exprfast edit``: 0 when every photo was edited, 1 when some failed (each failure is
    one line on stderr; the other photos are still done), 2 for bad arguments or model."""
    if args.output.suffix.lower() in IMAGE_SUFFIXES and not args.output.is_dir() and (
            len(args.photos) > 1 or Path(args.photos[0]).is_dir()):
        several = "a folder" if len(args.photos) == 1 else f"{len(args.photos)} inputs"
        _error("edit", f"-o {args.output} is a file name but {several} were given; pass an "
                       "output folder (e.g. -o out/)")
        return 2
    try:
        changes = _parse_assignments(args.changes, "--set")
        current = _parse_assignments(args.current, "--current")
        editor = load(args.model, device=args.device)
        if not args.refiner:
            editor.refiner = None
        editor.check_changes(changes)
        editor.check_changes(current)
    except (ValueError, OSError, RuntimeError) as error:
        return _fail("edit", error)
    jobs, failures = _plan_outputs(args.photos, args.output)
    for source, error in failures:
        _error("edit", f"{source}: {error}")
    for source, target in jobs:
        try:
            if target.resolve() == source.resolve():
                raise ValueError(f"the output {target} would overwrite the photo; choose "
                                 "another -o")
            result, edited = edit_photo(source, changes, editor, face=args.face, current=current,
                                        paste=args.paste, return_faces=True)
            save_image(result, target, args.quality)
        except (ValueError, OSError, RuntimeError) as error:
            _error("edit", _about(source, error))
            failures.append((source, error))
            continue
        notes = [f"face {k}: no eyes found, aligned by the detection box"
                 for k, f in enumerate(edited) if f.aligned_by != "eyes"]
        faces = f"{len(edited)} face{'s' * (len(edited) != 1)}"
        print(f"{source} -> {target} ({faces}{'; ' if notes else ''}{'; '.join(notes)})")
    return 1 if failures else 0


def _add_grid(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``exprfast grid``."""
    parser.description = ("Fader Networks' interpolation grid: a face, then the same face with "
                          "an attribute swept over a range; one row per --attr.")
    parser.add_argument("photo", type=Path, metavar="PHOTO")
    parser.add_argument("--attr", action="append", default=None,
                        help="attribute to sweep (repeatable: one row each); default every "
                             "attribute of the model")
    parser.add_argument("--steps", type=int, default=7, help="values per row (default 7)")
    parser.add_argument("--range", type=float, nargs=2, default=(-0.5, 1.5),
                        metavar=("LOW", "HIGH"), help="swept values (default -0.5 1.5)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="grid image file")
    parser.add_argument("--face", type=_int_at_least(0), default=0, metavar="K",
                        help="face K (0 = the largest, the default)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model file (default: the bundled model)")
    parser.add_argument("--no-align", dest="align", action="store_false",
                        help="use the central square instead of detecting the face (for images "
                             "already aligned like the training faces)")
    parser.add_argument("--cell", type=int, default=None,
                        help="tile side in pixels (default max(model size, 128))")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _run_grid(args: argparse.Namespace) -> int:
    """``exprfast grid``: 0 on success, 1 when the photo fails, 2 for bad arguments or model."""
    try:
        editor = load(args.model, device=args.device)
        names = args.attr or list(editor.attrs)
        editor.check_changes({name: 0.0 for name in names})
    except (ValueError, OSError, RuntimeError) as error:
        return _fail("grid", error)
    try:
        grid = interpolation_grid(args.photo, names, steps=args.steps,
                                  value_range=tuple(args.range), model=editor, face=args.face,
                                  align=args.align, cell=args.cell)
        save_image(grid, args.output)
    except (ValueError, OSError, RuntimeError) as error:
        _error("grid", _about(args.photo, error))
        return 1
    print(f"{args.photo} -> {args.output}")
    return 0


def _add_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="an exprfast train checkpoint (or a model file)")
    parser.add_argument("-o", "--output", required=True, help="model file to write")
    parser.add_argument("--float32", action="store_true",
                        help="keep float32 weights (default: float16, half the size)")
    parser.add_argument("--with-discriminator", action="store_true",
                        help="keep the latent discriminator (default: left out; editing and "
                             "evaluation do not use it)")
    parser.add_argument("--refiner-highpass", type=float, default=None, metavar="SIGMA",
                        help="high-pass the mouth refiner's change at SIGMA pixels (0: not at "
                             "all), keeping the decoder's coarse mouth shape, which carries the "
                             "edit (default: as trained; docs/SMILES.md)")


def _run_export(args: argparse.Namespace) -> int:
    """``exprfast export``: a training checkpoint as a model file for ``load``/``--model``."""
    try:
        loaded = load_model(args.checkpoint)
        refiner = loaded.refiner
        if args.refiner_highpass is not None:
            if refiner is None:
                raise ValueError(f"--refiner-highpass: {args.checkpoint} has no mouth refiner "
                                 "to high-pass")
            try:
                refiner = refiner.high_passed(args.refiner_highpass)
            except ValueError as error:
                raise ValueError(f"--refiner-highpass: {error}") from None
        save_model(loaded.model, args.output, loaded.meta, half=not args.float32,
                   discriminator=args.with_discriminator, reader=loaded.reader,
                   refiner=refiner)
    except (FileNotFoundError, ValueError, WriteError) as error:
        return _fail("export", error)
    size = Path(args.output).stat().st_size / 2**20
    print(f"wrote {args.output} ({size:.1f} MiB, {'float32' if args.float32 else 'float16'})")
    return 0


def _parse_assignments(items: Sequence[str], option: str) -> dict[str, float]:
    values = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not sep or not name.strip() or not math.isfinite(value):
            raise ValueError(f"{option} takes NAME=VALUE with a number, e.g. Smiling=1, got "
                             f"{item!r}")
        values[name.strip()] = value
    return values


def _plan_outputs(photos: Sequence, output: Path):
    """``(jobs, failures)``: (source, target) pairs and (source, reason) for missing paths."""
    sources, failures = [], []
    for item in photos:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file()
                           and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            if not found:
                failures.append((path, "folder has no photos (" + ", ".join(IMAGE_SUFFIXES)
                                 + ")"))
            sources += found
        elif path.is_file():
            sources.append(path)
        else:
            failures.append((path, "no such file or folder"))
    single_file = (len(photos) == 1 and len(sources) == 1 and not Path(photos[0]).is_dir()
                   and output.suffix.lower() in IMAGE_SUFFIXES and not output.is_dir())
    if single_file:
        return [(sources[0], output)], failures
    jobs, used = [], set()
    for source in sources:
        target = output / source.name
        k = 2
        while target.name.lower() in used:
            target = output / f"{source.stem}-{k}{source.suffix}"
            k += 1
        used.add(target.name.lower())
        jobs.append((source, target))
    return jobs, failures


def _about(path: Path, error: Exception) -> str:
    """The error's first line, prefixed with ``path`` unless it names it already."""
    message = one_line(error)
    return message if str(path) in message else f"{path}: {message}"


def _error(command: str, message: str) -> None:
    print(f"exprfast {command}: error: {message}", file=sys.stderr)


def _fail(command: str, error: Exception) -> int:
    _error(command, one_line(error))
    return 2


def _add_evaluate(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``exprfast evaluate``."""
    parser.add_argument("--model", required=True, type=Path,
                        help="model file or training checkpoint")
    parser.add_argument("--classifier", required=True, type=Path,
                        help="attribute classifier from 'exprfast train-classifier'")
    _add_data_arguments(parser)
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--attrs", nargs="+", default=None,
                        help="the model's attributes to swap and judge (default all; e.g. "
                             "Smiling for a two-attribute model and a Smiling classifier)")
    parser.add_argument("--limit", type=positive_int_arg, default=None,
                        help="evaluate only the first N images of the split")
    parser.add_argument("--batch-size", type=positive_int_arg, default=64)
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="folder for NAME.json and NAME.md")
    parser.add_argument("--name", default=None, help="file name stem (default: the model's)")
    parser.add_argument("--refiner", action=argparse.BooleanOptionalAction, default=True,
                        help="pass every decoding through the model file's mouth refiner, as "
                             "edits do, when it carries one (default)")


def _run_evaluate(args: argparse.Namespace) -> int:
    """``exprfast evaluate``: writes the results and prints the markdown table."""
    try:
        loaded = load_model(args.model)
        model = loaded.model.to(_device_arg(args.device))
        classifier = load_classifier(args.classifier)
        results = evaluate(
            model, classifier, args.data_root, attrs=args.attrs, split=args.split,
            limit=args.limit, batch_size=args.batch_size, cache_dir=args.cache_dir,
            refiner=loaded.refiner if args.refiner else None,
        )
    except (FileNotFoundError, ValueError, ImportError) as error:
        return _fail("evaluate", error)
    results.update(model=str(args.model), classifier=str(args.classifier))
    name = args.name or args.model.stem
    json_path, md_path = write_results(results, args.output, name)
    print(results_markdown(results, name))
    print(f"wrote {json_path} and {md_path}")
    return 0


def _add_train_classifier(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``exprfast train-classifier``."""
    parser.add_argument("--attrs", nargs="+", default=list(DEFAULT_ATTRS),
                        help="attribute names, e.g. Smiling Mouth_Slightly_Open")
    parser.add_argument("--img-size", type=positive_int_arg, default=64)
    parser.add_argument("--steps", type=positive_int_arg, default=1500)
    parser.add_argument("--batch-size", type=positive_int_arg, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=positive_int_arg, default=None,
                        help="use only the first N listed images (before splitting)")
    _add_data_arguments(parser)
    parser.add_argument("-o", "--output", required=True, type=Path, help="classifier file to write")


def _run_train_classifier(args: argparse.Namespace) -> int:
    """``exprfast train-classifier``: trains, saves and prints the test accuracy."""
    try:
        run = train_classifier(
            args.data_root, args.img_size, args.attrs, args.steps, args.batch_size, args.lr,
            args.output, seed=args.seed, limit=args.limit, cache_dir=args.cache_dir,
            device=_device_arg(args.device),
        )
    except (FileNotFoundError, ValueError) as error:
        return _fail("train-classifier", error)
    accuracy = ", ".join(f"{a} {percent(v)}" for a, v in run.meta["test_accuracy"].items())
    print(f"test accuracy ({run.meta['n_test']} images): {accuracy}")
    print(f"trained {args.steps} steps in {run.meta['train_seconds']:.0f} s; wrote {args.output}")
    return 0


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", type=Path, default=None,
                        help="CelebA-HQ folder (attribute file + images<N>/) or a folder of "
                             "class folders; default ../shared/data/celebahq beside the "
                             "repository")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="image cache folder (default ~/.cache/exprfast)")
    parser.add_argument("--device", default=None, help="torch device (default cuda if available)")


def _int_at_least(low: int, high: int | None = None):
    """An argparse type: an integer in ``low..high`` (``high`` None: no upper bound)."""
    wanted = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {value}")
        return value

    return parse


def _device_arg(device: str | None) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device is None
                        else device)


# (name, help, add_arguments, run)
_COMMANDS = (
    ("info", "show which kernels this build has", None, _info),
    ("params", "parameter counts per model part for each preset", _add_params, _params),
    ("train", "train a model (same flags as scripts/train_fast.py)", training.add_arguments,
     _run_train),
    ("edit", "put on / remove a smile (any attribute) in your own photos", _add_edit, _run_edit),
    ("grid", "interpolation grid: a face with an attribute swept", _add_grid, _run_grid),
    ("export", "turn a training checkpoint into a model file", _add_export, _run_export),
    ("evaluate", "reconstruction PSNR/SSIM and attribute swap accuracy of a model",
     _add_evaluate, _run_evaluate),
    ("train-classifier", "train the attribute classifier (the judge) that evaluate uses",
     _add_train_classifier, _run_train_classifier),
    ("studio", "a local web page with attribute sliders (pip install \"exprfast[studio]\")",
     studio.add_arguments, studio.run),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exprfast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, run in _COMMANDS:
        sub = commands.add_parser(name, help=help_text)
        if add_arguments is not None:
            add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # The command's own arguments (which options were given: see training.explicit_options).
    args.command_argv = argv[argv.index(args.command) + 1:] if args.command in argv else []
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print(f"exprfast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
