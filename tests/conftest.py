"""Shared test fixtures: devices, real-data paths (tests that need them skip when absent), a fake
CelebA-HQ folder and synthetic class folders."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torch import nn

from exprfast.data import ATTR_FILE
from exprfast.models import build

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data"
REAL_CELEBAHQ = REAL_DATA / "celebahq"
REAL_LONDON = REAL_DATA / "london_faces"
needs_celebahq = pytest.mark.skipif(not REAL_CELEBAHQ.is_dir(),
                                    reason=f"real CelebA-HQ data not found at {REAL_CELEBAHQ}")
needs_london = pytest.mark.skipif(not REAL_LONDON.is_dir(),
                                  reason=f"London faces not found at {REAL_LONDON}")


# Small training models (init_fm, max_fm, dis_hidden), as TrainConfig.model_overrides.
TINY = {"init_fm": 8, "max_fm": 32, "dis_hidden": 64}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and then do not fight other jobs for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cuda_skip_reason():
    import exprfast

    if not exprfast.backend_info()["cuda"]:
        return "this exprfast build has no CUDA kernels (CPU-only torch or no nvcc at build time)"
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    return None


CUDA_SKIP = _cuda_skip_reason()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))),
]


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda":
        # cuDNN would use TF32 for float32; compare against full float32 precision.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return request.param


def make_celebahq(root: Path, n=40, size=16, names=("Smiling", "Male", "Eyeglasses")) -> Path:
    """A CelebA-HQ-like folder: ``images<size>/<i>.png`` of noise and the attribute file
    (attribute k of image i is bit k of i)."""
    image_dir = root / f"images{size}"
    image_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / f"{i}.png")
        values = [1 if (i >> k) & 1 else -1 for k in range(len(names))]
        rows.append(f"{i}.png " + " ".join(map(str, values)))
    (root / ATTR_FILE).write_text("\n".join([str(n), " ".join(names), *rows]) + "\n")
    return root


@pytest.fixture(scope="module")
def class_faces(tmp_path_factory):
    """Class folders ``happy``/``neutral`` of 24 synthetic 32 px images each (a bright or dark
    square on noise): 40 train, 4 val, 4 test images, two attributes."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for name, level in (("happy", 220), ("neutral", 40)):
        (root / name).mkdir()
        for i in range(24):
            pixels = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
            pixels[8:24, 8:24] = level
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def tiny_model(attrs=("Smiling",), seed=0):
    """A small 32 px ``paper`` model in eval mode, with non-trivial BatchNorm statistics (so
    that round trips check them)."""
    torch.manual_seed(seed)
    model = build("paper", 32, attrs, init_fm=8, max_fm=32)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def fake_training_checkpoint(model, path):
    """A file in the layout of a training checkpoint (``Trainer.state_dict``), step 10."""
    torch.save({"format": "exprfast-train-checkpoint", "version": 1,
                "model_config": dict(model.config), "model": model.state_dict(),
                "ae_optimizer": {}, "dis_optimizer": {}, "scaler": {}, "step": 10,
                "data": {}, "train_config": {"img_size": 32}}, path)
    return path
