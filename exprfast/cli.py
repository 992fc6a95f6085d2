"""The ``exprfast`` command."""
import argparse
import json


def _info(args):
    import exprfast

    print(json.dumps(exprfast.backend_info(), indent=2))


def build_parser():
    parser = argparse.ArgumentParser(prog="exprfast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="show which kernels this build has").set_defaults(run=_info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.run(args)
