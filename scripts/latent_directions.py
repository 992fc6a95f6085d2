"""Can a direction in the latent add the smile that the label does not? The latent keeps the
smile (``latent_probe.py``), so an edit could also move z: ``decode(z + k * v, Smiling=1)``.

    python scripts/latent_directions.py [--model PATH] [--train-faces 12000] [--scales 0 1 2 4]

Directions ``v`` from the latents of the first ``--train-faces`` train-split faces:

* ``mean``: the mean latent of the smiling faces minus that of the others;
* ``conditional``: the Smiling coefficient of a least-squares fit of the latent on the CelebA
  attributes, so that those correlated with smiling in CelebA (sex, make-up, ...) are held fixed
  (High_Cheekbones, Mouth_Slightly_Open and Narrow_Eyes are left out: they are part of a smile);
* ``re-encoded edits``: the encoder's latents of the model's own edits of 2,000 of those faces,
  set to 1 minus set to 0.

And an oracle that cannot ship, since it is fitted on the evaluation photos: for each London
person, the mean over the *other* 39 people of their smiling photo's latent minus their neutral
photo's latent. Measured on the London Set's aligned crops (the photo pipeline's detector and
alignment) with d = their mean smiling crop minus their mean neutral one, as ``london_pairs.py``:
the cosine of each direction with the London pairs' mean latent difference, and the strength of
``decode(z + k * v, Smiling=1)`` of the neutral crops along d (the decoding itself, as
``--paste replace``; 1 = as far as their real smiles). Writes benchmarks/latent_directions.md and
.json.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from exprfast import editing
from exprfast.benchmarking import markdown_table, write_report
from exprfast.data import data_paths, default_data_root, open_split, read_attribute_file, to_tensor
from exprfast.editing import faces
from exprfast.evaluation import edit_strength, encode_split

PART_OF_A_SMILE = ("High_Cheekbones", "Mouth_Slightly_Open", "Narrow_Eyes")
_BATCH = 100


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model file (default: the bundled model)")
    p.add_argument("--train-faces", type=int, default=12000)
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    p.add_argument("--data-root", default=None, help="default ../shared/data/celebahq")
    p.add_argument("--london", default=None, help="default ../shared/data/london_faces")
    p.add_argument("--out", default="benchmarks")
    return p.parse_args(argv)


def london_crops(london: Path, size: int) -> dict[str, torch.Tensor]:
    """Each person's neutral and smiling photo, aligned as the photo pipeline does."""
    ids = sorted(p.stem for p in (london / "neutral").glob("*.jpg"))
    crops = {"neutral": [], "smiling": []}
    for kind, images in crops.items():
        for pid in ids:
            path = london / kind / f"{pid}.jpg"
            photo = np.asarray(Image.open(path).convert("RGB"))
            found = faces.detect_faces(photo)
            if not found:
                raise SystemExit(f"--london: no face found in {path}")
            images.append(faces.crop_face(photo, found[0], size))
    return {kind: to_tensor(np.stack(images)) for kind, images in crops.items()}


@torch.inference_mode()
def directions(model, data_root, n: int) -> dict[str, torch.Tensor]:
    """The candidate directions (module docstring), each shaped like one latent."""
    names = read_attribute_file(data_paths(data_root, model.img_size)[1]).names
    attrs = [name for name in names if name not in PART_OF_A_SMILE]
    train = open_split(data_root, model.img_size, "train", attrs=attrs)
    z, labels = encode_split(model, train, n)
    present = (labels > 0.5).double()
    smiling = present[:, attrs.index("Smiling")] > 0
    flat = z.flatten(1).double()
    design = torch.cat([torch.ones(len(flat), 1, dtype=torch.float64), present], 1)
    fit = torch.linalg.lstsq(design, flat).solution
    found = {"mean": flat[smiling].mean(0) - flat[~smiling].mean(0),
             "conditional": fit[1 + attrs.index("Smiling")]}
    some = z[:2000]
    edits = []
    for value in (1.0, 0.0):
        labels_ = torch.full((len(some), len(model.attrs)), value)
        edits.append(torch.cat([model.encode(model.decode(some[i:i + _BATCH],
                                                          labels_[i:i + _BATCH]).clamp(-1, 1))
                                for i in range(0, len(some), _BATCH)]))
    found["re-encoded edits"] = (edits[0] - edits[1]).mean(0)
    return {name: v.float().view_as(z[0]) for name, v in found.items()}


def main(argv=None):
    args = parse_args(argv)
    editor = editing.load(args.model)
    model = editor.model
    if list(model.attrs) != ["Smiling"]:
        raise SystemExit(f"--model: needs a model of Smiling alone, got {list(model.attrs)}")
    london = Path(args.london) if args.london else default_data_root().parent / "london_faces"
    x = london_crops(london, editor.img_size)
    with torch.inference_mode():
        z = {kind: model.encode(images) for kind, images in x.items()}
    real = x["smiling"].mean(0) - x["neutral"].mean(0)
    paired = z["smiling"] - z["neutral"]
    n = len(paired)
    candidates = directions(model, args.data_root, args.train_faces)
    per_person = {name: v.expand_as(z["neutral"]) for name, v in candidates.items()}
    per_person["London pairs, leave one out (oracle)"] = (paired.sum(0) - paired) / (n - 1)
    smile = torch.ones(n, 1)
    rows, payload = [], {"people": n, "train_faces": args.train_faces, "scales": args.scales,
                         "directions": {}}
    for name, v in per_person.items():
        mean = v.mean(0)  # the direction itself; the oracle's differs per person
        norm = float(mean.norm())
        cosine = float(F.cosine_similarity(mean.flatten(), paired.mean(0).flatten(), 0))
        with torch.inference_mode():
            strengths = [edit_strength(x["neutral"],
                                       model.decode(z["neutral"] + k * v, smile).clamp(-1, 1),
                                       real) for k in args.scales]
        payload["directions"][name] = {"norm": norm, "cosine": cosine, "strength": strengths}
        rows.append({"direction": name, "norm": f"{norm:.2f}",
                     "cosine with the London pairs' mean": f"{cosine:.2f}",
                     **{f"k = {k:g}": f"{s:.2f}" for k, s in zip(args.scales, strengths)}})
    columns = ["direction", "norm", "cosine with the London pairs' mean",
               *(f"k = {k:g}" for k in args.scales)]
    setup = (f"Model: {args.model or 'bundled'} ({editor.img_size} px). Directions from the "
             f"latents of {args.train_faces} train-split faces; the London pairs' mean latent "
             f"difference has norm {float(paired.mean(0).norm()):.2f} (one person's: "
             f"{float(paired.flatten(1).norm(dim=1).mean()):.2f} on average). Each k column: "
             f"decode(z + k v, Smiling=1) of the {n} neutral London crops, its mean change "
             f"projected on d = their mean smiling crop minus their mean neutral one (1 = as far "
             f"as their real smiles).")
    path = write_report(args.out, "latent_directions", "Latent directions for Smiling",
                        [("Setup", setup), ("Results", markdown_table(columns, rows))], payload)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
