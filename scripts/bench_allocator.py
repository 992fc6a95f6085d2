"""Training step time with glibc's default allocator against ``keep_freed_memory`` (training's
default since it was measured here), and each process's peak resident memory.

An allocator setting holds for a whole process, so the two cannot share one as the recipes of
``bench_recipes.py`` do. This runs ``bench_recipes.py`` (``paper`` and ``fader`` fp32, ``paper``
bf16) in fresh processes, alternating the two settings, ``--repeats`` times each per image size,
and reports the median over those processes of each one's median step. Writes
benchmarks/allocator.md and .json.

    python scripts/bench_allocator.py --img-sizes 64 128 256 --repeats 3
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from exprfast.benchmarking import machine_description, markdown_table, write_report

RECIPES = ("paper", "fader", "paper bf16")
SETTINGS = {"glibc defaults": "--no-keep-freed-memory", "keep_freed_memory": "--keep-freed-memory"}
# One bench_recipes.py run in a child process; prints its peak resident memory (MB) last.
CHILD = """
import resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-sizes", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--repeats", type=int, default=3, help="processes per setting and size")
    p.add_argument("--rounds", type=int, default=6, help="timed steps per recipe and process")
    p.add_argument("--data-root", default=None, help="default ../shared/data/celebahq")
    p.add_argument("--out", default="benchmarks")
    return p.parse_args(argv)


def run_once(size, setting, args, tmp):
    """Median step (ms) of each recipe and the peak resident memory of one child process."""
    script = Path(__file__).with_name("bench_recipes.py")
    argv = [str(script), "--img-size", str(size), "--precision", "fp32", "--base", "fader",
            "--recipes", *RECIPES[2:], "--rounds", str(args.rounds), SETTINGS[setting],
            "--out", tmp, "--name", "run"]
    if args.data_root:
        argv += ["--data-root", args.data_root]
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True,
                          check=True)
    times = json.loads((Path(tmp) / "run.json").read_text())["times_s"]
    steps = {name: 1000 * statistics.median(times[name]) for name in RECIPES}
    return steps, int(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.img_sizes:
            runs = {setting: [] for setting in SETTINGS}
            for _ in range(args.repeats):
                for setting in SETTINGS:
                    runs[setting].append(run_once(size, setting, args, tmp))
            results[size] = runs
    rows = []
    for size, runs in results.items():
        for name in RECIPES:
            default, kept = (statistics.median(steps[name] for steps, _ in runs[setting])
                             for setting in SETTINGS)
            rows.append({"img": size, "recipe": name, "default ms": f"{default:.0f}",
                         "kept ms": f"{kept:.0f}", "kept / default": f"{kept / default:.2f}"})
        peaks = {setting: max(peak for _, peak in runs[setting]) for setting in SETTINGS}
        rows.append({"img": size, "recipe": "peak resident MB (all three trainers)",
                     "default ms": str(peaks["glibc defaults"]),
                     "kept ms": str(peaks["keep_freed_memory"]),
                     "kept / default": f"{peaks['keep_freed_memory'] / peaks['glibc defaults']:.2f}"})
    columns = ["img", "recipe", "default ms", "kept ms", "kept / default"]
    table = markdown_table(columns, rows)
    print(table)
    setup = (f"{machine_description()}. Batch 32, channels_last; each cell the median over "
             f"{args.repeats} processes per setting (run alternately) of each process's median "
             f"of {args.rounds} interleaved steps (scripts/bench_recipes.py).")
    payload = {"machine": machine_description(), "settings": vars(args),
               "runs": {str(size): runs for size, runs in results.items()}}
    path = write_report(args.out, "allocator", "glibc's allocator: defaults against "
                        "keep_freed_memory", [("", setup), ("Step time", table)], payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
