"""exprfast: fast facial expression and attribute transfer for PyTorch.

``import exprfast`` loads the compiled extension and fails plainly, saying how to build it, when it
is missing or was built against another torch.
"""
from . import nn, reference
from .ops import BUILD_INFO, up_label_conv

__version__ = "0.1.0"


def backend_info():
    """Which kernels this build has: {"cpu": True, "cuda": bool, "torch_version": str, ...}."""
    import torch

    info = dict(BUILD_INFO)
    info["cuda_available"] = bool(info["cuda"]) and torch.cuda.is_available()
    return info


__all__ = ["up_label_conv", "backend_info", "nn", "reference", "__version__"]
