"""Loads the compiled extension, refusing plainly when it is missing or built for another torch."""
from pathlib import Path

import torch

_HOW_TO_BUILD = (
    "Build it from the repository root against the torch you run with:\n"
    "    pip install -r requirements-build.txt    # pins the CPU wheel torch==2.13.0\n"
    "    pip install --no-build-isolation -e .\n"
    "(a plain `pip install torch` pulls a multi-GB CUDA build; see README.md, 'Install')."
)


def _source_tree_hint():
    package = Path(__file__).resolve().parent.parent
    if not (package.parent / "CMakeLists.txt").is_file():
        return ""
    return (f"\nNote: this is the source tree at {package}; if exprfast is installed, Python "
            "found the source first (run from another folder, or `python -P`).")


def load():
    try:
        from .. import _C
    except ImportError as err:
        raise ImportError(
            f"exprfast's compiled extension (exprfast._C) is not built or cannot be loaded: {err}\n"
            + _HOW_TO_BUILD + _source_tree_hint()
        ) from err
    info = _C.build_info()
    if info["torch_version"] != torch.__version__:
        raise ImportError(
            f"exprfast._C was built against torch {info['torch_version']} but torch "
            f"{torch.__version__} is installed; an extension only works with the torch it was "
            "built against. Rebuild it:\n" + _HOW_TO_BUILD
        )
    return info
