"""Grad2VAE's second-order derivatives of the latent code with respect to an encoder layer.

For each latent unit z_i and each sample, the tensor (of the layer's shape)

    h_i = d/dL ( sum_j dz_i/dL_j ),

the Hessian of z_i with respect to the layer L times the all-ones vector: one tensor per unit, as
the paper describes them (Sect. 3, Sect. 4.1, Fig. 3). ``g = tf.gradients(z_i, L); h =
tf.gradients(g, L)`` computes it for one unit: ``tf.gradients`` sums over its outputs, so the
inner sum runs over every element of L (and over the batch, which is harmless when nothing between
L and z mixes samples: each sample's z then depends only on that sample's L, so the batch sum
separates into per-sample derivatives). The companion notebook abukmeil/mgrad2vae calls
``tf.gradients(z, conv)`` on the whole latent vector, which also sums over the units: its one
tensor equals sum_i h_i, not the paper's d tensors.

Two implementations, equal up to floating-point rounding (tests/test_second_derivatives.py):

- ``"loop"``: the plain per-unit loop, 2*d reverse-mode calls.
- ``"vectorized"``: three calls for all units at once. (1) g = J^T w for a dummy cotangent w
  (N, d); (2) u = d(g . 1)/dw = J 1, i.e. sum_j dz_i/dL_j for every unit, a forward-mode JVP
  along the all-ones direction done by the double-backward trick; (3) one batched VJP of u with
  the d one-hot cotangents (``autograd.grad(..., is_grads_batched=True)``, a vmap over d).

With ``create_graph=True`` the result stays in the autograd graph, so a loss computed from it
trains every parameter it depends on (the parameters between L and z, and those before L through
L's value). The benchmark (``grad2vae bench``) times both methods through ``Grad2VAE``.

Where the derivatives are zero: a piecewise-linear (ReLU) path from L to z has zero curvature
almost everywhere, so with z = mu the result is identically zero; it is non-zero only through the
non-linear sigma = exp(0.5 logvar) in z = mu + sigma * eps. Parts of the graph that do not reach L
at second order are returned as zeros rather than raising.

Closed form (``second_derivatives_closed_form``, methods ``"closed_form"`` and ``"explicit"`` of
``Grad2VAE``). PRECONDITION: everything from L to (mu, logvar) is piecewise linear (Conv/Linear
and ReLU, as in ``models.vae.Encoder``) and z = mu + exp(0.5 logvar) * eps (or exp(logvar),
below). Then, with g_i = d logvar_i / dL and sigma_i = exp(0.5 logvar_i), and the Hessians of mu_i and logvar_i zero
(exactly so in autograd too: ReLU's backward has zero derivative w.r.t. its input),

    dz_i/dL = dmu_i/dL + 0.5 sigma_i eps_i g_i,   sum_j dz_i/dL_j = 1.dmu_i + 0.5 sigma_i eps_i (1.g_i)
    h_i = 0.5 eps_i (1.g_i) dsigma_i/dL = 0.25 sigma_i eps_i (1.g_i) g_i.

With the companion notebook's z = mu + exp(logvar) * eps (``sigma="exp_logvar"``, sigma_i =
exp(logvar_i), dsigma_i/dL = sigma_i g_i) the same steps give

    dz_i/dL = dmu_i/dL + sigma_i eps_i g_i,   h_i = eps_i (1.g_i) dsigma_i/dL = sigma_i eps_i (1.g_i) g_i,

coefficient 1 instead of 1/4 (``closed_form_from_jacobian``'s ``sigma``). The derivative tensors
summed over the units (Grad2VAE's ``derivative_tensors="summed"``) are sum_i h_i of any method.

Only first derivatives are needed: one batched VJP of logvar with the d one-hot cotangents. It is
kept in the graph like the others and gives the same values and the same parameter gradients up
to rounding (tests/test_second_derivatives.py); it is *wrong* for an encoder with curvature
between L and (mu, logvar) (e.g. sigmoid, tanh, softplus, BatchNorm in train mode).
"""

from __future__ import annotations

import torch
from torch import Tensor

METHODS = ("loop", "vectorized")


