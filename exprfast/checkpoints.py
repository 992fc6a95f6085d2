"""Every file format of exprfast, and the one way each is read.

All are ``torch.save`` dicts of tensors and plain data with ``"format"`` and ``"version"``, written
atomically (``files.atomic_torch_save``) and read with ``torch.load(weights_only=True)``, so a file
carrying code is refused, never run.

* training checkpoint (``run_dir/checkpoint-<step>.pt``, ``exprfast-train-checkpoint``): what
  ``exprfast.training`` needs to resume exactly (see ``Trainer.state_dict``);
* model file (``exprfast-model``): ``config`` (``build(**config)``), ``state_dict`` (float16 by
  default, the latent discriminator usually left out), ``meta``, and optionally ``reader``: the
  ``AttributeReader`` (``config`` + ``state_dict``) that reads a photo's attribute values, and
  ``refiner``: the ``MouthRefiner`` (``config`` + ``state_dict``) that redraws decoded mouths;
* classifier file (``exprfast-classifier``): the evaluation judge (``AttributeClassifier``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .checks import one_line
from .files import atomic_torch_save
from .models import AttributeClassifier, AttributeReader, FaderModel, MouthRefiner, build

TRAIN_FORMAT, TRAIN_VERSION = "exprfast-train-checkpoint", 1
MODEL_FORMAT, MODEL_VERSION = "exprfast-model", 1
CLASSIFIER_FORMAT, CLASSIFIER_VERSION = "exprfast-classifier", 1
PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = PACKAGE_DIR / "pretrained" / "smiling.pt"  # the bundled model
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)\.pt")
_DISCRIMINATOR = "latent_discriminator."


def read_payload(path: str | os.PathLike, what: str, formats: dict[str, int],
                 map_location="cpu") -> dict:
    """The dict saved at ``path`` if its ``format`` is one of ``formats`` (name -> the version
    read); otherwise FileNotFoundError or a one-line ValueError naming ``path`` and ``what`` it
    should have been."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # pickle, zip and runtime errors on foreign or damaged files
        raise ValueError(f"{path} is not an exprfast {what} ({_load_failure(error)})") from None
    found = payload.get("format") if isinstance(payload, dict) else None
    if found not in formats:
        kind = f"format {found!r}" if found is not None else f"a {type(payload).__name__}"
        raise ValueError(f"{path} is not an exprfast {what} ({kind}, expected "
                         f"{' or '.join(map(repr, formats))})")
    if payload.get("version") != formats[found]:
        raise ValueError(f"{path} is {what} version {payload.get('version')!r}; this exprfast "
                         f"reads version {formats[found]}")
    return payload


def _load_failure(error: Exception) -> str:
    """Why torch.load failed, in words that never suggest loading the file unsafely (torch's own
    message recommends ``weights_only=False``, which would run any code the file carries)."""
    if "GLOBAL" in str(error) or "Unsupported global" in str(error):
        return "it holds Python objects other than tensors and plain data, which are never loaded"
    return "unreadable: damaged, or not a file written by torch.save"


# ----------------------------------------------------------------------------- training runs


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """A training checkpoint."""
    return read_payload(path, "training checkpoint", {TRAIN_FORMAT: TRAIN_VERSION}, map_location)


