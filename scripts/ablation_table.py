"""The recipe ablation at equal wall-clock: evaluate each run at the step it reaches in the same
time, and write benchmarks/ablation.md and .json.

Each run (a run dir of ``exprfast train`` with checkpoints every 100 steps) trained one recipe.
Its clean step time comes from benchmarks/recipes.json (``scripts/bench_recipes.py``, all recipes
side by side on quiet cores), so the runs themselves may have shared the machine. With a budget
of B seconds, a recipe of step time t is evaluated at its last checkpoint at or before B / t
steps: test-split reconstruction and flip success read by the independent judge, and the London
photo rates (``scripts/london_pairs.py``).

    python scripts/ablation_table.py --judge judge128.pt --budget 330 \
        --run "paper=runs/ablation/baseline" --run "+clf (reader trained alongside)=runs/ablation/clf" ...
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from exprfast.benchmarking import markdown_table
from exprfast.checkpoints import (list_checkpoints, load_classifier, load_model,
                                  model_from_checkpoint, save_model)
from exprfast.evaluation import evaluate, percent

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="RECIPE=RUN_DIR",
                   help="a recipe of benchmarks/recipes.json and its run dir (repeatable)")
    p.add_argument("--judge", required=True, help="classifier file (exprfast train-classifier)")
    p.add_argument("--budget", type=float, required=True, help="seconds of clean training each")
    p.add_argument("--limit", type=int, default=1000, help="test faces evaluated")
    p.add_argument("--recipes", default=str(REPO / "benchmarks" / "recipes.json"))
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default=str(REPO / "benchmarks"))
    p.add_argument("--name", default="ablation", help="report file name (without extension)")
    p.add_argument("--trailing", type=int, default=0,
                   help="also evaluate the N checkpoints before each run's budget step and "
                        "report their mean and range (flip rates move between checkpoints)")
    p.add_argument("--setting", default="128 px, Smiling, `paper` preset, bf16, batch 32, λ_lat "
                   "0.01 ramped over 500 steps (λ_clf 0.05 and λ_patch 0.01 ramped alike)",
                   help="how the runs were trained, for the report")
    return p.parse_args(argv)


def steps_at(run_dir, steps, count=1):
    """The last ``count`` (step, checkpoint) pairs of ``run_dir`` at or before ``steps``."""
    found = [(int(p.stem.split("-")[1]), p) for p in list_checkpoints(run_dir)]
    usable = [(s, p) for s, p in found if s <= steps]
    if not usable:
        raise SystemExit(f"{run_dir}: no checkpoint at or before step {steps}")
    return usable[-count:]


def trailing_row(recipe, results):
    """Mean and range over checkpoints of the test-split flips and PSNR."""
    def spread(values, fmt):
        return f"{fmt(sum(values) / len(values))} ({fmt(min(values))}–{fmt(max(values))})"
    flips = [r["flip_success"]["Smiling"] for _, r in results]
    return {"recipe": recipe, "checkpoints": ", ".join(str(s) for s, _ in results),
            "flip 0→1": spread([f["to_1"] for f in flips], percent),
            "flip 1→0": spread([f["to_0"] for f in flips], percent),
            "PSNR": spread([r["psnr"] for _, r in results], lambda v: f"{v:.2f} dB")}


def london_rates(checkpoint, judge):
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.pt"
        loaded = load_model(checkpoint)
        save_model(loaded.model, model, reader=loaded.reader)
        subprocess.run([sys.executable, str(REPO / "scripts" / "london_pairs.py"), "--model",
                        str(model), "--judge", judge, "--report", f"{tmp}/london"], check=True,
                       capture_output=True)
        return json.loads(Path(f"{tmp}/london.json").read_text())["summary"]


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    times = json.loads(Path(args.recipes).read_text())["times_s"]
    judge = load_classifier(args.judge)
    rows, payload, spreads = [], [], []
    for item in args.run:
        recipe, _, run_dir = item.partition("=")
        step_s = sorted(times[recipe])[len(times[recipe]) // 2]
        found = steps_at(run_dir, int(args.budget / step_s), 1 + args.trailing)
        trailing = [(s, evaluate(model_from_checkpoint(c), judge, args.data_root,
                                 limit=args.limit)) for s, c in found]
        (step, checkpoint), result = found[-1], trailing[-1][1]
        london = london_rates(checkpoint, args.judge)
        flip = result["flip_success"]["Smiling"]
        payload.append({"recipe": recipe, "run_dir": run_dir, "step": step, "step_s": step_s,
                        "test": result, "london": london,
                        "trailing": [{"step": s, "test": r} for s, r in trailing]})
        spreads.append(trailing_row(recipe, trailing))
        rows.append({
            "recipe": recipe, "s/step": f"{step_s:.3f}", "steps in budget": str(step),
            "flip 0→1": percent(flip["to_1"]), "flip 1→0": percent(flip["to_0"]),
            "PSNR": f"{result['psnr']:.2f} dB", "SSIM": f"{result['ssim']:.3f}",
            "London: edited neutral judged smiling": percent(
                london["edited_neutral_judged_smiling"]),
            "London: edited smiling judged neutral": percent(
                london["edited_smiling_judged_neutral"]),
        })
        print(json.dumps(rows[-1]), flush=True)
    columns = list(rows[0])
    text = [f"# Recipe ablation at equal wall-clock ({args.budget:.0f} s of clean training)", "",
            f"{args.setting}. Step times: `{Path(args.recipes).name}` (clean, side by side; "
            f"s/step here is the upper median of its timed rounds). Test split: first "
            f"{args.limit} test faces; flips read by the independent "
            f"judge ({args.judge.rsplit('/', 1)[-1]}: Fader's classifier, seed 7, train split "
            f"only, {percent(judge.meta['test_accuracy']['Smiling'])} on real test faces). "
            f"London: all 40 people through `edit_photo` (real photos: "
            f"{percent(payload[0]['london']['real_smiling_judged_smiling'])} of the smiling "
            f"ones judged smiling, {percent(payload[0]['london']['real_neutral_judged_neutral'])}"
            " of the neutral ones judged neutral).", "", markdown_table(columns, rows), ""]
    if args.trailing:
        text += ["Between neighbouring checkpoints the flip rates move by several points, so "
                 f"here each run's last {1 + args.trailing} checkpoints within the budget, on "
                 "the same test faces: mean (min–max).", "",
                 markdown_table(list(spreads[0]), spreads), ""]
    out = Path(args.out)
    (out / f"{args.name}.md").write_text("\n".join(text))
    (out / f"{args.name}.json").write_text(json.dumps({"budget_s": args.budget, "runs": payload},
                                                      indent=2) + "\n")
    print(f"wrote {out / args.name}.md")


if __name__ == "__main__":
    main()
