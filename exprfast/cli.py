"""The ``exprfast`` command."""
import argparse
import importlib
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


# Subcommands implemented in the library modules: (name, module, add_arguments, run, help).
_MODULE_COMMANDS = [
    ("train", "train", "add_arguments", "run_train",
     "train a model (same flags as scripts/train_fast.py)"),
    ("edit", "edit", "add_edit_arguments", "run_edit",
     "put on / remove a smile (any attribute) in your own photos"),
    ("grid", "edit", "add_grid_arguments", "run_grid",
     "interpolation grid: a face with an attribute swept"),
    ("export", "edit", "add_export_arguments", "run_export",
     "turn a training checkpoint into a model file"),
    ("evaluate", "evaluate", "add_evaluate_arguments", "run_evaluate",
     "reconstruction PSNR/SSIM and attribute swap accuracy of a model"),
    ("train-classifier", "evaluate", "add_train_classifier_arguments", "run_train_classifier",
     "train the attribute classifier that evaluate uses"),
]


def _add_module_commands(commands):
    for name, module_name, add_arguments, run, help_text in _MODULE_COMMANDS:
        module = importlib.import_module(f".{module_name}", __package__)
        parser = commands.add_parser(name, help=help_text)
        getattr(module, add_arguments)(parser)
        parser.set_defaults(run=getattr(module, run))


def build_parser():
    parser = argparse.ArgumentParser(prog="exprfast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="show which kernels this build has").set_defaults(run=_info)
    _add_params(commands)
    _add_module_commands(commands)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.run(args)  # an exit code (None = 0) for the console script
