"""Pure-PyTorch formulations of up_label_conv: the oracle every test compares against, and the best
plain-PyTorch rewrite (the bar the C++ kernels must beat in benchmarks/ops.md)."""
import torch
import torch.nn.functional as F

# Tap matrices of docs/DESIGN.md: FOLD[t, i] = 1 when 4x4 transposed-conv tap t sums 3x3 tap i;
# BORDER[r, i] = 1 when 3x3 tap i stays inside the image for output border class r.
FOLD = ((0, 0, 1), (0, 1, 1), (1, 1, 0), (1, 0, 0))
BORDER = ((0, 1, 1), (1, 1, 1), (1, 1, 0))


def up_label_conv_reference(x, labels, weight, bias=None):
    """The op's definition: conv3x3(cat[nearest 2x upsample of x, constant label maps]) + bias."""
    up = F.interpolate(x, scale_factor=2, mode="nearest")
    if labels is not None:
        maps = labels[:, :, None, None].expand(-1, -1, up.shape[2], up.shape[3])
        up = torch.cat([up, maps.to(up.dtype)], dim=1)
    return F.conv2d(up, weight, bias, padding=1)


def _taps(rows, like):
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def _border_classes(size, device):
    cls = torch.ones(size, dtype=torch.long, device=device)
    cls[0], cls[-1] = 0, 2
    return cls


def up_label_conv_folded(x, labels, weight, bias=None):
    """Same result through the two identities, in plain PyTorch: a folded 4x4 stride-2 transposed
    conv (2.25x fewer MACs), channels_last, plus the per-sample label bias with 9 border classes."""
    C = x.shape[1]
    fold = _taps(FOLD, weight)
    wt = torch.einsum("ti,sj,ocij->cots", fold, fold, weight[:, :C])
    y = F.conv_transpose2d(x.contiguous(memory_format=torch.channels_last), wt, stride=2, padding=1)
    if labels is not None and labels.shape[1] > 0:
        y = y + label_bias(labels, weight[:, C:], y.shape[2], y.shape[3])
    if bias is not None:
        y = y + bias[:, None, None]
    return y


def label_bias(labels, label_weight, height, width):
    """What constant label maps add to a 3x3 conv's ``(height, width)`` output: a per-sample
    bias ``(N, O, height, width)`` with 9 border classes (docs/DESIGN.md, identity 2).
    ``labels`` (N, K); ``label_weight`` (O, K, 3, 3), the conv weight's label channels."""
    border = _taps(BORDER, label_weight)
    wsum = torch.einsum("ri,cj,okij->korc", border, border, label_weight)
    b9 = torch.einsum("nk,korc->norc", labels.to(label_weight.dtype), wsum)
    rows = _border_classes(height, labels.device)[:, None]
    cols = _border_classes(width, labels.device)[None, :]
    return b9[:, :, rows, cols]