def second_derivatives(
    z: Tensor, layer: Tensor, method: str = "vectorized", create_graph: bool = True
) -> Tensor:
    """h of shape (N, d, *layer.shape[1:]): ``[n, i]`` = d/dL_n (sum_j dz_{n,i}/dL_{n,j}).

    ``z``: (N, d), computed from ``layer`` (N, ...), which must require grad. ``create_graph``:
    keep the result differentiable (training); False for evaluation only.
    """
    if method == "loop":
        return second_derivatives_loop(z, layer, create_graph)
    if method == "vectorized":
        return second_derivatives_vectorized(z, layer, create_graph)
    raise ValueError(f"unknown second-derivative method {method!r}; use one of {METHODS}")


def second_derivatives_loop(z: Tensor, layer: Tensor, create_graph: bool = True) -> Tensor:
    per_unit = []
    for i in range(z.shape[1]):
        (g,) = torch.autograd.grad(z[:, i].sum(), layer, create_graph=True, retain_graph=True)
        per_unit.append(_grad_or_zeros(g.sum(), layer, None, create_graph, batched=False))
    return torch.stack(per_unit, dim=1)


def second_derivatives_vectorized(z: Tensor, layer: Tensor, create_graph: bool = True) -> Tensor:
    n, d = z.shape
    w = torch.zeros_like(z, requires_grad=True)
    (g,) = torch.autograd.grad(z, layer, grad_outputs=w, create_graph=True)  # J^T w
    (u,) = torch.autograd.grad(
        g, w, grad_outputs=torch.ones_like(g), create_graph=True
    )  # J 1: (N, d)
    one_hot = torch.eye(d, dtype=z.dtype, device=z.device).unsqueeze(1).expand(d, n, d)
    h = _grad_or_zeros(u, layer, one_hot, create_graph, batched=True)  # (d, N, ...)
    return h.transpose(0, 1)


def _grad_or_zeros(
    output: Tensor, layer: Tensor, grad_outputs, create_graph: bool, batched: bool
) -> Tensor:
    shape = ((grad_outputs.shape[0],) if batched else ()) + tuple(layer.shape)
    if not output.requires_grad:  # no path from layer to output at all: zero curvature
        return layer.new_zeros(shape)
    (h,) = torch.autograd.grad(
        output,
        layer,
        grad_outputs=grad_outputs,
        create_graph=create_graph,
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=batched,
    )
    return layer.new_zeros(shape) if h is None else h


#: methods that need only first derivatives; valid only under the precondition above
CLOSED_FORM_METHODS = ("closed_form", "explicit")


def closed_form_from_jacobian(
    logvar: Tensor, eps: Tensor, g: Tensor, sigma: str = "exp_half_logvar"
) -> Tensor:
    """h (N, d, ...) = 0.25 sigma eps (1.g) g from g = d logvar / dL of shape (N, d, ...), for
    sigma = exp(0.5 logvar); for ``sigma="exp_logvar"`` (z = mu + exp(logvar) eps, the companion
    notebook's) dz_i/dL = dmu_i + sigma_i eps_i g_i, hence h_i = sigma_i eps_i (1.g_i) g_i."""
    n, d = logvar.shape
    if sigma == "exp_logvar":
        coefficient = torch.exp(logvar) * eps * g.sum(dim=tuple(range(2, g.dim())))
    else:
        coefficient = 0.25 * torch.exp(0.5 * logvar) * eps * g.sum(dim=tuple(range(2, g.dim())))
    return coefficient.view(n, d, *([1] * (g.dim() - 2))) * g


def second_derivatives_closed_form(
    logvar: Tensor,
    eps: Tensor,
    layer: Tensor,
    create_graph: bool = True,
    sigma: str = "exp_half_logvar",
) -> Tensor:
    """h of shape (N, d, *layer.shape[1:]), equal to ``second_derivatives(z, layer)`` when the
    path from ``layer`` to (mu, logvar) is piecewise linear and z = mu + exp(0.5 logvar) eps
    (see the module docstring: the caller must guarantee it; ``sigma="exp_logvar"``: z = mu +
    exp(logvar) eps, ``closed_form_from_jacobian``). One batched VJP (a vmap over the
    d one-hot cotangents) instead of the 2d reverse passes of the loop."""
    n, d = logvar.shape
    if not logvar.requires_grad:
        return layer.new_zeros((n, d) + tuple(layer.shape[1:]))
    one_hot = torch.eye(d, dtype=logvar.dtype, device=logvar.device).unsqueeze(1).expand(d, n, d)
    g = _grad_or_zeros(logvar, layer, one_hot, create_graph, batched=True)  # (d, N, ...)
    return closed_form_from_jacobian(logvar, eps, g.transpose(0, 1), sigma)
