"""The ``exprfast`` command."""
import argparse
import json


def _info(args):
    import exprfast

    print(json.dumps(exprfast.backend_info(), indent=2))


def _params(args):
    from .models import parameter_table

    print(parameter_table(args.img_size, tuple(args.attrs), tuple(args.presets)))


def _add_params(commands):
    from .models import PRESETS

    p = commands.add_parser("params", help="parameter counts per model part for each preset")
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--attrs", nargs="+", default=["Smiling"])
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    p.set_defaults(run=_params)


def _add_training(commands):
    from . import train

    p = commands.add_parser("train", help="train a model (same flags as scripts/train_fast.py)")
    train.add_arguments(p)
    p.set_defaults(run=train.run_train)


def _add_editing(commands):
    from . import edit

    p = commands.add_parser("edit", help="put on / remove a smile (any attribute) in your own photos")
    edit.add_edit_arguments(p)
    p.set_defaults(run=edit.run_edit)
    p = commands.add_parser("grid", help="interpolation grid: a face with an attribute swept")
    edit.add_grid_arguments(p)
    p.set_defaults(run=edit.run_grid)
    p = commands.add_parser("export", help="turn a training checkpoint into a model file")
    edit.add_export_arguments(p)
    p.set_defaults(run=edit.run_export)


def _add_evaluation(commands):
    from . import evaluate

    p = commands.add_parser("evaluate", help="reconstruction PSNR/SSIM and attribute swap accuracy of a model")
    evaluate.add_evaluate_arguments(p)
    p.set_defaults(run=evaluate.run_evaluate)
    p = commands.add_parser("train-classifier", help="train the attribute classifier that evaluate uses")
    evaluate.add_train_classifier_arguments(p)
    p.set_defaults(run=evaluate.run_train_classifier)


def build_parser():
    parser = argparse.ArgumentParser(prog="exprfast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="show which kernels this build has").set_defaults(run=_info)
    _add_params(commands)
    _add_training(commands)
    _add_editing(commands)
    _add_evaluation(commands)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.run(args)  # an exit code (None = 0) for the console script
