"""The constructor options of the VAE and Grad2VAE (issue 15): every value gives finite losses and
scores of the right shapes, changes what it says and nothing else, and the defaults are the
model as it was (bit-identical). The derivatives under each option: test_second_derivatives.py."""

from __future__ import annotations

import inspect

import pytest
import torch

from grad2vae.models.grad2vae import Grad2VAE
from grad2vae.models.vae import VAE, kl_per_sample

TINY = dict(channels=(2, 3, 3), hidden=8)
GRAD2VAE_TINY = dict(TINY, attention_width=4)
LATENT = 3


def build(cls, seed=0, **options):
    torch.manual_seed(seed)
    extra = GRAD2VAE_TINY if cls is Grad2VAE else TINY
    return cls(LATENT, **extra, **options).double()


def batch(n=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=generator, dtype=torch.float64)
    eps = torch.randn(n, LATENT, generator=generator, dtype=torch.float64)
    return x, eps


def every_option_value():
    for cls in (VAE, Grad2VAE):
        for option, accepted in cls.options.items():
            values = accepted[1:] if isinstance(accepted, tuple) else (0.0, 2.5)
            for value in values:
                yield pytest.param(cls, option, value, id=f"{cls.name}-{option}-{value}")


@pytest.mark.parametrize("cls, option, value", list(every_option_value()))
def test_every_option_value_trains_and_scores(cls, option, value):
    model = build(cls, **{option: value})
    x, eps = batch()
    terms = model.loss(x, eps)
    assert all(torch.isfinite(t) and t.dim() == 0 for t in terms.values())
    terms["total"].backward()
    scores = model.scores(x, torch.Generator().manual_seed(2))
    assert {"main", "reconstruction", "mse", "bce_excess", "bce_zero_noise"} <= set(scores)
    assert all(s.shape == (4,) and torch.isfinite(s).all() for s in scores.values())


@pytest.mark.parametrize("cls", (VAE, Grad2VAE))
def test_options_are_declared_as_the_constructor_takes_them(cls):
    parameters = inspect.signature(cls).parameters
    for option, accepted in cls.options.items():
        default = parameters[option].default
        assert default == (accepted[0] if isinstance(accepted, tuple) else 1.0), option
    with pytest.raises(
        ValueError, match=r"option kl='median' is not accepted; accepted values: sum, mean"
    ):
        build(cls, kl="median")


def test_grad2vae_refuses_bad_option_values():
    for options, pattern in (
        ({"fusion": "everywhere"}, "penultimate, notebook, none"),
        ({"derivative_tensors": "some"}, "per_unit, summed"),
        ({"attention": "maybe"}, "on, off"),
        ({"attention_weight": -1.0}, "attention_weight"),
        ({"attention_weight": float("nan")}, "attention_weight"),
    ):
        with pytest.raises(ValueError, match=pattern):
            build(Grad2VAE, **options)


@pytest.mark.parametrize("cls", (VAE, Grad2VAE))
def test_defaults_are_bit_identical_to_a_model_built_without_options(cls):
    plain, explicit = (
        build(cls),
        build(cls, **{k: (v[0] if isinstance(v, tuple) else 1.0) for k, v in cls.options.items()}),
    )
    for (name, a), (_, b) in zip(plain.state_dict().items(), explicit.state_dict().items()):
        assert torch.equal(a, b), name
    x, eps = batch()
    for key, value in plain.loss(x, eps).items():
        assert torch.equal(value, explicit.loss(x, eps)[key]), key


@pytest.mark.parametrize("cls", (VAE, Grad2VAE))
def test_kl_mean_is_the_sum_divided_by_d(cls):
    x, eps = batch()
    summed, mean = build(cls).loss(x, eps), build(cls, kl="mean").loss(x, eps)
    torch.testing.assert_close(
        mean["kl"], summed["kl"] / LATENT, rtol=1e-15, atol=0
    )  # batch mean: rounding
    assert torch.equal(mean["reconstruction"], summed["reconstruction"])
    mu, logvar = build(cls).encode(x)
    assert torch.equal(
        kl_per_sample(mu, logvar, "mean"), kl_per_sample(mu, logvar) / LATENT
    )  # per sample: exact


