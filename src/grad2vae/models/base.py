"""The one interface every model implements, so that trainer and scorer never branch on a name.

Inputs are always MNIST-sized batches ``x`` of shape (N, 1, 28, 28) with pixels in [0, 1]
(uint8 / 255); a model that wants another geometry (the Inception-CAENN pads to 32x32) does it
inside its own ``forward`` path.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor, nn


class AnomalyModel(nn.Module):
    """Base class of every benchmarked model.

    Subclasses set the class attributes and implement ``loss`` and ``scores``:

    - ``loss(x, noise=None)`` returns the named loss terms of one training batch, each a scalar
      averaged over the batch, plus ``"total"``, the sum that the trainer back-propagates.
      ``noise``: what ``sample_noise`` drew for this batch; None draws it (the trainer of a
      single run passes None). A model whose loss is random overrides ``sample_noise`` and makes
      every random draw of its loss there, so that several seeds can share one process.
    - ``fit_scorer(train_x)`` is called (under ``torch.no_grad`` and ``eval()``) before every
      evaluation with the normal class's training images; models whose score needs the training
      set (1-NN feature distance) keep what they need here. Default: nothing.
    - ``scores(x, generator)`` returns one score per sample for every score the model offers,
      higher = more anomalous: always ``"main"`` (the score the model's paper uses, whose AUC is
      the headline) and ``"reconstruction"`` (per-sample reconstruction error, reported for all
      models so that the report can compare both). A model that reconstructs its input in [0, 1]
      also returns the diagnostics of ``models.scoring`` (``"mse"``, ``"bce_excess"``; a
      variational model also ``"*_zero_noise"``, with eps = 0); the trainer records the AUC of
      every key. ``generator`` drives any sampling done at test time, so that scores are
      reproducible; deterministic models ignore it.

    Optional hooks (defaults do nothing, so the four paper models need none of them):

    - ``sample_noise(batch_size, like)``: the random draws of ``loss`` for one batch, from torch's
      global RNG on ``like``'s device and dtype; None for a deterministic loss (default).
    - ``supports_seed_vmap(device)``: True if ``loss`` may run under ``torch.func.vmap`` over
      stacked copies of the model (``train.train_seeds``, several seeds in one process): no
      random op outside ``sample_noise``, no ``torch.autograd.grad``, no control flow on tensor
      values. Default False (the seeds then step in turn); tests/test_train.py checks the
      per-step losses and gradients of every model that says True against the model alone.

    - ``pretrain(train_x, *, epochs, batch_size, lr, lr_decay_epoch, lr_decay_factor, lr_steps,
      generator, progress)`` is called by the trainer once, before the first epoch (not again on
      resume: its result is in the model's state and the checkpoint), with the run's protocol
      values; Deep SVDD pretrains its autoencoder, fits its preprocessing constants and sets its
      centre here.
      Returns a JSON-able summary recorded in ``metrics.json`` (``pretrain``), or None. A long
      pretraining logs one line per epoch and shows the bar (``progress.Progress``) as training.
    - ``score_batch(x, generator)``: ``scores`` and the output images of the same pass, for the
      pixel-level AUC that the authors' notebook logged (``grad2vae.training.pixel_auc``); a
      model whose output is an image overrides it and implements ``scores`` through it. The
      trainer's evaluation calls this, never ``scores`` directly.
    - ``extra_scores(x, generator)`` returns more named scores (higher = more anomalous), computed
      only at the final evaluation; the trainer records each one's AUC in ``metrics.json``
      (``auc_extra``). Used for expensive diagnostics (the CAE + OC-SVM oracle grid).
    - ``bounds(auc_extra)``: optimistic bounds drawn from those AUCs (they select on the test
      labels), recorded in ``metrics.json`` (``bounds``) only when there are any.
    - ``preprocessing`` (class attribute) / ``preprocessing_info()``: what is done to the [0, 1]
      images before the network, recorded in ``metrics.json`` (``preprocessing``).
    - ``options`` (class attribute): the constructor's options that a configuration may set
      (``variants:`` in the workflow config, ``grad2vae train --option``), each name -> its
      accepted values (a tuple of strings, the first the default) or ``float``; defaults are
      the model's published behaviour. Empty: nothing to choose.
    - ``protocol_defaults`` (class attribute): training-protocol values of the model's source
      that differ from the paper's (``config.RunConfig`` field -> value); ``grad2vae train`` uses
      them for the options not given on its command line.
    """

    #: registry name, e.g. "grad2vae"
    name: ClassVar[str]
    #: human-readable name of the "main" score, e.g. "reconstruction error (BCE)"
    main_score: ClassVar[str]
    #: every choice the paper leaves open, each "choice — source"; shown in the report
    assumptions: ClassVar[tuple[str, ...]]
    #: what is done to the images (pixels / 255) before the network; recorded in metrics.json
    preprocessing: ClassVar[str] = (
        "pixels / 255 in [0, 1] as loaded; any padding "
        "is done inside the model (see its assumptions)"
    )
    #: constructor options a configuration may set: name -> float, or the accepted values
    #: (the first is the default)
    options: ClassVar[dict[str, tuple[str, ...] | type]] = {}
    #: protocol values of the model's own source (RunConfig field -> value); empty: the paper's
    protocol_defaults: ClassVar[dict[str, Any]] = {}

    def loss(self, x: Tensor, noise: Tensor | None = None) -> dict[str, Tensor]:
        raise NotImplementedError

    def sample_noise(self, batch_size: int, like: Tensor) -> Tensor | None:
        return None

    def supports_seed_vmap(self, device: torch.device) -> bool:
        return False

    @torch.no_grad()
    def fit_scorer(self, train_x: Tensor) -> None:
        return None

    def scores(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        raise NotImplementedError

    def score_batch(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(``scores(x, generator)``, the model's output images) from one pass: each image
        name -> (N, 1, 28, 28) in [0, 1], aligned with ``x``, which the pixel-level metric
        (``grad2vae.training.pixel_auc``) scores against ``x``'s pixels. ``"reconstruction"`` for
        every model whose output is an image, ``"attention"`` for Grad2VAE's attention image.
        Default: no images (Deep SVDD)."""
        return self.scores(x, generator), {}

    def pretrain(self, train_x: Tensor, **protocol: Any) -> dict[str, Any] | None:
        # keyword arguments as in the class docstring (Deep SVDD's override spells them out)
        return None

    def extra_scores(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        return {}

    def bounds(self, auc_extra: Mapping[str, float | None]) -> dict[str, dict[str, Any]]:
        """Optimistic bounds this model's results allow, from the AUCs of its ``extra_scores``:
        name -> {"auc", "setting", "protocol", "note"}. A bound SELECTS ON THE TEST LABELS, so
        the analysis shows it beside its model as the pseudo-model ``{model}_{name}`` and never
        ranks it or judges a claim by it (``grad2vae.analysis.bounds``). Default: none."""
        return {}

    def preprocessing_info(self) -> dict[str, Any]:
        return {"description": self.preprocessing}

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def training_memory(self, like: Tensor, images: tuple[int, int] = (2, 4)) -> dict[str, int]:
        """This model's training memory, measured on a copy of it (RNG streams untouched): the
        bytes of the tensors autograd saves for the backward pass of one step on ``n`` images
        shaped like ``like`` are ``per_step_fixed + n * per_image`` (a line through steps on
        ``images[0]`` and ``images[1]`` images); ``per_seed`` = weights, gradients and Adam's two
        moments (4 x the parameters). ``devices.seeds_per_cohort`` adds a stated allowance for
        what a step holds besides its saved tensors."""
        import copy

        def saved_bytes(n: int) -> int:
            storages: dict[int, int] = {}

            def pack(tensor: Tensor) -> Tensor:
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
                return tensor

            clone = copy.deepcopy(self).train()
            x = like[:1].expand(n, *like.shape[1:]).clone()
            forked = [like.device.index or 0] if like.device.type == "cuda" else []
            with (
                torch.random.fork_rng(devices=forked),
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            ):
                clone.loss(x)["total"]
            return sum(storages.values())

        small, large = images
        at_small = saved_bytes(small)
        per_image = max(0, (saved_bytes(large) - at_small) // (large - small))
        per_seed = 4 * sum(p.numel() * p.element_size() for p in self.parameters())
        return {"per_image": int(per_image),
                "per_step_fixed": int(max(0, at_small - small * per_image)),
                "per_seed": int(per_seed)}  # fmt: skip
