"""Real photos through the whole photo pipeline: the London Set's neutral and smiling photos of the
same people, edited, next to the real thing, and judged by the independent classifier.

    python scripts/london_pairs.py --judge classifier128.pt --figure docs/london_pairs.png \
        --report benchmarks/london

* figure: one row per person in --people; columns neutral | edited to Smiling=1 | real smile ||
  smiling | edited to Smiling=0 | real neutral, each cropped around the detected face;
* mouths: the same people's mouths, zoomed, edited with each paste mode side by side;
* report (with --judge): over every person, how often the judge (an ``AttributeClassifier``
  trained on CelebA-HQ's train split, never used in training) reads the edited neutral photos as
  smiling against the real smiling ones, and the edited smiling photos as neutral against the
  real neutral ones; the model's own reading of each photo; the number of pixels changed
  outside the pasted face regions (must be 0); and how strong the edits are: with d = the same
  people's mean smiling face minus their mean neutral face (aligned crops at the model's
  resolution), the mean change of the edited neutral faces projected on d, in units of d (1 =
  as far as these people's real smiles), and that of the edited smiling faces on -d; the same
  within each face region (``data.FACE_REGIONS``: mouth, eyes, rest), with the share of
  d that lies in each and its cosine there with CelebA's d (the validation split's mean smiling
  minus mean non-smiling face), which tells the smile from what differs between the two photo
  sessions.

--couple NAME sets the model's attribute NAME to the Smiling value in every edit (e.g.
Mouth_Slightly_Open with a model trained on both). The London Set (CC BY 4.0) is in
../shared/data.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from exprfast import editing
from exprfast.checkpoints import load_classifier
from exprfast.data import default_data_root, open_split, to_tensor
from exprfast.editing import faces
from exprfast.evaluation import (coupled_changes, edit_strength, regional_shares,
                                 regional_strengths, sharpness)

PASTE_NOTES = {
    "hybrid": "the model's decoding where it changes the face a lot, the change's brightness "
              "added elsewhere",
    "residual": "the model's change added to the photo",
    "replace": "the model's decoding pasted",
    "warp": "the photo moved by the optical flow between the model's decodings, plus the "
            "brightness of the change the flow does not explain",
}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model file (default: the bundled model)")
    p.add_argument("--judge", default=None, help="classifier file (exprfast train-classifier)")
    p.add_argument("--people", nargs="+", default=["001", "012", "024", "034"],
                   help="rows of the figure")
    p.add_argument("--smile", type=float, default=1.0, help="Smiling value set on neutral photos")
    p.add_argument("--couple", nargs="+", default=[],
                   help="attributes set to the Smiling value in every edit")
    p.add_argument("--paste", choices=editing.PASTE_MODES, default="hybrid",
                   help="exprfast edit --paste; replace shows what the decoder itself draws")
    p.add_argument("--refiner", action=argparse.BooleanOptionalAction, default=True,
                   help="redraw decoded mouths with the model file's mouth refiner, when it "
                        "carries one (default; exprfast edit --no-refiner)")
    p.add_argument("--cell", type=int, default=200, help="side of each face cell (px)")
    p.add_argument("--london", default=None, help="default ../shared/data/london_faces")
    p.add_argument("--data-root", default=None,
                   help="CelebA-HQ, for its d in the report's regions (default "
                        "../shared/data/celebahq, left out when that is absent)")
    p.add_argument("--figure", default=None, help="PNG to write")
    p.add_argument("--mouths", default=None,
                   help="image to write: the --people's mouths, photo | each --paste mode, "
                        "rows neutral set to --smile and smiling set to 0")
    p.add_argument("--report", default=None, help="path stem of the .md and .json report")
    return p.parse_args(argv)


def face_cell(image, face, cell):
    """The photo cropped to a square around ``face`` (1.6x its detection box)."""
    x, y, w, h = face.box
    cx, cy, side = x + w / 2, y + h / 2, 1.6 * max(w, h)
    box = (int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
    return image.crop(box).resize((cell, cell), Image.LANCZOS)


def mouth_sheet(london, people, editor, smile, couple, cell):
    """The mouths of ``people``: per person a row with the neutral photo set to ``smile`` and
    one with the smiling photo set to 0; columns the photo and each paste mode's edit."""
    rows = []
    for pid in people:
        for kind, value in (("neutral", smile), ("smiling", 0.0)):
            photo = Image.open(london / kind / f"{pid}.jpg").convert("RGB")
            x, y, w, h = faces.detect_faces(np.asarray(photo))[0].box
            box = (int(x + 0.15 * w), int(y + 0.5 * h), int(x + 0.85 * w), int(y + 1.05 * h))
            values = coupled_changes("Smiling", value, couple)
            edits = [editing.edit_photo(photo, values, model=editor, face=0, paste=paste)
                     for paste in editing.PASTE_MODES]
            rows.append(np.concatenate([
                np.asarray(im.crop(box).resize((cell, cell * 4 // 5), Image.LANCZOS))
                for im in [photo, *edits]], axis=1))
    return Image.fromarray(np.concatenate(rows, axis=0))


def changed_outside(before, after, face):
    """Pixels that differ outside the region the face was pasted into."""
    _, (top, left, bottom, right) = faces.photo_mask(face, np.asarray(before).shape)
    diff = np.any(np.asarray(before) != np.asarray(after), axis=-1)
    diff[top:bottom, left:right] = False
    return int(diff.sum())


def person(london, pid, editor, smile, couple, paste):
    """Both photos of ``pid``, edited, with the detected faces."""
    out = {}
    for kind, value in (("neutral", smile), ("smiling", 0.0)):
        photo = Image.open(london / kind / f"{pid}.jpg").convert("RGB")
        edited, found = editing.edit_photo(photo, coupled_changes("Smiling", value, couple),
                                           model=editor, face=0, paste=paste, return_faces=True)
        out[kind] = (photo, edited, found[0])
    return out


@torch.no_grad()
def judge_reads(judge, image, face):
    """The judge's reading (0 or 1) of each of its attributes in the face."""
    x = to_tensor(faces.crop_face(np.asarray(image), face, judge.img_size)[None])
    return dict(zip(judge.attrs, map(int, judge.predict(x)[0].tolist())))


# the four photos the judge reads, as (row key prefix, what it is)
JUDGED = {"edited_neutral": "neutral photo set to Smiling={smile:g}",
          "real_smiling": "real smile", "edited_smiling": "smiling photo set to Smiling=0",
          "real_neutral": "real neutral"}


def celeba_direction(data_root, size):
    """CelebA-HQ's validation mean smiling minus mean non-smiling face at ``size`` px, or None
    when no ``data_root`` is given and the default one is absent."""
    if data_root is None and default_data_root() is None:
        return None
    data = open_split(data_root, size, "val", attrs=["Smiling"])
    images, labels = data.batch(range(len(data)))
    smiling = labels[:, 0] > 0.5
    return images[smiling].mean(0) - images[~smiling].mean(0)


def strengths(crops, editor, data_root=None):
    """Edit strengths along the real smile (``crops``: per kind, the people's aligned faces),
    whole and per face region, and the ceiling: the model's reconstructions of the smiling faces
    minus those of the neutral ones, projected the same way (the part of the real smile the
    decoder draws at all); and how sharp the mouths are, relative to the real smiles'."""
    x = {kind: to_tensor(np.stack(images)) for kind, images in crops.items()}
    real = x["smiling"].mean(0) - x["neutral"].mean(0)
    celeba = celeba_direction(data_root, editor.img_size)
    drawn = {kind: to_tensor(editor.edit(np.stack(crops[kind]), {}, paste="replace"))
             for kind in ("neutral", "smiling")}
    real_detail = sharpness(x["smiling"], "mouth")
    regions = {"neutral": regional_strengths(x["neutral"], x["smiled"], real),
               "smiling": regional_strengths(x["smiling"], x["unsmiled"], -real),
               "ceiling": regional_strengths(drawn["neutral"], drawn["smiling"], real),
               "d": regional_shares(real, celeba)}
    if celeba is not None:  # the same changes along the smile alone: CelebA's d, per region
        regions["along_celeba_d"] = {
            "real": regional_strengths(x["neutral"], x["smiling"], celeba),
            "neutral": regional_strengths(x["neutral"], x["smiled"], celeba),
            "smiling": regional_strengths(x["smiling"], x["unsmiled"], -celeba)}
    return {"neutral": edit_strength(x["neutral"], x["smiled"], real),
            "smiling": edit_strength(x["smiling"], x["unsmiled"], -real),
            "ceiling": edit_strength(drawn["neutral"], drawn["smiling"], real),
            "regions": regions,
            "mouth_sharpness": {kind: sharpness(images, "mouth") / real_detail
                                for kind, images in (("neutral", x["neutral"]),
                                                     ("smiled", x["smiled"]),
                                                     ("reconstructed_smiling", drawn["smiling"]))}}


def report(rows, strength, path, paste, smile, couple, refined, others):
    """``others``: the judge's attributes besides Smiling, read in the same photos."""
    n = len(rows)
    rate = lambda key: sum(r[key] for r in rows) / n  # noqa: E731
    pct = lambda v: f"{100 * v:.1f} %"  # noqa: E731
    summary = {
        "people": n,
        "edited_neutral_judged_smiling": rate("edited_neutral_smiling"),
        "real_smiling_judged_smiling": rate("real_smiling_smiling"),
        "edited_smiling_judged_neutral": 1 - rate("edited_smiling_smiling"),
        "real_neutral_judged_neutral": 1 - rate("real_neutral_smiling"),
        "model_reading_neutral_mean": float(np.mean([r["reading_neutral"] for r in rows])),
        "model_reading_smiling_mean": float(np.mean([r["reading_smiling"] for r in rows])),
        "pixels_changed_outside_faces": sum(r["changed_outside"] for r in rows),
        "smile_value": smile,
        "coupled": couple,
        "mouth_refiner": refined,
        "strength_neutral_set_to_smile": strength["neutral"],
        "strength_smiling_set_to_0": strength["smiling"],
        "strength_reconstruction_ceiling": strength["ceiling"],
        "strength_by_region": strength["regions"],
        "mouth_sharpness_relative_to_real_smiles": strength["mouth_sharpness"],
        "other_attributes_judged_present": {a: {kind: rate(f"{kind}_{a}") for kind in JUDGED}
                                            for a in others},
    }
    other_rows = [f"| judged {a}: {JUDGED[edited].format(smile=smile)} vs {JUDGED[real]} | "
                  f"{pct(rates[edited])} | {pct(rates[real])} |"
                  for a, rates in summary["other_attributes_judged_present"].items()
                  for edited, real in (("edited_neutral", "real_smiling"),
                                       ("edited_smiling", "real_neutral"))]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{path}.json").write_text(json.dumps({"summary": summary, "people": rows}, indent=2))
    Path(f"{path}.md").write_text("\n".join([
        "# London Set photos through the photo pipeline", "",
        f"{n} people, each photographed neutral and smiling (uncropped, 675 px), edited with "
        f"`exprfast.edit_photo` (`paste={paste!r}`: {PASTE_NOTES[paste]}) and read by the "
        "independent judge."
        + (f" Coupled to Smiling in every edit: {', '.join(couple)}." if couple else "")
        + (" Decoded mouths redrawn by the model file's mouth refiner." if refined else ""), "",
        "| | edited | real |", "|---|---|---|",
        f"| judged smiling: neutral photo set to Smiling={smile:g} vs real smile | "
        f"{pct(summary['edited_neutral_judged_smiling'])} | "
        f"{pct(summary['real_smiling_judged_smiling'])} |",
        f"| judged neutral: smiling photo set to Smiling=0 vs real neutral | "
        f"{pct(summary['edited_smiling_judged_neutral'])} | "
        f"{pct(summary['real_neutral_judged_neutral'])} |", *other_rows, "",
        f"Model's reading of Smiling (mean): neutral photos "
        f"{summary['model_reading_neutral_mean']:.2f}, smiling photos "
        f"{summary['model_reading_smiling_mean']:.2f}. Pixels changed outside the pasted face "
        f"regions: {summary['pixels_changed_outside_faces']}.", "",
        f"Strength (d = these people's mean smiling face minus their mean neutral face, aligned "
        f"crops at the model's resolution; 1 = as far as their real smiles): the neutral faces "
        f"set to Smiling={smile:g} moved {summary['strength_neutral_set_to_smile']:.2f} of d; "
        f"the smiling faces set to 0 moved {summary['strength_smiling_set_to_0']:.2f} of -d. "
        f"Ceiling: the model's reconstructions of the smiling faces minus those of the neutral "
        f"ones, projected the same way: {summary['strength_reconstruction_ceiling']:.2f}.", "",
        region_table(strength["regions"], smile), "",
        "Sharpness of the mouths (`evaluation.sharpness` in the mouth box of the aligned crops, "
        "relative to the real smiles'): neutral photos "
        f"{strength['mouth_sharpness']['neutral']:.2f}, neutral photos set to Smiling={smile:g} "
        f"{strength['mouth_sharpness']['smiled']:.2f}, the model's reconstructions of the smiling "
        f"photos {strength['mouth_sharpness']['reconstructed_smiling']:.2f}.", ""]))
    return summary


def region_table(regions, smile):
    """Markdown: the strengths and d's shares per face region."""
    d = regions["d"]
    cosine = lambda name: (f"{d[name]['cosine']:.2f}" if "cosine" in d[name]  # noqa: E731
                           else "(no CelebA data)")
    lines = ["Within each face region (`data.FACE_REGIONS`; d restricted to the region):",
             "", "| region | share of d's energy | cosine with CelebA's d there | neutral set "
             f"to Smiling={smile:g}, along d | smiling set to 0, along −d | ceiling |",
             "|---|---|---|---|---|---|"]
    for name in d:
        lines.append(f"| {name} | {d[name]['energy_share']:.2f} | {cosine(name)} | "
                     f"{regions['neutral'][name]:.2f} | {regions['smiling'][name]:.2f} | "
                     f"{regions['ceiling'][name]:.2f} |")
    if "along_celeba_d" in regions:
        along = regions["along_celeba_d"]
        lines += ["", "Along CelebA's d alone (its validation split's mean smiling minus mean "
                  "non-smiling face, restricted to each region; 1 = as far as CelebA's smiles "
                  "there), which leaves out what else differs between the two photo sessions:",
                  "", f"| region | real smiles, along d | neutral set to Smiling={smile:g}, "
                  "along d | smiling set to 0, along −d |", "|---|---|---|---|"]
        lines += [f"| {name} | {along['real'][name]:.2f} | {along['neutral'][name]:.2f} | "
                  f"{along['smiling'][name]:.2f} |" for name in along["real"]]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.report and not args.judge:
        raise SystemExit("london_pairs.py: --report needs --judge (the report is the judge's "
                         "readings and the strengths over every person)")
    if args.london is None and default_data_root() is None:
        raise SystemExit("london_pairs.py: no --london given and ../shared/data is absent")
    london = Path(args.london) if args.london else default_data_root().parent / "london_faces"
    editor = editing.load(args.model)
    if not args.refiner:
        editor.refiner = None
    judge = load_classifier(args.judge) if args.judge else None
    ids = sorted(p.stem for p in (london / "neutral").glob("*.jpg"))
    people = ids if judge is not None else args.people
    rows, cells, crops = [], {}, {"neutral": [], "smiled": [], "smiling": [], "unsmiled": []}
    for pid in people:
        pair = person(london, pid, editor, args.smile, args.couple, args.paste)
        (neutral, smiled, face_n), (smiling, unsmiled, face_s) = pair["neutral"], pair["smiling"]
        if pid in args.people:
            cells[pid] = [face_cell(im, f, args.cell) for im, f in
                          ((neutral, face_n), (smiled, face_n), (smiling, face_s),
                           (smiling, face_s), (unsmiled, face_s), (neutral, face_n))]
        if judge is not None:
            for kind, im, f in (("neutral", neutral, face_n), ("smiled", smiled, face_n),
                                ("smiling", smiling, face_s), ("unsmiled", unsmiled, face_s)):
                crops[kind].append(faces.crop_face(np.asarray(im), f, editor.img_size))
            readings = [float(editor.estimate(crops[kind][-1][None])[0, 0])
                        for kind in ("neutral", "smiling")]
            judged = {"edited_neutral": (smiled, face_n), "real_smiling": (smiling, face_s),
                      "edited_smiling": (unsmiled, face_s), "real_neutral": (neutral, face_n)}
            reads = {kind: judge_reads(judge, *photo) for kind, photo in judged.items()}
            rows.append({
                "person": pid,
                **{f"{kind}_{'smiling' if attr == 'Smiling' else attr}": value
                   for kind, read in reads.items() for attr, value in read.items()},
                "reading_neutral": readings[0], "reading_smiling": readings[1],
                "changed_outside": changed_outside(neutral, smiled, face_n)
                + changed_outside(smiling, unsmiled, face_s),
            })
    if args.figure:
        rows_ = [cells[p] for p in args.people]
        sheet = Image.new("RGB", (6 * args.cell + 8, len(rows_) * args.cell), "white")
        for r, row in enumerate(rows_):
            for c, im in enumerate(row):
                sheet.paste(im, (c * args.cell + (8 if c >= 3 else 0), r * args.cell))
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.figure, optimize=True)
        print(f"wrote {args.figure}: rows {', '.join(args.people)}; columns neutral | "
              f"Smiling={args.smile} | real smile || smiling | Smiling=0 | real neutral")
    if args.mouths:
        Path(args.mouths).parent.mkdir(parents=True, exist_ok=True)
        mouth_sheet(london, args.people, editor, args.smile, args.couple,
                    args.cell).save(args.mouths, quality=90)
        print(f"wrote {args.mouths}: rows {', '.join(args.people)} (Smiling={args.smile}, then "
              f"0); columns photo | {' | '.join(editing.PASTE_MODES)}")
    if judge is not None and args.report:
        strength = strengths(crops, editor, args.data_root)
        others = [a for a in judge.attrs if a != "Smiling"]
        print(json.dumps(report(rows, strength, args.report, args.paste, args.smile, args.couple,
                                editor.refiner is not None, others), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
