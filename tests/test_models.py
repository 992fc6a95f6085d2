"""exprfast.models: Fader-style networks (shapes, parameter counts, paper <-> paper-eager
equivalence, labels, config round trip, argument checks, bf16 autocast, torch.compile)."""
import io

import pytest
import torch

from exprfast import models
from exprfast.models import PRESETS, build, parameter_counts, parameter_table
from exprfast.op.nn import UpLabelConv2d

LATENT_CHANNELS = {32: 128, 64: 256, 128: 512}


def inputs(model, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, model.img_channels, model.img_size, model.img_size, generator=g) * 2 - 1
    attrs = torch.randint(0, 2, (n, len(model.attrs)), generator=g).float()
    return x, attrs


def seeded_build(seed, *args, **kwargs):
    torch.manual_seed(seed)
    return build(*args, **kwargs)


@pytest.mark.parametrize("img_size", [32, 64, 128])
@pytest.mark.parametrize("preset", PRESETS)
def test_shapes(preset, img_size):
    model = build(preset, img_size, attrs=("Smiling", "Male"))
    x, attrs = inputs(model, n=3)
    z, x_hat = model(x, attrs)
    assert z.shape == (3, LATENT_CHANNELS[img_size], 4, 4) == (3, *model.latent_shape)
    assert x_hat.shape == x.shape
    assert x_hat.abs().max() <= 1  # tanh
    assert model.discriminate(z).shape == (3, 4)  # 2 logits per attribute
    assert len(model.encoder.layers) == len(model.decoder.layers) == {32: 3, 64: 4, 128: 5}[img_size]
    # The latent discriminator convolves the 4x4 latent down to 1x1 (two layers, 512 channels).
    assert len(model.latent_discriminator.conv_layers) == 2
    assert model.latent_discriminator.proj_layers[0].in_features == 512


def test_decoder_layer_types_per_preset():
    convs = {p: [type(layer.conv) for layer in build(p, 32).decoder.layers] for p in PRESETS}
    assert convs["paper"] == [UpLabelConv2d] * 3
    assert convs["paper-eager"] == [torch.nn.Conv2d] * 3
    assert convs["fader"] == [torch.nn.ConvTranspose2d] * 3
    fader = build("fader", 32).decoder.layers
    assert all(layer.conv.bias is None for layer in fader)  # as in Fader's code
    # Labels enter every decoder layer: 2 extra input channels per attribute.
    model = build("paper-eager", 32, attrs=("a", "b", "c"))
    assert [layer.conv.in_channels for layer in model.decoder.layers] == [128 + 6, 64 + 6, 32 + 6]
    assert isinstance(model.decoder.layers[-1].act, torch.nn.Tanh)
    assert model.decoder.layers[-1].norm is None and model.encoder.layers[0].norm is None


def test_parameter_counts_256px():
    with torch.device("meta"):  # counts only: no memory, no initialisation cost
        counts = {p: parameter_counts(build(p, 256)) for p in PRESETS}
        table = parameter_table(256)
    assert counts["fader"]["decoder"] == 7_014_944
    assert counts["paper"]["decoder"] == 3_947_769
    assert counts["paper-eager"] == counts["paper"]
    for part in ("encoder", "latent_discriminator"):
        assert counts["paper"][part] == counts["fader"][part]
    for c in counts.values():
        assert c["total"] == c["encoder"] + c["decoder"] + c["latent_discriminator"]
    change = 100 * (3_947_769 - 7_014_944) / 7_014_944
    assert round(change, 1) == -43.7
    assert "3,947,769" in table and "7,014,944" in table and "-43.7 %" in table
    assert all(f"| {p} |" in table for p in PRESETS)


def test_latent_256px_is_512x4x4():
    with torch.device("meta"):
        model = build("paper", 256)
    assert model.latent_shape == (512, 4, 4)
    widths = [layer.conv.out_channels for layer in model.encoder.layers]
    assert widths == [32, 64, 128, 256, 512, 512]


def test_paper_and_paper_eager_exchange_state_dicts_and_agree():
    paper = seeded_build(0, "paper", 32, attrs=("Smiling", "Male"))
    eager = seeded_build(1, "paper-eager", 32, attrs=("Smiling", "Male"))
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}
    assert shapes(paper) == shapes(eager)
    eager.load_state_dict(paper.state_dict())  # strict
    paper_again = seeded_build(2, "paper", 32, attrs=("Smiling", "Male"))
    paper_again.load_state_dict(eager.state_dict())
    for k, v in paper_again.state_dict().items():
        torch.testing.assert_close(v, paper.state_dict()[k])

    x, _ = inputs(paper, n=4)
    attrs = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.3, 0.7], [1.5, -0.2]])
    # Training mode (batch statistics), forward and backward.
    z_p, xh_p = paper(x, attrs)
    z_e, xh_e = eager(x, attrs)
    torch.testing.assert_close(xh_p, xh_e, rtol=1e-5, atol=1e-5)
    xh_p.square().sum().backward()
    xh_e.square().sum().backward()
    for (name, p), (_, e) in zip(paper.decoder.named_parameters(), eager.decoder.named_parameters()):
        torch.testing.assert_close(p.grad, e.grad, rtol=1e-4, atol=1e-4, msg=name)
    # Eval mode (running statistics).
    paper.eval(), eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(paper.decode(z_p, attrs), eager.decode(z_p, attrs),
                                   rtol=1e-5, atol=1e-5)


