"""Kill training with SIGKILL at random moments, resume each time, and check that the final weights
equal those of a run that was never killed (fault injection for the checkpoint/resume path).

Uses a tiny model on synthetic class folders (32 px), one thread per run:

    python scripts/kill_resume_check.py --kills 20 --steps 200
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from exprfast.checkpoints import list_checkpoints, load_checkpoint

FLAGS = ["--img-size", "32", "--batch-size", "8", "--init-fm", "8", "--max-fm", "32",
         "--dis-hidden", "64", "--checkpoint-every", "3", "--log-every", "1", "--val-every", "10",
         "--val-images", "8", "--sample-every", "1000", "--lambda-lat", "0.01",
         "--lambda-ramp-steps", "10", "--lambda-clf", "0.5", "--no-progress"]


def make_faces(root: Path) -> None:
    rng = np.random.default_rng(0)
    for name, level in (("happy", 220), ("neutral", 40)):
        (root / name).mkdir(parents=True)
        for i in range(24):
            pixels = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
            pixels[8:24, 8:24] = level
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def command(data, cache, run_dir, steps):
    return [sys.executable, "-m", "exprfast.cli", "train", "--data-root", str(data),
            "--cache-dir", str(cache), "--run-dir", str(run_dir), "--steps", str(steps),
            "--resume", "auto", *FLAGS]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_faces(tmp / "faces")
        straight = subprocess.run(command(tmp / "faces", tmp / "cache", tmp / "straight",
                                          args.steps), env=env, capture_output=True, text=True)
        if straight.returncode != 0:
            raise SystemExit(f"the straight run failed: {straight.stderr[-2000:]}")
        start = time.perf_counter()
        subprocess.run(command(tmp / "faces", tmp / "cache", tmp / "killed", 1), env=env,
                       capture_output=True, check=True)  # the start-up cost, for kill timing
        startup = time.perf_counter() - start
        kills = failures = 0
        while True:
            done = list_checkpoints(tmp / "killed")
            step = load_checkpoint(done[-1])["step"] if done else 0
            if step >= args.steps:
                break
            process = subprocess.Popen(command(tmp / "faces", tmp / "cache", tmp / "killed",
                                               args.steps), env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
            if kills < args.kills:
                # from mid start-up (imports, data) to a few checkpoints into training
                time.sleep(rng.uniform(0.3 * startup, 2.0 * startup))
                if process.poll() is None:
                    process.kill()
                    kills += 1
            _, err = process.communicate()
            if process.returncode not in (0, -9):
                failures += 1
                print(f"resume failed (exit {process.returncode}): {err.strip()[-500:]}")
        a = load_checkpoint(list_checkpoints(tmp / "straight")[-1])
        b = load_checkpoint(list_checkpoints(tmp / "killed")[-1])
        mismatched = [k for part in ("model", "reader") for k, v in a[part].items()
                      if not torch.equal(v, b[part][k])]
        print(f"kill/resume: {kills} SIGKILLs, {failures} failed resumes, final step "
              f"{b['step']}, {len(mismatched)} tensors differ from the uninterrupted run")
        return 1 if failures or mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
