"""Train an exprfast model: the same code and flags as ``exprfast train`` (run with --help).

    python scripts/train_fast.py --steps 4000 --lambda-lat 1e-2 --lambda-ramp-steps 1000
    torchrun --nproc-per-node 2 scripts/train_fast.py ...   # DDP: gloo on CPU, nccl on CUDA
"""
import sys

from exprfast.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
