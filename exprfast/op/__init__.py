"""The fused op ``upsample x2 -> concat label maps -> conv 3x3 -> bias`` and its layers.

Importing this package loads the compiled extension (``_extension``) and refuses plainly, naming
the fix, when it is missing or was built for another torch. ``reference`` holds the definition in
plain PyTorch; ``nn`` the layers built on the op.
"""
from . import nn, reference
from .ops import BUILD_INFO, up_label_conv

__all__ = ["BUILD_INFO", "nn", "reference", "up_label_conv"]
