"""FlatAdam (exprfast.training.optim) against torch.optim.Adam: the same updates bit for bit, the
same state_dict, and checkpoints that load into either."""
import io

import pytest
import torch
from torch import nn

from exprfast.training.optim import FlatAdam

ADAM = dict(lr=2e-3, betas=(0.5, 0.999))


def model(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
                        nn.Conv2d(8, 4, 3, 1, 1))
    return net.to(memory_format=torch.channels_last)  # 4-D weights channels_last, as in training


def train(net, optimizer, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        optimizer.step()


def round_trip(state):
    """state through torch.save and torch.load, as a checkpoint takes it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def params_equal(a, b):
    return all(torch.equal(p, q) and p.stride() == q.stride()
               for p, q in zip(a.parameters(), b.parameters()))


def test_updates_are_bit_identical_to_fused_adam():
    a, b = model(), model()
    assert any(not p.is_contiguous() for p in a.parameters())  # the case FlatAdam is for
    train(a, torch.optim.Adam(a.parameters(), fused=True, **ADAM), 5)
    train(b, FlatAdam(b.parameters(), **ADAM), 5)
    assert params_equal(a, b)


def test_state_dict_matches_adam_and_loads_both_ways():
    a, b = model(), model()
    adam, flat = torch.optim.Adam(a.parameters(), fused=True, **ADAM), FlatAdam(b.parameters(), **ADAM)
    train(a, adam, 3)
    train(b, flat, 3)
    sa, sb = adam.state_dict(), flat.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for index, entries in sa["state"].items():
        for key, value in entries.items():
            other = sb["state"][index][key]
            assert torch.equal(value, other) and value.shape == other.shape, (index, key)
    # Adam's checkpoint into FlatAdam and FlatAdam's into Adam: both go on as Adam would.
    c, d = model(), model()
    c.load_state_dict(round_trip(a.state_dict()))
    d.load_state_dict(round_trip(b.state_dict()))
    adam_c = torch.optim.Adam(c.parameters(), fused=True, **ADAM)
    adam_c.load_state_dict(round_trip(sb))
    flat_d = FlatAdam(d.parameters(), **ADAM)
    flat_d.load_state_dict(round_trip(sa))
    train(a, adam, 2, seed=2)
    train(c, adam_c, 2, seed=2)
    train(d, flat_d, 2, seed=2)
    assert params_equal(a, c) and params_equal(a, d)


def test_gradient_in_another_layout_is_taken_in_the_parameter_layout():
    """A gradient whose strides differ from its parameter's is laid out like the parameter
    first. (torch 2.13's fused CPU Adam pairs the elements wrongly in that case.)"""
    a, b = model(), model()
    adam, flat = torch.optim.Adam(a.parameters(), fused=True, **ADAM), FlatAdam(b.parameters(), **ADAM)
    for p, q in zip(a.parameters(), b.parameters()):
        grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
        p.grad = torch.empty_like(p).copy_(grad)  # the parameter's layout
        q.grad = grad.clone()  # contiguous, whatever the parameter's layout
    adam.step()
    flat.step()
    assert params_equal(a, b)
    assert all(q.grad.stride() == q.stride() for q in b.parameters())


def test_zero_grad_clears_the_parameters_gradients():
    net = model()
    optimizer = FlatAdam(net.parameters(), **ADAM)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.sync_grads()
    assert all(v.grad is not None for v in optimizer.views)
    optimizer.zero_grad(set_to_none=False)
    assert all(torch.count_nonzero(p.grad) == 0 for p in net.parameters())
    optimizer.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    assert all(v.grad is None for v in optimizer.views)


def test_clipping_the_synced_gradients_clips_the_parameters():
    net = model()
    optimizer = FlatAdam(net.parameters(), **ADAM)
    (1e3 * net(torch.randn(2, 3, 8, 8)).sum()).backward()
    optimizer.sync_grads()
    nn.utils.clip_grad_norm_(optimizer.views, 1.0)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()]))
    assert total == pytest.approx(1.0, rel=1e-4)


def test_a_parameter_that_does_not_fill_its_memory_is_refused():
    sliced = nn.Parameter(torch.randn(4, 6)[:, ::2])
    with pytest.raises(ValueError, match="parameter 0"):
        FlatAdam([sliced], **ADAM)


def test_a_scalar_parameter_and_its_state_round_trip():
    torch.manual_seed(0)
    scalar, weight = nn.Parameter(torch.tensor(0.5)), nn.Parameter(
        torch.randn(4, 3, 2, 2).contiguous(memory_format=torch.channels_last))
    twins = [p.detach().clone().requires_grad_() for p in (scalar, weight)]
    flat = FlatAdam([scalar, weight], **ADAM)
    adam = torch.optim.Adam(twins, fused=True, **ADAM)
    for step in range(3):
        for optimizer, params in ((flat, [scalar, weight]), (adam, twins)):
            optimizer.zero_grad()
            (params[0] * params[1].sum() * (step + 1)).backward()
            optimizer.step()
    assert torch.equal(scalar, twins[0]) and torch.equal(weight, twins[1])
    state = round_trip(flat.state_dict())
    assert state["state"][0]["exp_avg"].shape == () and state["state"][0]["step"].shape == ()
    reloaded = FlatAdam([scalar, weight], **ADAM)
    reloaded.load_state_dict(state)
    assert torch.equal(reloaded.state_dict()["state"][1]["exp_avg_sq"],
                       adam.state_dict()["state"][1]["exp_avg_sq"])


def test_param_groups_and_wrong_moment_shapes_are_refused():
    with pytest.raises(TypeError, match="one parameter group"):
        FlatAdam([{"params": [nn.Parameter(torch.zeros(2))]}], **ADAM)
    net = model()
    state = torch.optim.Adam(model(1).parameters(), **ADAM).state_dict()
    state["state"] = {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3),
                          "exp_avg_sq": torch.zeros(3)}}
    with pytest.raises(ValueError, match="moment of shape"):
        FlatAdam(net.parameters(), **ADAM).load_state_dict(state)