def model_from_checkpoint(path: str | os.PathLike, map_location="cpu") -> nn.Module:
    """The trained FaderModel of a training checkpoint, in eval mode."""
    payload = load_checkpoint(path, map_location)
    model = build(**payload["model_config"])
    model.load_state_dict(payload["model"])
    return model.to(map_location).eval()


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{step:07d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoints in ``run_dir``, oldest step first."""
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.glob("checkpoint-*.pt")
             if (m := _CHECKPOINT_NAME.fullmatch(p.name))] if run_dir.is_dir() else []
    return [p for _, p in sorted(found)]


# ----------------------------------------------------------------------------- model files


class ModelFile(NamedTuple):
    """What ``load_model`` returns: the model (float32, eval mode), the reader or None, meta,
    the mouth refiner or None."""

    model: FaderModel
    reader: AttributeReader | None
    meta: dict
    refiner: MouthRefiner | None = None


def save_model(model: FaderModel, path: str | os.PathLike, meta: dict | None = None,
               half: bool = True, discriminator: bool = True,
               reader: AttributeReader | None = None,
               refiner: MouthRefiner | None = None) -> None:
    """Write a model file (see the module docstring): float16 tensors when ``half``, without
    the latent discriminator unless ``discriminator`` (editing does not need it)."""
    state = {k: v for k, v in model.state_dict().items()
             if discriminator or not k.startswith(_DISCRIMINATOR)}
    payload = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "config": dict(model.config),
               "state_dict": _portable(state, half), "meta": dict(meta or {})}
    for name, part in (("reader", reader), ("refiner", refiner)):
        if part is not None:
            payload[name] = {"config": dict(part.config),
                             "state_dict": _portable(part.state_dict(), half)}
    atomic_torch_save(payload, path)


def load_model(path: str | os.PathLike | None = None) -> ModelFile:
    """The model file at ``path`` (default the bundled ``DEFAULT_MODEL``); a training
    checkpoint works too (its step and training config become ``meta``). FileNotFoundError if
    missing, ValueError naming the file and the problem if it is not a valid model."""
    if path is None:
        if not DEFAULT_MODEL.is_file():
            raise FileNotFoundError(f"no bundled model at {DEFAULT_MODEL}: pass a model file "
                                    "(--model PATH), e.g. one written by exprfast export")
        path = DEFAULT_MODEL
    payload = read_payload(path, "model file", {MODEL_FORMAT: MODEL_VERSION,
                                                TRAIN_FORMAT: TRAIN_VERSION})
    if payload["format"] == TRAIN_FORMAT:
        parts = {name: None if payload.get(name) is None else
                 {"config": payload.get(f"{name}_config"), "state_dict": payload[name]}
                 for name in ("reader", "refiner")}
        payload = {"config": payload.get("model_config"), "state_dict": payload.get("model"),
                   **parts, "meta": {"step": payload.get("step"),
                                     "train_config": payload.get("train_config")}}
    model = _rebuild(path, build, payload, optional=_DISCRIMINATOR)
    reader, refiner = (None if payload.get(name) is None else _rebuild(path, kind, payload[name])
                       for name, kind in (("reader", AttributeReader), ("refiner", MouthRefiner)))
    if refiner is not None:
        try:
            refiner.check_fits(model)
        except ValueError as error:
            raise ValueError(f"{path} does not hold a valid model: {error}") from None
    meta = payload.get("meta")
    return ModelFile(model, reader, meta if isinstance(meta, dict) else {}, refiner)


def holds_discriminator(path: str | os.PathLike) -> bool:
    """Whether the model file or training checkpoint at ``path`` holds the latent
    discriminator's trained weights (``load_model`` builds a fresh one where it does not)."""
    payload = read_payload(path, "model file", {MODEL_FORMAT: MODEL_VERSION,
                                                TRAIN_FORMAT: TRAIN_VERSION})
    state = payload.get("model" if payload["format"] == TRAIN_FORMAT else "state_dict")
    return isinstance(state, dict) and any(k.startswith(_DISCRIMINATOR) for k in state)


def _rebuild(path, constructor, payload: dict, optional: str | None = None) -> nn.Module:
    """``constructor(**config)`` with ``state_dict`` loaded as float32, eval mode; keys starting
    with ``optional`` may be absent."""
    config, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise ValueError(f"{path} is damaged: it lacks a config or state_dict")
    try:
        module = constructor(**config)
        state = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v
                 for k, v in state.items()}
        missing, unexpected = module.load_state_dict(state, strict=False)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path} does not hold a valid model: {one_line(error)}") from None
    missing = [k for k in missing if optional is None or not k.startswith(optional)]
    if missing or unexpected:
        raise ValueError(f"{path} does not hold a valid model: missing weights {missing[:3]}, "
                         f"unexpected weights {unexpected[:3]}")
    return module.eval()


def _portable(state: dict, half: bool) -> dict:
    """CPU copies, floating-point ones in float16 when ``half``."""
    return {k: (v.detach().cpu().to(torch.float16) if half and v.is_floating_point()
                else v.detach().cpu()).clone() for k, v in state.items()}


# ----------------------------------------------------------------------------- classifiers


def save_classifier(classifier: AttributeClassifier, path: str | os.PathLike,
                    meta: dict) -> None:
    """Write the evaluation classifier with its ``meta`` (accuracy, training details)."""
    atomic_torch_save({"format": CLASSIFIER_FORMAT, "version": CLASSIFIER_VERSION,
                       "config": classifier.config,
                       "state_dict": _portable(classifier.state_dict(), half=False),
                       "meta": meta}, path)


def load_classifier(path: str | os.PathLike,
                    map_location: str | torch.device = "cpu") -> AttributeClassifier:
    """A classifier written by ``save_classifier``, eval mode, its meta as ``.meta``."""
    payload = read_payload(path, "classifier file", {CLASSIFIER_FORMAT: CLASSIFIER_VERSION},
                           map_location)
    classifier = _rebuild(path, AttributeClassifier, payload)
    classifier.meta = payload.get("meta", {})
    return classifier.to(map_location)
