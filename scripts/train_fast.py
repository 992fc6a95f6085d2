"""Train an exprfast model (Fader Networks' recipe; see exprfast/train.py for the details).

    python scripts/train_fast.py --steps 4000 --lambda-lat 1e-2 --lambda-ramp-steps 1000
    torchrun --nproc-per-node 2 scripts/train_fast.py ...   # DDP: gloo on CPU, nccl on CUDA

The flags are those of exprfast.train.add_arguments (run with --help).
"""
import argparse
import sys

from exprfast import train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_arguments(parser)
    return train.run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
