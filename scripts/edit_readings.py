"""How the model's own reader and an independent judge read the edits, next to real faces and
the model's reconstructions: does the reader, which the classifier loss trains the decoder
against, still ask for a stronger edit?

    python scripts/edit_readings.py --judge classifier128.pt [--model PATH] [--limit 512]

On the validation faces: each classifier's mean logit margin for the attribute (logit of "has
it" minus logit of "has it not") on real faces with and without it, on the reconstructions of
those with it (``decode(z, the reader's reading)``, as ``slider_strength.py``'s ceiling), and on
the faces without it set to each value (the decoding itself). And for the reader, the distance
between its mean features (``AttributeReader.features``) of the faces set to 1 and of the
reconstructions of the faces with the attribute, beside the distance between the
reconstructions of the two groups: the first small against the second means that, to the
reader, the edits are already as strong as reconstructed attributes. Writes
benchmarks/edit_readings.md and .json.
"""
import argparse
import sys

import torch

from exprfast import editing
from exprfast.benchmarking import markdown_table, write_report
from exprfast.checkpoints import load_classifier
from exprfast.checks import positive_int_arg
from exprfast.data import open_split

_BATCH = 64


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--judge", required=True, help="classifier file (exprfast train-classifier)")
    p.add_argument("--model", default=None, help="model file (default: the bundled model)")
    p.add_argument("--attr", default="Smiling")
    p.add_argument("--values", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    p.add_argument("--limit", type=positive_int_arg, default=512, help="first N validation faces")
    p.add_argument("--data-root", default=None, help="default ../shared/data/celebahq")
    p.add_argument("--out", default="benchmarks")
    return p.parse_args(argv)


@torch.inference_mode()
def in_batches(fn, x):
    return torch.cat([fn(x[i:i + _BATCH]) for i in range(0, len(x), _BATCH)])


def margin(classifier, attr):
    """The classifier's (N,) logit margin for attr: logit of 1 minus logit of 0."""
    column = classifier.attrs.index(attr)

    def read(x):
        logits = classifier(x)[:, column]
        return logits[:, 1] - logits[:, 0]
    return read


def mean_distance(a, b):
    """Mean squared difference between the mean feature vectors of two groups."""
    return float((a.mean(0) - b.mean(0)).pow(2).mean())


def main(argv=None):
    args = parse_args(argv)
    judge = load_classifier(args.judge)
    try:
        editor = editing.load(args.model, need_reader=True)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    for name, classifier in (("reader", editor.reader), ("judge", judge)):
        if args.attr not in classifier.attrs:
            raise SystemExit(f"the {name} does not read {args.attr} (it reads {classifier.attrs})")
    data = open_split(args.data_root, editor.img_size, "val", attrs=[args.attr], limit=None)
    faces, labels = data.batch(range(len(data))[:args.limit])
    has = labels[:, 0] > 0.5
    recon = editor.edit(faces, {}, paste="replace")
    edits = {s: editor.edit(faces[~has], {args.attr: s}, paste="replace") for s in args.values}
    groups = {"real, with": faces[has], "real, without": faces[~has],
              "reconstructed, with": recon[has],
              **{f"without, set to {s:g}": e for s, e in edits.items()}}
    readings = {name: {group: float(in_batches(margin(classifier, args.attr), x).mean())
                       for group, x in groups.items()}
                for name, classifier in (("reader", editor.reader), ("judge", judge))}
    features = editor.reader.features
    recon_features = in_batches(features, recon)
    edit_features = in_batches(features, edits[1.0]) if 1.0 in edits else None
    distances = {"reconstructions, with vs without": mean_distance(recon_features[has],
                                                                   recon_features[~has])}
    if edit_features is not None:
        distances["set to 1 vs reconstructions with"] = mean_distance(edit_features,
                                                                      recon_features[has])
    rows = [{"faces": group, **{name: f"{r[group]:.2f}" for name, r in readings.items()}}
            for group in groups]
    table = markdown_table(["faces", "reader", "judge"], rows)
    distance_rows = [{"reader features": k, "distance": f"{v:.4f}"} for k, v in distances.items()]
    print(table)
    setup = (f"{len(faces)} validation faces ({int(has.sum())} with {args.attr}); model "
             f"{args.model or 'bundled'}; judge {args.judge}. Mean logit margin ({args.attr} "
             "minus not); edits and reconstructions are the decodings themselves.")
    sections = [("", setup), ("Logit margins", table),
                ("Reader feature distances", markdown_table(["reader features", "distance"],
                                                            distance_rows))]
    payload = {"settings": vars(args), "faces": len(faces), "with": int(has.sum()),
               "margins": readings, "feature_distances": distances}
    title = "How the reader and the judge read edits"
    print(f"wrote {write_report(args.out, 'edit_readings', title, sections, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
