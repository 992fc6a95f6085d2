"""exprfast: fast facial expression and attribute transfer for PyTorch.

``import exprfast`` needs no compiled extension: data, faces, checkpoints and the non-fused
presets are pure Python. The fused op (``exprfast.up_label_conv``, ``exprfast.op``,
``exprfast.nn``) loads it on first use and refuses plainly, naming the fix, when it is missing or
was built for another torch. Editing: ``exprfast.load(path=None)`` (the bundled model by default)
and ``exprfast.edit_photo(image, changes, model=None)``.
"""
import importlib

__version__ = "0.1.0"

# Public names, each imported from its module on first use.
_LAZY = {
    "up_label_conv": ("op", "up_label_conv"),
    "nn": ("op", "nn"),
    "reference": ("op", "reference"),
    "load": ("editing", "load"),
    "edit_photo": ("editing", "edit_photo"),
    "Editor": ("editing", "Editor"),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'exprfast' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value


def backend_info():
    """Which kernels this build has: {"cpu": True, "cuda": bool, "torch_version": str, ...}."""
    import torch

    from .op import BUILD_INFO

    info = dict(BUILD_INFO)
    info["cuda_available"] = bool(info["cuda"]) and torch.cuda.is_available()
    return info


__all__ = ["Editor", "backend_info", "edit_photo", "load", "nn", "reference", "up_label_conv",
           "__version__"]