@pytest.mark.parametrize("cls", (VAE, Grad2VAE))
def test_sigma_exp_logvar_samples_with_exp_logvar(cls):
    x, eps = batch()
    model = build(cls, sigma="exp_logvar")
    mu, logvar = model.encode(x)
    z = mu + torch.exp(logvar) * eps
    if cls is Grad2VAE:
        torch.testing.assert_close(model(x, eps)["z"], z, rtol=0, atol=0)
    else:
        torch.testing.assert_close(
            model.loss(x, eps)["reconstruction"],
            torch.nn.functional.binary_cross_entropy_with_logits(
                model.decoder(z), x, reduction="none"
            )
            .flatten(1)
            .sum(1)
            .mean(),
        )
    default = build(cls)
    assert not torch.equal(
        default.loss(x, eps)["reconstruction"], model.loss(x, eps)["reconstruction"]
    )


def _attention_parameters(model):
    return [p for name, p in model.named_parameters() if name.startswith("attention_module.")]


def test_fusion_none_keeps_the_reconstruction_independent_of_the_attention_module():
    model = build(Grad2VAE, fusion="none")
    x, eps = batch()
    out = model(x, eps)
    grads = torch.autograd.grad(
        out["logits"].sum(), _attention_parameters(model), allow_unused=True
    )
    assert all(g is None or not g.any() for g in grads)
    terms = model.loss(x, eps)  # the attention-image loss still trains the module
    grads = torch.autograd.grad(terms["total"], _attention_parameters(model), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert "attention" in terms


def test_fusion_notebook_makes_the_reconstruction_depend_on_the_attention_image_layer():
    x, eps = batch()
    for fusion, depends in (("notebook", True), ("penultimate", False)):
        model = build(Grad2VAE, fusion=fusion)
        before = model(x, eps)["logits"]
        with torch.no_grad():
            model.attention_module.image.bias.add_(0.5)
        after = model(x, eps)["logits"]
        assert (not torch.equal(before, after)) == depends, fusion


def test_fusion_notebook_adds_the_map_after_the_upsampling_layer_too():
    x, eps = batch()
    notebook, penultimate = (
        build(Grad2VAE, fusion="notebook"),
        build(Grad2VAE, fusion="penultimate"),
    )
    seen = {}
    for name, model in (("notebook", notebook), ("penultimate", penultimate)):
        model.decoder.conv.register_forward_hook(
            lambda module, args, output, name=name: seen.__setitem__(name, args[0])
        )
        model(x, eps)
    feature_map, _ = penultimate.attention_module(penultimate(x, eps)["second_derivatives"])
    tiled = feature_map.repeat(1, 2, 1, 1)[:, :3]  # 2 channels tiled to the up-sampling layer's 3
    torch.testing.assert_close(seen["notebook"] - seen["penultimate"], tiled)


def test_attention_weight_scales_the_attention_term():
    x, eps = batch()
    terms = build(Grad2VAE, attention_weight=2.5).loss(x, eps)
    torch.testing.assert_close(
        terms["total"], terms["reconstruction"] + terms["kl"] + 2.5 * terms["attention"]
    )
    terms = build(Grad2VAE, attention_weight=0.0).loss(x, eps)
    torch.testing.assert_close(terms["total"], terms["reconstruction"] + terms["kl"])


def test_attention_off_is_the_same_network_without_the_attention_path():
    on, off = build(Grad2VAE), build(Grad2VAE, attention="off")
    assert off.parameter_count() == on.parameter_count()
    x, eps = batch()
    terms = off.loss(x, eps)
    assert set(terms) == {"reconstruction", "kl", "total"}
    terms["total"].backward()
    assert all(p.grad is None for p in _attention_parameters(off))
    assert off.supports_seed_vmap(torch.device("cpu"))
    with pytest.raises(ValueError, match="attention='off'"):
        off.attention(x)
    # it is the VAE's computation on the same weights
    vae = build(VAE)
    vae.load_state_dict(
        {k: v for k, v in off.state_dict().items() if not k.startswith("attention_module.")}
    )
    torch.testing.assert_close(off.loss(x, eps)["total"], vae.loss(x, eps)["total"], rtol=0, atol=0)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"fusion": "notebook"},
        {"fusion": "none"},
        {"derivative_tensors": "summed"},
        {"attention": "off"},
    ],
)
def test_zero_noise_logits_equal_the_forward_pass_at_eps_zero(options):
    model = build(Grad2VAE, **options)
    x, _ = batch()
    zero = torch.zeros(len(x), LATENT, dtype=torch.float64)
    torch.testing.assert_close(
        model.zero_noise_logits(x), model(x, zero, create_graph=False)["logits"]
    )


