"""Evaluation of attribute-transfer models, as Fader Networks reports it.

* The judge is Fader's evaluation classifier (``models.AttributeClassifier``), independent of
  every network used in training: its own architecture and seed, trained on the train split
  only, never used as a loss. ``train_classifier`` trains it (horizontal flips, Adam with betas
  (0.5, 0.999), gradient norm clipped at 5, as Fader's ``classifier.py``) and measures its
  accuracy on the test split; ``checkpoints.save_classifier``/``load_classifier`` store it.
* ``evaluate`` measures a model on a split: reconstruction PSNR and SSIM, and the swap accuracy
  of each attribute -- every image decoded with the attribute set to 0, then to 1 (the others
  kept at their true values), and the fraction the classifier reads back as the value set --,
  and how much of the real mouths' fine detail the reconstructions keep. Given the model file's
  mouth refiner, every decoding is refined first, as edits are. A judge that also reads
  attributes the model does not edit (e.g. Mouth_Slightly_Open) tells what else a flip changes:
  how often it reads them in the flipped faces, beside the real faces that have the value set.
  ``write_results`` writes the numbers as JSON and as a markdown table.
* ``latent_probe``: how much of each attribute a Fader latent still carries. A fresh latent
  discriminator (the model's own architecture, the training recipe's Adam) learns the attributes
  from the latents of training faces; its accuracy on held-out latents is the answer (the
  majority class's share: nothing left). The model's own discriminator is no measure: the
  encoder is trained to fool that one.
* ``edit_strength``: how far edits move faces along a direction such as the mean smiling face
  minus the mean neutral one (``scripts/slider_strength.py``, ``scripts/london_pairs.py``);
  ``regional_strengths`` the same within each of ``FACE_REGIONS`` (the mouth, the eyes, the
  rest), since a whole-face direction also holds what differs between the two sets of photos
  besides the smile (lighting, pose, the looks that go with smiling in CelebA).
* ``sharpness``: how much fine detail (edges, teeth) faces have in a region, to compare edits
  with real faces: a soft, blurred mouth scores low.

Data comes from ``data.open_split``: the same data-root rule as training (CelebA-HQ or class
folders).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from pytorch_msssim import ssim as _msssim_ssim
from torch import nn
from tqdm import tqdm

from .checkpoints import save_classifier
from .checks import check_attr_names, check_positive_int
from .data import (DEFAULT_ATTRS, FACE_REGIONS, FaceDataset, crop_region, open_split,
                   region_box)
from .models import AttributeClassifier, build, classifier_loss, resize
from .models.classifiers import luma

_MAX_GRAD_NORM = 5.0  # Fader's classifier.py default
_ADAM_BETAS = (0.5, 0.999)  # Fader's get_optimizer("adam")


# ----------------------------------------------------------------------------- metrics


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB of ``(N, C, H, W)`` batches; the default range is that of images in
    [-1, 1]. Identical images give ``inf``."""
    _check_same_shape(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range**2 / mse)).float()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of ``(N, 3, H, W)`` batches of images in [-1, 1] (Wang et al. 2004:
    11x11 Gaussian window, sigma 1.5, K = (0.01, 0.03), channels averaged).

    pytorch-msssim computes it: a small pure-torch package (batched, any device, no SciPy),
    unlike scikit-image, which would mean NumPy round trips and a large dependency tree.
    """
    _check_same_shape(x, y)
    return _msssim_ssim((x + 1) / 2, (y + 1) / 2, data_range=1.0, size_average=False)


def edit_strength(before: torch.Tensor, after: torch.Tensor, direction: torch.Tensor) -> float:
    """How far edits moved ``(N, C, H, W)`` faces along ``direction`` (e.g. the mean smiling face
    minus the mean neutral one), on average, in units of it: the mean of ``after - before``
    projected on ``direction``. 1 = as far as ``direction`` itself."""
    return _projection(_mean_change(before, after), direction)


def _mean_change(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    _check_same_shape(before, after)
    return (after.double() - before.double()).mean(0)


def _projection(change: torch.Tensor, direction: torch.Tensor) -> float:
    """``change`` projected on ``direction``, in units of it."""
    return float((change * direction).sum() / direction.double().pow(2).sum())


def region_masks(size: int) -> dict[str, torch.Tensor]:
    """``{name: (1, size, size) 0/1 mask}`` of each of ``FACE_REGIONS`` and of "rest"."""
    masks = {}
    for name in FACE_REGIONS:
        top, bottom, left, right = region_box(name, size)
        mask = torch.zeros(1, size, size)
        mask[:, top:bottom, left:right] = 1
        masks[name] = mask
    masks["rest"] = 1 - torch.stack(list(masks.values())).amax(0)
    return masks


def regional_strengths(before: torch.Tensor, after: torch.Tensor,
                       direction: torch.Tensor) -> dict[str, float]:
    """``edit_strength`` along ``direction`` restricted to each region of ``region_masks``
    (``{region: strength}``, 1 = as far as the direction within that region)."""
    change = _mean_change(before, after)  # once: the faces' mean change, for every region
    return {name: _projection(change, direction * mask)
            for name, mask in region_masks(direction.shape[-1]).items()}


def regional_shares(direction: torch.Tensor, other: torch.Tensor | None = None) -> dict:
    """Per region: the share of ``direction``'s energy (sum of squares) that lies in it, and,
    given ``other`` (a second direction, e.g. another data set's), their cosine there."""
    energy = direction.double().pow(2).sum()
    shares = {}
    for name, mask in region_masks(direction.shape[-1]).items():
        inside = (direction.double() * mask).flatten()
        shares[name] = {"energy_share": float(inside.pow(2).sum() / energy)}
        if other is not None:
            theirs = (other.double() * mask).flatten()
            shares[name]["cosine"] = float(inside @ theirs / (inside.norm() * theirs.norm()))
    return shares


_LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def sharpness(images: torch.Tensor, region: str | None = None) -> float:
    """Mean squared 3x3 Laplacian of the luma of ``(N, 3, S, S)`` faces in [-1, 1], within
    ``FACE_REGIONS[region]`` (None: the whole face; the filter stays inside it). 0 for flat
    faces; blurring lowers it. A ratio of two such numbers (edits over real faces) is the
    measure, not the number itself."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"sharpness needs (N, 3, S, S) RGB faces, got shape {tuple(images.shape)}")
    faces = images if region is None else crop_region(images, region)
    grey = luma(faces.double())
    kernel = grey.new_tensor(_LAPLACIAN).view(1, 1, 3, 3)
    return float(nn.functional.conv2d(grey, kernel).pow(2).mean())


def coupled_changes(attr: str, value: float, couple=()) -> dict[str, float]:
    """The attribute values of a slider edit whose strength is measured: ``attr`` and each
    attribute of ``couple`` (e.g. Mouth_Slightly_Open beside Smiling) set to ``value``."""
    return {attr: value, **{name: value for name in couple}}


# ----------------------------------------------------------------------------- classifier


def classifier_accuracy(
    classifier: AttributeClassifier, dataset: FaceDataset, batch_size: int = 64
) -> dict[str, float]:
    """Per attribute, the fraction of ``dataset`` (opened with ``classifier.attrs``) classified
    right."""
    device = _device_of(classifier)
    hits = torch.zeros(len(classifier.attrs), dtype=torch.float64)
    with _eval_mode(classifier), torch.no_grad():
        for images, labels in _batches(dataset, len(dataset), batch_size):
            predicted = classifier.predict(images.to(device)).cpu()
            hits += (predicted == labels.long()).sum(0)
    return dict(zip(classifier.attrs, (hits / len(dataset)).tolist()))


class ClassifierRun(NamedTuple):
    """What ``train_classifier`` returns: the classifier (eval mode), the loss of every step and
    the ``meta`` stored with it."""

    classifier: AttributeClassifier
    losses: list[float]
    meta: dict


def train_classifier(
    data_root: str | os.PathLike | None = None,
    img_size: int = 64,
    attrs: Sequence[str] = DEFAULT_ATTRS,
    steps: int = 1500,
    batch_size: int = 32,
    lr: float = 1e-3,
    out_path: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ClassifierRun:
    """Train an ``AttributeClassifier`` on the train split of the faces at ``data_root`` and
    measure its accuracy on the test split; saved to ``out_path`` when given.

    ``limit`` keeps only the first ``limit`` listed images before splitting (as
    ``FaceDataset``), for quick runs; ``meta["train_seconds"]`` times the training steps only.
    """
    check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    attrs = list(check_attr_names(attrs))
    train = open_split(data_root, img_size, "train", attrs=attrs, flip=True, limit=limit,
                       cache_dir=cache_dir)
    test = open_split(data_root, img_size, "test", attrs=attrs, limit=limit, cache_dir=cache_dir)
    if batch_size > len(train):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(train)} training images")
    device = torch.device(_default_device() if device is None else device)
    # Seeded initialisation that leaves the caller's global RNG as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = AttributeClassifier(img_size, attrs).to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr, betas=_ADAM_BETAS)
    batches = _endless_batches(train, batch_size, torch.Generator().manual_seed(seed))

    classifier.train()
    losses = []
    start = time.perf_counter()
    for _ in tqdm(range(steps), desc="exprfast: training classifier", disable=not progress):
        images, labels = next(batches)
        loss = classifier_loss(classifier(images.to(device)), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(classifier.parameters(), _MAX_GRAD_NORM)
        optimizer.step()
        losses.append(loss.item())
    train_seconds = time.perf_counter() - start
    classifier.eval()

    meta = {
        "test_accuracy": classifier_accuracy(classifier, test),
        "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "train_seconds": round(train_seconds, 2),
        "n_train": len(train), "n_test": len(test), "final_loss": losses[-1],
    }
    if out_path is not None:
        save_classifier(classifier, out_path, meta)
    return ClassifierRun(classifier, losses, meta)


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    model: nn.Module,
    classifier: nn.Module,
    data_root: str | os.PathLike | None = None,
    img_size: int | None = None,
    attrs: Sequence[str] | None = None,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 64,
    *,
    cache_dir: str | os.PathLike | None = None,
    refiner: nn.Module | None = None,
) -> dict:
    """Reconstruction and swap metrics of ``model`` on ``split`` of the faces at ``data_root``.

    ``img_size`` defaults to (and must equal) ``model.img_size``; ``attrs`` are the model
    attributes to swap (default all). ``limit`` evaluates the first ``limit`` images of the split
    (the split itself is that of the whole data set, so test images stay unseen in training).
    See ``evaluate_dataset`` for the result.
    """
    if img_size is not None and img_size != model.img_size:
        raise ValueError(f"img_size {img_size} differs from the model's {model.img_size}")
    dataset = open_split(data_root, model.img_size, split, attrs=model.attrs, cache_dir=cache_dir)
    results = evaluate_dataset(model, classifier, dataset, attrs, limit, batch_size,
                               refiner=refiner)
    return {"split": split, **results}


def evaluate_dataset(
    model: nn.Module,
    classifier: nn.Module,
    dataset,
    attrs: Sequence[str] | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    *,
    refiner: nn.Module | None = None,
) -> dict:
    """Metrics of ``model`` on ``dataset`` (anything with ``len`` and ``batch(indices) ->
    (images, labels)``, labels in ``model.attrs`` order), its decodings passed through
    ``refiner`` (a ``MouthRefiner``) when one is given.

    ``model`` needs ``attrs``, ``img_size``, ``encode(x) -> z``, ``decode(z, attrs) -> x_hat``;
    ``classifier`` needs ``attrs``, ``img_size`` and ``forward(x) -> (N, A, 2)`` logits. Both run
    in eval mode without gradients on the model's device (the classifier is moved there).
    Decoded images are clamped to [-1, 1], the range of real images.

    Returns ``n_images``, ``img_size``, ``attrs``, ``psnr`` (dB) and ``ssim`` (means over images
    of the reconstruction with the true attributes), ``swap_accuracy`` ``{attr: {"0", "1",
    "mean"}}``, ``swap_accuracy_mean``, ``flip_success`` ``{attr: {"to_1", "to_0"}}`` (of the
    images without the attribute, the fraction read as having it once it is set to 1, and the
    converse), ``classifier_accuracy`` (on the real images: the ceiling for swap accuracy),
    ``side_effects`` ``{attr: {other: {"to_1", "real_1", "to_0", "real_0"}}}`` for each
    attribute ``other`` the classifier reads and the model does not have (of the images flipped
    to 1, the fraction the classifier reads as having ``other``; of the real images with the
    attribute, the same; and at 0), ``mouth_detail`` (``sharpness`` of the reconstructions'
    mouths over the real ones'),
    ``refiner`` (whether one was used) and ``seconds``.
    """
    attrs = list(model.attrs) if attrs is None else list(check_attr_names(attrs))
    _check_compatible(model, classifier, attrs)
    if limit is not None:
        check_positive_int(limit, "limit")
    check_positive_int(batch_size, "batch_size")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    model_cols = [list(model.attrs).index(a) for a in attrs]
    clf_cols = [list(classifier.attrs).index(a) for a in attrs]
    others = [a for a in classifier.attrs if a not in model.attrs]
    other_cols = [list(classifier.attrs).index(a) for a in others]
    device = _device_of(model)
    classifier.to(device)

    start = time.perf_counter()
    psnr_sum = ssim_sum = recon_detail = real_detail = 0.0
    if refiner is not None:
        refiner.to(device)

    def show(decoded, values):  # what edits show: the decoding, refined when there is one
        # (at the model's size: a finer refiner's faces are judged as the model's)
        return decoded if refiner is None else resize(refiner(decoded, values), decoded.shape[-1])

    real_hits = torch.zeros(len(attrs), dtype=torch.float64)
    swap_hits = torch.zeros(len(attrs), 2, 2, dtype=torch.float64)  # attr, value set, true
    true_counts = torch.zeros(len(attrs), 2, dtype=torch.float64)
    # attr, value set (or the real image: 2), true value, other attribute: read as present
    other_reads = torch.zeros(len(attrs), 3, 2, len(others), dtype=torch.float64)
    with _eval_mode(model, classifier, *([refiner] if refiner is not None else [])), \
            torch.no_grad():
        for images, labels in _batches(dataset, n, batch_size):
            images, labels = images.to(device), labels.to(device)
            z = model.encode(images)
            recon = show(model.decode(z, labels), labels).clamp(-1, 1)
            psnr_sum += psnr(recon, images).sum().item()
            ssim_sum += ssim(recon, images).sum().item()
            recon_detail += sharpness(recon, "mouth") * len(images)
            real_detail += sharpness(images, "mouth") * len(images)
            read = classifier(images).argmax(-1)
            real_hits += (read[:, clf_cols] == labels[:, model_cols].long()).sum(0).cpu()
            hits, reads = _swap_hits(model, show, classifier, z, labels, model_cols, clf_cols,
                                     other_cols)
            swap_hits += hits
            true = (labels[:, model_cols] > 0.5).long().cpu()
            other_reads[:, :2] += reads
            for k in range(len(attrs)):
                other_reads[k, 2] += _count_by(true[:, k], read[:, other_cols].cpu())
            true_counts += torch.stack([(true == 0).sum(0), (true == 1).sum(0)], 1).double()

    swap = swap_hits.sum(2) / n
    to_1 = _ratios(swap_hits[:, 1, 0], true_counts[:, 0])
    to_0 = _ratios(swap_hits[:, 0, 1], true_counts[:, 1])
    return {
        "n_images": n,
        "img_size": model.img_size,
        "attrs": attrs,
        "psnr": psnr_sum / n,
        "ssim": ssim_sum / n,
        "swap_accuracy": {
            a: {"0": row[0], "1": row[1], "mean": (row[0] + row[1]) / 2}
            for a, row in zip(attrs, swap.tolist())
        },
        "swap_accuracy_mean": swap.mean().item(),
        "flip_success": {a: {"to_1": one, "to_0": zero} for a, one, zero in zip(attrs, to_1, to_0)},
        "classifier_accuracy": dict(zip(attrs, (real_hits / n).tolist())),
        "side_effects": {a: {other: _side_effect(other_reads[k, ..., j], true_counts[k])
                                 for j, other in enumerate(others)}
                             for k, a in enumerate(attrs)},
        "mouth_detail": recon_detail / real_detail if real_detail else None,
        "refiner": refiner is not None,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _ratios(hits: torch.Tensor, counts: torch.Tensor) -> list:
    """hits / counts per attribute; None where the count is 0 (no such image in the split)."""
    return [h / c if c else None for h, c in zip(hits.tolist(), counts.tolist())]


def _side_effect(reads: torch.Tensor, true_counts: torch.Tensor) -> dict:
    """``evaluate_dataset``'s ``side_effects`` entry from ``reads`` ``[value set (2: real),
    true value]`` and the ``true_counts`` of each true value."""
    keys = {"to_1": (1, 0), "real_1": (2, 1), "to_0": (0, 1), "real_0": (2, 0)}
    return {key: (reads[row, true] / true_counts[true]).item() if true_counts[true] else None
            for key, (row, true) in keys.items()}


def _count_by(true: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
    """``(2, B)``: per true value (0/1), the number of images whose ``read`` (N, B) is 1."""
    return torch.zeros(2, read.shape[1], dtype=torch.float64).index_add_(0, true, read.double())


def _swap_hits(model, show, classifier, z, labels, model_cols, clf_cols,
               other_cols) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, 2, 2)`` counts of images with true value ``t`` decoded with attribute ``a`` set to
    ``v`` (the others kept; then ``show(decoded, values)``) that the classifier reads as ``v``
    (index ``[a, v, t]``): Fader's ``eval_clf_accuracy``, split by the true value; and
    ``(A, 2, 2, B)`` counts of the same images read as having each attribute of ``other_cols``
    (classifier columns)."""
    hits = torch.zeros(len(model_cols), 2, 2, dtype=torch.float64)
    reads = torch.zeros(len(model_cols), 2, 2, len(other_cols), dtype=torch.float64)
    for k, (m, c) in enumerate(zip(model_cols, clf_cols)):
        true = (labels[:, m] > 0.5).long()
        swaps = [labels.clone() for _ in (0, 1)]
        for value, swapped in enumerate(swaps):
            swapped[:, m] = value
        # one first-layer conv for both values (FaderModel.decode_many; eval mode: the same
        # result as two decodes)
        for value, decoded in enumerate(model.decode_many(z, swaps)):
            shown = show(decoded, swaps[value]).clamp(-1, 1)
            read = classifier(shown).argmax(-1).cpu()
            right = (read[:, c] == value).double()
            hits[k, value] = torch.zeros(2, dtype=torch.float64).index_add_(0, true.cpu(), right)
            reads[k, value] = _count_by(true.cpu(), read[:, other_cols])
    return hits, reads


def write_results(results: dict, out_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write ``results`` to ``out_dir/name.json`` and a markdown table to ``out_dir/name.md``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(results_markdown(results, name))
    return json_path, md_path


def results_markdown(results: dict, name: str) -> str:
    """Markdown summary of ``evaluate`` results."""
    split = results.get("split", "evaluation")
    lines = [
        f"# {name}",
        "",
        f"{results['n_images']} {split} images at {results['img_size']} px.",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| reconstruction PSNR | {results['psnr']:.2f} dB |",
        f"| reconstruction SSIM | {results['ssim']:.4f} |",
        f"| swap accuracy (mean) | {percent(results['swap_accuracy_mean'])} |",
        "| mouth detail of reconstructions (real mouths = 1) | "
        f"{_number(results['mouth_detail'])} |",
        f"| mouth refiner | {'yes' if results['refiner'] else 'no'} |",
        "",
        "| attribute | swapped to 0 | swapped to 1 | swap mean | flip 0 → 1 | flip 1 → 0 "
        "| classifier on real images |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for attr in results["attrs"]:
        swap, flip = results["swap_accuracy"][attr], results["flip_success"][attr]
        cells = [swap["0"], swap["1"], swap["mean"], flip["to_1"], flip["to_0"],
                 results["classifier_accuracy"][attr]]
        lines.append(f"| {attr} | " + " | ".join(map(percent, cells)) + " |")
    effects = [(attr, other, rates) for attr, row in results.get("side_effects", {}).items()
               for other, rates in row.items()]
    if effects:
        lines += ["", "What else the flips change (the judge's reading of attributes the model "
                  "does not edit):", "",
                  "| flipped | read | flipped to 1 | real with it | flipped to 0 | real without "
                  "it |", "| --- | --- | --- | --- | --- | --- |"]
        for attr, other, rates in effects:
            cells = [rates[key] for key in ("to_1", "real_1", "to_0", "real_0")]
            lines.append(f"| {attr} | {other} | " + " | ".join(map(percent, cells)) + " |")
    return "\n".join(lines) + "\n"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# ----------------------------------------------------------------------------- latent probe


@torch.no_grad()
def encode_split(model: nn.Module, dataset: FaceDataset, n: int | None = None,
                 batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(latents, labels)`` of the first ``n`` (default all) faces of ``dataset``, encoded by
    ``model`` in eval mode; on the CPU."""
    n = len(dataset) if n is None else min(n, len(dataset))
    device, latents, labels = _device_of(model), [], []
    with _eval_mode(model):
        for images, attrs in _batches(dataset, n, batch_size):
            latents.append(model.encode(images.to(device)).float().cpu())
            labels.append(attrs)
    return torch.cat(latents), torch.cat(labels)


def latent_probe(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor],
                 held_out: tuple[torch.Tensor, torch.Tensor],
                 steps: Sequence[int] = (100, 300, 1000), batch_size: int = 32,
                 seed: int = 0) -> dict:
    """How well a fresh latent discriminator reads the attributes back from a Fader ``model``'s
    latents (module docstring). ``train``/``held_out``: ``(latents, labels)`` from
    ``encode_split``. Trained for ``max(steps)`` steps of ``batch_size`` (Adam 2e-4, betas (0.5,
    0.999), gradient norm clipped at 5: the training recipe's); returns ``{"steps", "accuracy":
    per step in ``steps``, the held-out accuracy per attribute, "majority": the held-out share of
    each attribute's commoner class}``."""
    for step in steps:
        check_positive_int(step, "steps")
    steps = sorted(set(steps))
    if not steps:
        raise ValueError("latent_probe needs at least one number of steps")
    (z, y), (z_out, y_out) = train, held_out
    if len(z) == 0 or len(z_out) == 0:
        raise ValueError("latent_probe needs latents to train on and held-out ones to score")
    with torch.random.fork_rng(devices=[]):  # seeded weights and dropout, the caller's RNG kept
        torch.manual_seed(seed)
        return _train_probe(build(**model.config).latent_discriminator.float(), z, y, z_out,
                            y_out, steps, batch_size, torch.Generator().manual_seed(seed))


def _train_probe(probe, z, y, z_out, y_out, steps, batch_size, generator) -> dict:
    """``latent_probe``'s training and scoring, with the RNG already seeded."""
    optimizer = torch.optim.Adam(probe.parameters(), lr=2e-4, betas=_ADAM_BETAS)
    targets, targets_out = (y > 0.5).long(), (y_out > 0.5).long()
    accuracy = []
    for step in range(1, steps[-1] + 1):
        probe.train()
        rows = torch.randint(len(z), (batch_size,), generator=generator)
        logits = probe(z[rows]).view(batch_size, -1, 2)
        loss = classifier_loss(logits, targets[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(probe.parameters(), _MAX_GRAD_NORM)
        optimizer.step()
        if step in steps:
            with _eval_mode(probe), torch.no_grad():
                read = torch.cat([probe(part) for part in z_out.split(256)])
            hits = read.view(len(z_out), -1, 2).argmax(-1) == targets_out
            accuracy.append(hits.float().mean(0).tolist())
    share = targets_out.float().mean(0)
    return {"steps": steps, "accuracy": accuracy,
            "majority": torch.maximum(share, 1 - share).tolist()}


# ----------------------------------------------------------------------------- helpers


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Eval mode inside the block, each module's own mode restored after it."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def _batches(dataset, n: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` items of ``dataset`` in order, ``batch_size`` at a time."""
    for start in range(0, n, batch_size):
        yield dataset.batch(torch.arange(start, min(start + batch_size, n)))


def _endless_batches(dataset: FaceDataset, batch_size: int, generator: torch.Generator):
    while True:
        yield from dataset.iter_batches(batch_size, generator=generator)


def _check_compatible(model: nn.Module, classifier: nn.Module, attrs: list[str]) -> None:
    missing_in_model = [a for a in attrs if a not in model.attrs]
    if missing_in_model:
        raise ValueError(
            f"unknown attrs {missing_in_model}; the model's attributes are {list(model.attrs)}"
        )
    missing = [a for a in attrs if a not in classifier.attrs]
    if missing:
        raise ValueError(
            f"the classifier does not predict {missing} (it predicts {list(classifier.attrs)}); "
            "train one with those attributes"
        )
    if classifier.img_size != model.img_size:
        raise ValueError(
            f"the classifier takes {classifier.img_size} px images but the model makes "
            f"{model.img_size} px ones"
        )


def _check_same_shape(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two (N, C, H, W) batches of one shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
