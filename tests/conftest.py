import pytest
import torch

import exprfast


def _cuda_skip_reason():
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