#: constructor parameters that are not options (structure, or chosen per device / by the CLI)
NOT_OPTIONS = {"latent_dim", "channels", "hidden", "attention_width", "derivatives"}


@pytest.mark.parametrize("cls", (VAE, Grad2VAE))
def test_the_options_are_exactly_the_constructors_option_parameters(cls):
    parameters = inspect.signature(cls).parameters
    assert set(cls.options) == set(parameters) - NOT_OPTIONS
    expected = {"kl", "sigma"}
    if cls is Grad2VAE:
        expected |= {"derivative_tensors", "fusion", "attention_weight", "attention"}
    assert set(cls.options) == expected
    for option, accepted in cls.options.items():
        assert accepted is float or (
            isinstance(accepted, tuple) and all(isinstance(v, str) for v in accepted)
        )
        if accepted is float:
            assert isinstance(parameters[option].default, float)


@pytest.mark.parametrize(
    "cls, option, value",
    [(VAE, "sigma", "exp"), (Grad2VAE, "sigma", "exp"), (VAE, "kl", "max")]
    + [(Grad2VAE, "attention_weight", value) for value in ("heavy", True, float("inf"), None)],
)
def test_a_bad_value_names_the_option_the_value_and_the_accepted_values(cls, option, value):
    accepted = cls.options[option]
    listed = ", ".join(accepted) if isinstance(accepted, tuple) else "a finite number >= 0"
    with pytest.raises(ValueError) as error:
        build(cls, **{option: value})
    assert f"option {option}={value!r}" in str(error.value)
    assert listed in str(error.value)


def test_summed_is_the_per_unit_tensors_summed_over_units_on_the_same_weights():
    per_unit, summed = build(Grad2VAE), build(Grad2VAE, derivative_tensors="summed")
    shared = {k: v for k, v in per_unit.state_dict().items() if not k.startswith("attention_")}
    for key, value in shared.items():  # the attention module is built last: same encoder
        assert torch.equal(summed.state_dict()[key], value), key
    assert per_unit.attention_module.aggregate.in_channels == LATENT * 2
    assert summed.attention_module.aggregate.in_channels == 2  # C
    x, eps = batch()
    h = per_unit(x, eps)["second_derivatives"]
    torch.testing.assert_close(
        summed(x, eps)["second_derivatives"], h.sum(dim=1, keepdim=True), rtol=1e-12, atol=1e-15
    )


def test_attention_off_scores_like_the_vae_on_the_same_weights():
    off, vae = build(Grad2VAE, attention="off"), build(VAE)
    vae.load_state_dict(
        {k: v for k, v in off.state_dict().items() if not k.startswith("attention_module.")}
    )
    x, _ = batch()
    expected = vae.scores(x, torch.Generator().manual_seed(2))
    scores = off.scores(x, torch.Generator().manual_seed(2))
    assert scores.keys() == expected.keys()
    for key in scores:
        assert torch.equal(scores[key], expected[key]), key
    assert off.derivatives_used is None  # no derivative was taken
