"""How strong is a slider value? Edits of aligned validation faces measured against the real
difference between smiling and non-smiling faces, with neither the judge nor the model's reader.

    python scripts/slider_strength.py [--model PATH] [--values 0 0.5 1 1.5 2]

``d`` is the mean smiling face minus the mean non-smiling face of the validation split (128 px
CelebA-HQ faces, aligned). For the non-smiling faces set to each value ``s``, the mean change
``edit(x, s) - x`` projected on ``d`` (in units of ``d``: 1 = as far, on average, as the real
smiling faces are from the real non-smiling ones); for the smiling faces, the same along ``-d``.
The same within each face region (mouth, eyes, rest; the first --pastes mode). As a ceiling,
the same projection for the model's own reconstructions (``decode(z, its reading)``
of each face): the part of ``d`` that the decoder can draw at all. And how sharp the mouths are
(``evaluation.sharpness`` in the mouth box, relative to the real smiling faces'): the edited
non-smiling faces at each value, the reconstructions of the smiling ones. Writes
benchmarks/slider_strength.md and .json.
"""
import argparse
import sys

from exprfast import editing
from exprfast.benchmarking import markdown_table, write_report
from exprfast.checks import positive_int_arg
from exprfast.data import open_split
from exprfast.evaluation import (coupled_changes, edit_strength, regional_shares,
                                 regional_strengths, sharpness)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model file (default: the bundled model)")
    p.add_argument("--attr", default="Smiling")
    p.add_argument("--couple", nargs="+", default=[],
                   help="attributes set to the --attr value in every edit (e.g. "
                        "Mouth_Slightly_Open with a model trained on both)")
    p.add_argument("--values", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5, 2.0])
    p.add_argument("--pastes", nargs="+", choices=editing.PASTE_MODES,
                   default=["hybrid", "replace", "warp"])
    p.add_argument("--limit", type=positive_int_arg, default=None, help="first N validation faces only")
    p.add_argument("--data-root", default=None, help="default ../shared/data/celebahq")
    p.add_argument("--out", default="benchmarks")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    editor = editing.load(args.model)
    data = open_split(args.data_root, editor.img_size, "val", attrs=[args.attr])
    # --limit counts faces of the split; open_split's limit would count them before splitting
    faces, labels = data.batch(range(len(data))[:args.limit])
    present = labels[:, 0] > 0.5
    smiling, neutral = faces[present], faces[~present]
    direction = smiling.mean(0) - neutral.mean(0)
    reconstructed = editor.edit(faces, {}, paste="replace")
    drawn = reconstructed[present].mean(0) - reconstructed[~present].mean(0)
    ceiling = float((drawn * direction).sum() / direction.pow(2).sum())

    real_sharpness = sharpness(smiling, "mouth")
    rows, payload = [], {"faces": len(faces), "smiling": len(smiling), "coupled": args.couple,
                         "reconstruction_ceiling": ceiling, "pastes": {},
                         "mouth_sharpness": {
                             "real_smiling": real_sharpness,
                             "real_non_smiling": sharpness(neutral, "mouth") / real_sharpness,
                             "reconstructed_smiling":
                                 sharpness(reconstructed[present], "mouth") / real_sharpness}}
    region_rows, sharp_rows = [], []
    for paste in args.pastes:
        values = [coupled_changes(args.attr, s, args.couple) for s in args.values]
        raised = [editor.edit(neutral, v, paste=paste) for v in values]
        lowered = [editor.edit(smiling, v, paste=paste) for v in values]
        up = [edit_strength(neutral, edited, direction) for edited in raised]
        down = [edit_strength(smiling, edited, -direction) for edited in lowered]
        sharp = [sharpness(edited, "mouth") / real_sharpness for edited in raised]
        payload["pastes"][paste] = {"values": args.values, "non_smiling_set_to": up,
                                    "smiling_set_to": down, "mouth_sharpness": sharp}
        sharp_rows.append({"edit": f"{paste}: non-smiling faces set to s", **{
            f"s = {v:g}": f"{r:.2f}" for v, r in zip(args.values, sharp)}})
        if paste == args.pastes[0]:  # the same, region by region
            regional = {"non_smiling_set_to": [regional_strengths(neutral, e, direction)
                                               for e in raised],
                        "smiling_set_to": [regional_strengths(smiling, e, -direction)
                                           for e in lowered]}
            payload["regions"] = {"paste": paste, "d": regional_shares(direction), **regional}
            for region in payload["regions"]["d"]:
                for key, text in (("non_smiling_set_to", "non-smiling faces set to s, along d"),
                                  ("smiling_set_to", "smiling faces set to s, along −d")):
                    region_rows.append({"edit": f"{region}, {paste}: {text}", **{
                        f"s = {s:g}": f"{r[region]:.2f}"
                        for s, r in zip(args.values, regional[key])}})
        for name, projections in ((f"{paste}: non-smiling faces set to s, along d", up),
                                  (f"{paste}: smiling faces set to s, along −d", down)):
            rows.append({"edit": name, **{f"s = {s:g}": f"{v:.2f}"
                                          for s, v in zip(args.values, projections)}})
    columns = ["edit", *(f"s = {s:g}" for s in args.values)]
    table = markdown_table(columns, rows)
    shares = ", ".join(f"{name} {share['energy_share']:.2f}"
                       for name, share in payload["regions"]["d"].items())
    by_region = (f"d restricted to each face region (`data.FACE_REGIONS`); share of d's "
                 f"energy in each: {shares}.\n\n" + markdown_table(columns, region_rows))
    mouth = payload["mouth_sharpness"]
    sharp_text = (f"`evaluation.sharpness` in the mouth box (mean squared Laplacian of the luma), "
                  f"relative to the real smiling faces' ({mouth['real_smiling']:.4g}): real "
                  f"non-smiling faces {mouth['real_non_smiling']:.2f}, the model's "
                  f"reconstructions of the smiling faces {mouth['reconstructed_smiling']:.2f}."
                  f"\n\n" + markdown_table(columns, sharp_rows))
    setup = (f"Model: {args.model or 'bundled'} ({editor.img_size} px). Validation split: "
             f"{len(faces)} aligned faces, {len(smiling)} smiling. d = mean smiling face − mean "
             f"non-smiling face; each cell is the mean change of the edited faces projected on "
             f"d (or −d), in units of d: 1 = as far as real smiles are from real non-smiling "
             f"faces on average. Ceiling: the model's reconstructions of the smiling faces minus "
             f"those of the non-smiling ones, projected the same way: {ceiling:.2f}."
             + (f" Set to s with {args.attr} in every edit: {', '.join(args.couple)}."
                if args.couple else ""))
    path = write_report(args.out, "slider_strength", f"Slider strength ({args.attr})",
                        [("Setup", setup), ("Results", table), ("By face region", by_region),
                         ("Sharpness of the mouths", sharp_text)],
                        payload)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
