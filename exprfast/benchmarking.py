"""Small helpers shared by the benchmark scripts: timing and writing result tables."""
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device="cpu", repeat=5, warmup=2, min_seconds=0.0):
    """Median wall time of fn() in seconds over `repeat` runs (at least `min_seconds` of them)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times, start = [], time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_interleaved(calls, device="cpu", rounds=3, repeat=5):
    """Median seconds of each of ``calls`` ({name: fn}) over interleaved rounds: a round times
    every call (``time_call``, ``repeat`` runs), so a busy moment of the machine hits all alike."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            times[name].append(time_call(fn, device, repeat))
    return {name: statistics.median(t) for name, t in times.items()}


def machine_description(device="cpu"):
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def markdown_table(columns, rows):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_report(out_dir, name, title, sections, payload):
    """Write out_dir/name.md (title, then (heading, text) sections) and out_dir/name.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = [f"# {title}", ""]
    for heading, body in sections:
        text += [f"## {heading}" if heading else "", "", body, ""]
    (out_dir / f"{name}.md").write_text("\n".join(text))
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    return out_dir / f"{name}.md"


def write_table_report(args, title, setup, heading, columns, rows, device="cpu"):
    """``write_report`` of a one-table benchmark to ``args.out``/``args.name``: a Setup section,
    then ``rows`` under ``heading``; its JSON holds ``args``, the machine and the rows. Prints
    the path and returns it."""
    path = write_report(args.out, args.name, title,
                        [("Setup", setup), (heading, markdown_table(columns, rows))],
                        {"args": vars(args), "machine": machine_description(device),
                         "rows": rows})
    print(f"wrote {path}")
    return path
