"""Training throughput of the fader, paper-eager and paper presets, side by side.

For every image size, precision and preset, times exprfast.training's own training step (one
latent-discriminator update + one autoencoder update, batch 32 by default) on the same CelebA-HQ
images, and the data part of that step alone (gathering its two batches from the memmapped
cache), to show whether the data pipeline limits training. Writes benchmarks/train.md and
benchmarks/train.json.

Each configuration runs in a fresh subprocess, so its peak memory is its own: on the CPU the peak
resident set size of that process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), reported with
its baseline after imports and opening the data (the difference is the model, optimizer states,
activations and allocator caches); on CUDA ``torch.cuda.max_memory_allocated``.

    python scripts/bench_train.py                      # 64, 128, 256 px; fp32 and bf16
    python scripts/bench_train.py --steps 2 --img-sizes 32 --limit 128   # a quick check
"""
import argparse
import itertools
import json
import resource
import subprocess
import sys

import torch

from exprfast.benchmarking import machine_description, markdown_table, time_call, write_report
from exprfast.models import PRESETS, parameter_counts
from exprfast.training import PRECISIONS, Trainer, TrainConfig, open_datasets
from exprfast.training.allocator import keep_freed_memory


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-sizes", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--presets", nargs="+", choices=PRESETS,
                   default=["fader", "paper-eager", "paper"])
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32", "bf16"])
    p.add_argument("--reuse-latent-presets", nargs="*", choices=PRESETS, default=[],
                   help="presets also timed with --reuse-latent (a column '<preset> +reuse')")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--limit", type=int, default=1024, help="images used (the same for every run)")
    p.add_argument("--data-root", default=None, help="default ../shared/data/celebahq")
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last activations, as exprfast train does by default")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="glibc keeps freed memory in each configuration's process, as training "
                        "does (default on)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default torch's, one per core); a busy machine "
                        "makes OpenMP threads wait on each other: run it on quiet cores")
    p.add_argument("--out", default="benchmarks", help="folder of the report")
    p.add_argument("--name", default="train", help="report file name (without extension)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one configuration, as JSON
    return p.parse_args(argv)


def bench_config(args, img_size, preset="paper", precision="fp32", reuse_latent=False):
    return TrainConfig(
        data_root=args.data_root, img_size=img_size, limit=args.limit, preset=preset,
        precision=precision, batch_size=args.batch_size, device=args.device,
        channels_last=args.channels_last, progress=False, reuse_latent=reuse_latent,
    )


def column(job):
    """A configuration's column in the tables: its preset, '+reuse' with --reuse-latent."""
    return job["preset"] + (" +reuse" if job.get("reuse_latent") else "")


# ----------------------------------------------------------------------------- one configuration


def peak_memory_mb(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_worker(args, job):
    """Time one configuration in this process; prints its row as JSON."""
    if args.keep_freed_memory:
        keep_freed_memory()
    config = bench_config(args, job["img_size"], job["preset"], job["precision"],
                          job.get("reuse_latent", False))
    train_set, _ = open_datasets(config)
    device = torch.device(config.device)
    baseline = peak_memory_mb(device)
    trainer = Trainer(config, train_set, device)
    step_s = time_call(trainer.train_step, device, repeat=args.steps, warmup=args.warmup)
    batches = itertools.count()

    def gather_step_data():  # the two batches of one step, as train_step gets them
        trainer.batch(next(batches))
        trainer.batch(next(batches))

    data_s = time_call(gather_step_data, device, repeat=args.steps, warmup=1)
    print(json.dumps({
        **job,
        "params": parameter_counts(trainer.model)["total"],
        "step_ms": 1000 * step_s,
        "samples_per_s": args.batch_size / step_s,
        "data_samples_per_s": args.batch_size / data_s,
        "data_share": data_s / step_s,
        "peak_mb": peak_memory_mb(device),
        "baseline_mb": baseline,
    }))


def run_job(job, argv):
    """Run one configuration in a fresh process (its own peak memory); its row, or the error."""
    done = subprocess.run([sys.executable, __file__, *argv, "--worker", json.dumps(job)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {**job, "error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report


def speed_table(rows, columns):
    """Samples/s side by side: one row per (size, precision), one column per configuration,
    and the step-time ratios of paper (and paper +reuse) to fader."""
    table = []
    for (size, precision) in dict.fromkeys((r["img_size"], r["precision"]) for r in rows):
        cells = {column(r): r for r in rows
                 if r["img_size"] == size and r["precision"] == precision}
        line = {"img size": size, "precision": precision}
        for name in columns:
            line[name] = _rate(cells.get(name))
        fader = cells.get("fader", {})
        fp32_fader = next((r for r in rows if r["img_size"] == size and r["precision"] == "fp32"
                           and column(r) == "fader"), {})
        for paper in ("paper", "paper +reuse"):
            for name, base in ((f"{paper} / fader step", fader),
                               (f"{paper} / fp32 fader step", fp32_fader)):
                if "step_ms" in cells.get(paper, {}) and "step_ms" in base:
                    line[name] = f"{cells[paper]['step_ms'] / base['step_ms']:.2f}"
        table.append(line)
    return table


def detail_table(rows):
    table = []
    for r in rows:
        line = {"img size": r["img_size"], "preset": column(r), "precision": r["precision"]}
        if "error" in r:
            line["train samples/s"] = f"failed: {r['error']}"
        else:
            line.update({
                "params": f"{r['params']:,}",
                "step ms": f"{r['step_ms']:.1f}",
                "train samples/s": f"{r['samples_per_s']:.1f}",
                "data-only samples/s": f"{r['data_samples_per_s']:.0f}",
                "data share of step": f"{100 * r['data_share']:.1f} %",
                "peak MB": f"{r['peak_mb']:.0f}",
                "baseline MB": f"{r['baseline_mb']:.0f}",
            })
        table.append(line)
    return table


def _rate(row):
    if row is None:
        return ""
    return "failed" if "error" in row else f"{row['samples_per_s']:.1f}"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return run_worker(args, json.loads(args.worker))
    for size in args.img_sizes:  # build the image caches before anything is timed
        open_datasets(bench_config(args, size))
    rows = []
    for size in args.img_sizes:
        for precision in args.precisions:
            for job in jobs(args, size, precision):
                row = run_job(job, argv)
                print(json.dumps(row), flush=True)
                rows.append(row)
    print(f"wrote {write_train_report(args, rows)}")


def jobs(args, size, precision):
    base = {"img_size": size, "precision": precision}
    return ([{**base, "preset": p} for p in args.presets]
            + [{**base, "preset": p, "reuse_latent": True} for p in args.reuse_latent_presets])


def write_train_report(args, rows):
    """benchmarks/<name>.md and .json from the rows of every configuration."""
    memory = ("torch.cuda.max_memory_allocated" if torch.device(args.device).type == "cuda"
              else "peak RSS of the configuration's own process (getrusage ru_maxrss); baseline "
                   "= after imports and opening the data")
    columns = list(dict.fromkeys(column(r) for r in rows))
    ratios = [f"{p} / {f}fader step" for p in ("paper", "paper +reuse") if p in columns
              for f in ("", "fp32 ")]
    sections = [
        ("", f"{machine_description(args.device)}. Batch {args.batch_size}, {args.limit} CelebA-HQ "
             f"images, median of {args.steps} timed steps after {args.warmup} warm-up steps"
             f"{', channels_last' if args.channels_last else ''}"
             f"{', freed memory kept (keep_freed_memory)' if args.keep_freed_memory else ''}. "
             "A step is one "
             "latent-discriminator update and one autoencoder update (exprfast.training.Trainer."
             "train_step); samples/s = batch / step time."),
        ("Training samples/s", markdown_table(
            ["img size", "precision", *columns, *ratios],
            speed_table(rows, columns)) + "\n\nThe ratios are of step times (lower: paper "
            "faster); the issue's targets are <= 0.80 at 64 px and <= 0.68 at 128 and 256 px in "
            "fp32, and bf16 paper <= 0.42 of fp32 fader at 128 and 256 px."),
        ("Details", markdown_table(
            ["img size", "preset", "precision", "params", "step ms", "train samples/s",
             "data-only samples/s", "data share of step", "peak MB", "baseline MB"],
            detail_table(rows)) + f"\n\nMemory: {memory}. Data-only: gathering the step's two "
            "batches (memmap gather, uint8 -> float, flips, to device) without training; the "
            "data share is that time over the step time, which includes it (loading is not "
            "overlapped with compute)."),
    ]
    payload = {"machine": machine_description(args.device), "settings": {
        k: v for k, v in vars(args).items() if k != "worker"}, "rows": rows}
    return write_report(args.out, args.name, "Training throughput", sections, payload)


if __name__ == "__main__":
    main()
