"""How well does a model file's attribute reader read real faces? The reader of the face alone
against what the editor uses (``Editor.estimate``: the mean of the readings of the face and of
its mirror image), on aligned faces of a split, against their labels.

    python scripts/reader_accuracy.py [--model PATH] [--split val]

Accuracy (reading > 0.5 as present) and log-loss per attribute. Writes
benchmarks/reader_accuracy_<split>.md and .json.
"""
import argparse
import sys

import torch

from exprfast import editing
from exprfast.benchmarking import markdown_table, write_report
from exprfast.checks import positive_int_arg
from exprfast.data import open_split


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model file (default: the bundled model)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--limit", type=positive_int_arg, default=None, help="first N faces of the split only")
    p.add_argument("--data-root", default=None, help="default ../shared/data/celebahq")
    p.add_argument("--out", default="benchmarks")
    return p.parse_args(argv)


def scores(readings, labels):
    """Per attribute: accuracy of ``readings > 0.5`` and the mean log-loss."""
    p = readings.double().clamp(1e-6, 1 - 1e-6)
    y = labels.double()
    right = ((p > 0.5).double() == y).double().mean(0)
    loss = -(y * p.log() + (1 - y) * (1 - p).log()).mean(0)
    return right.tolist(), loss.tolist()


def main(argv=None):
    args = parse_args(argv)
    try:
        editor = editing.load(args.model, need_reader=True)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    data = open_split(args.data_root, editor.img_size, args.split, attrs=list(editor.attrs))
    # --limit counts faces of the split; open_split's limit would count them before splitting
    faces, labels = data.batch(range(len(data))[:args.limit])
    with torch.inference_mode():
        alone = torch.cat([editor.reader.probabilities(faces[i:i + 256])
                           for i in range(0, len(faces), 256)])
    readings = {"the face alone": alone, "face and mirror image (Editor.estimate)":
                editor.estimate(faces)}
    rows, payload = [], {"split": args.split, "faces": len(faces), "attrs": list(editor.attrs),
                         "readings": {}}
    for name, values in readings.items():
        right, loss = scores(values, labels)
        payload["readings"][name] = {"accuracy": right, "log_loss": loss}
        for attr, r, lo in zip(editor.attrs, right, loss):
            rows.append({"reading": name, "attribute": attr, "accuracy": f"{100 * r:.1f} %",
                         "log-loss": f"{lo:.3f}"})
    setup = (f"Model: {args.model or 'bundled'} ({editor.img_size} px), its AttributeReader. "
             f"Split: {args.split}, {len(faces)} aligned faces. A reading > 0.5 counts as "
             "present.")
    table = markdown_table(["reading", "attribute", "accuracy", "log-loss"], rows)
    path = write_report(args.out, f"reader_accuracy_{args.split}", "Attribute reader accuracy",
                        [("Setup", setup), ("Results", table)], payload)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