def test_label_maps_one_hot_and_sliders():
    model = build("paper", 32, attrs=("Smiling", "Male"))
    one_hot = model.label_maps(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert torch.equal(one_hot, torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]]))
    slider = model.label_maps(torch.tensor([[0.25, 1.5]]))
    assert torch.allclose(slider, torch.tensor([[0.75, 0.25, -0.5, 1.5]]))
    # Integer and bool attributes become floats.
    assert torch.equal(model.label_maps(torch.tensor([[1, 0]])), torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
    assert model.label_maps(torch.tensor([[True, False]])).dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match=r"attrs must have shape \(N, 2\)"):
        model.label_maps(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="attrs must have shape"):
        model.label_maps(torch.zeros(3))


@pytest.mark.parametrize("preset", PRESETS)
def test_decode_depends_on_attributes(preset):
    model = seeded_build(0, preset, 32).eval()
    x, _ = inputs(model, n=2)
    with torch.no_grad():
        z = model.encode(x)
        off = model.decode(z, torch.zeros(2, 1))
        on = model.decode(z, torch.ones(2, 1))
        half = model.decode(z, torch.full((2, 1), 0.5))
        assert torch.equal(off, model.decode(z, torch.zeros(2, 1)))  # deterministic in eval
    assert (off - on).abs().max() > 1e-3
    assert (half - on).abs().max() > 1e-4 and (half - off).abs().max() > 1e-4


@pytest.mark.parametrize("preset", PRESETS)
def test_decode_many_equals_one_decode_per_attribute_set(preset):
    """A reconstruction and an edit of the same latents in one call (the classifier-loss recipe's
    two decodes), in training mode: each decode normalised on its own, the same values,
    BatchNorm statistics and parameter gradients as two decode calls."""
    model = seeded_build(0, preset, 32, attrs=("Smiling", "Male"))
    x, attrs = inputs(model, n=4)
    sets = [1 - attrs, attrs]

    def run(decodes):
        twin = seeded_build(0, preset, 32, attrs=("Smiling", "Male"))
        outs = decodes(twin, twin.encode(x))
        sum((k + 1) * o.square().mean() for k, o in enumerate(outs)).backward()
        return twin, outs

    many, outs = run(lambda m, z: m.decode_many(z, sets))
    ones, expected = run(lambda m, z: [m.decode(z, a) for a in sets])
    for a, b in zip(outs, expected):
        torch.testing.assert_close(a, b)
    for (name, p), q in zip(many.named_parameters(), ones.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    for (name, b), c in zip(many.named_buffers(), ones.buffers()):
        torch.testing.assert_close(b, c, msg=name)
    with pytest.raises(ValueError, match="z must have shape"):
        many.decode_many(torch.zeros(2, 3), sets)


@pytest.mark.parametrize("preset", PRESETS)
def test_config_rebuilds_the_same_architecture(preset):
    model = build(preset, 64, attrs=["Smiling", "Young"], init_fm=8, max_fm=64, latent_size=2,
                  dis_hidden=16, dis_dropout=0.1, img_channels=1)
    assert model.attrs == ("Smiling", "Young") and model.preset == preset and model.img_size == 64
    assert model.config == {"preset": preset, "img_size": 64, "attrs": ("Smiling", "Young"),
                            "init_fm": 8, "max_fm": 64, "latent_size": 2, "dis_hidden": 16,
                            "dis_dropout": 0.1, "img_channels": 1}
    # The checkpoint path: config and weights through torch.save / torch.load(weights_only=True).
    buffer = io.BytesIO()
    torch.save({"config": model.config, "state_dict": model.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    rebuilt = build(**checkpoint["config"])
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()}
    rebuilt.load_state_dict(checkpoint["state_dict"])
    assert str(rebuilt) == str(model)
    model.eval(), rebuilt.eval()
    x, attrs = inputs(model, n=2)
    assert x.shape == (2, 1, 64, 64)
    with torch.no_grad():
        z, x_hat = model(x, attrs)
        assert z.shape == (2, 64, 2, 2)  # latent_size=2; max_fm caps the channels
        assert torch.equal(rebuilt(x, attrs)[1], x_hat)
    assert len(model.latent_discriminator.conv_layers) == 1  # 2x2 -> 1x1


@pytest.mark.parametrize("kwargs,message", [
    (dict(preset="stargan"), r"preset must be one of 'paper', 'paper-eager', 'fader'.*'stargan'"),
    (dict(img_size=48), r"img_size must be a power of two >= 32.*48"),
    (dict(img_size=16), r"img_size must be a power of two >= 32.*16"),
    (dict(img_size=64.0), r"img_size must be a power of two"),
    (dict(img_size=32, latent_size=32), r"img_size \(32\) must be at least 2 \* latent_size \(64\)"),
    (dict(attrs=()), r"attrs must name at least one attribute"),
    (dict(attrs=("Smiling", "Smiling")), r"attrs must not repeat.*Smiling"),
    (dict(attrs=("Smiling", 3)), r"attrs must be non-empty strings"),
    (dict(dropout=0.5), r"unknown override\(s\) 'dropout'; valid overrides are init_fm, max_fm"),
    (dict(init_fm=0), r"init_fm must be a positive int, got 0"),
    (dict(max_fm=16), r"max_fm must be >= init_fm \(32\), got 16"),
    (dict(latent_size=3), r"latent_size must be a power of two.*3"),
    (dict(dis_hidden=True), r"dis_hidden must be a positive int"),
    (dict(dis_dropout=1.0), r"dis_dropout must be a number in \[0, 1\), got 1.0"),
    (dict(img_channels=-3), r"img_channels must be a positive int, got -3"),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(**kwargs)


def test_bad_tensor_shapes_raise_value_error():
    model = build("paper", 32)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3, 32, 32\), got \[2, 3, 64, 64\]"):
        model.encode(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"z must have shape \(N, 128, 4, 4\)"):
        model.decode(torch.zeros(2, 64, 4, 4), torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"attrs must have shape \(N, 1\)"):
        model.decode(torch.zeros(2, 128, 4, 4), torch.zeros(2, 2))


def test_attrs_may_be_a_single_name():
    assert build("paper", 32, attrs="Smiling").attrs == ("Smiling",)


@pytest.mark.parametrize("preset", PRESETS)
def test_bf16_autocast_forward_backward(preset):
    model = seeded_build(0, preset, 32, attrs=("Smiling", "Male"))
    x, attrs = inputs(model, n=4)
    z32, xh32 = model(x, attrs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, x_hat = model(x, attrs)
        logits = model.discriminate(z)
    assert x_hat.dtype == torch.bfloat16  # the last conv runs in bf16, tanh keeps it
    assert x_hat.shape == x.shape and logits.shape == (4, 4)
    torch.testing.assert_close(x_hat.float(), xh32, rtol=0, atol=0.1)  # bf16 precision
    loss = (x_hat.float() - x).square().mean() + logits.float().logsumexp(1).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.decoder.parameters())


@pytest.mark.parametrize("preset", PRESETS)
def test_channels_last(preset):
    model = seeded_build(0, preset, 32).eval()
    x, attrs = inputs(model, n=2)
    with torch.no_grad():
        z, expected = model(x, attrs)
        model.to(memory_format=torch.channels_last)
        z_cl, out = model(x.contiguous(memory_format=torch.channels_last), attrs)
        logits = model.discriminate(z_cl)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert logits.shape == (2, 2)


def test_compile_decode_fullgraph():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    model = seeded_build(0, "paper", 32, attrs=("Smiling", "Male"))
    x, attrs = inputs(model, n=2)
    z = model.encode(x).detach().requires_grad_(True)
    counter = CompileCounterWithBackend("aot_eager")
    decode = torch.compile(model.decode, fullgraph=True, backend=counter)
    out = decode(z, attrs)
    expected = model.decode(z, attrs)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    (grad_z,) = torch.autograd.grad(out.sum(), z)
    (expected_grad,) = torch.autograd.grad(expected.sum(), z)
    torch.testing.assert_close(grad_z, expected_grad, rtol=1e-4, atol=1e-4)
    assert counter.frame_count == 1  # one graph, no breaks
    graph = str(counter.graphs[0].graph)
    assert graph.count("exprfast.up_label_conv") == 3  # the fused op, once per decoder layer
    torch._dynamo.reset()


def test_module_exports():
    assert models.PRESETS == ("paper", "paper-eager", "fader")
    assert set(models.DEFAULTS) == {"init_fm", "max_fm", "latent_size", "dis_hidden",
                                    "dis_dropout", "img_channels"}
