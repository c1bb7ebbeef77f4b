"""Attention figures (Figs. 3-5) and the faithfulness table, from the runs' saved weights.

Nothing is trained here: for every (dataset, normal class) target, the trained Grad2VAE and
vanilla VAE runs of one seed are loaded from
`RESULTS_DIR/runs/{dataset}/{model}/class{c}/seed{s}/model.pt` and explained on test images of
that dataset, Grad2VAE's own (online) attention beside Liu et al.'s Grad-CAM (offline) one.
Writes atomically into OUT_DIR: fig3_second_derivatives_{dataset}_class{c}.png,
fig4_attention_{dataset}_class{c}.png, fig5_attention_{dataset}.png (the analogues of Figs. 3-5),
deletion_curves_{dataset}.png, faithfulness.csv and deletion_curves.csv (the deletion test per
dataset, class and attention) and summary.json (the report's list of figures and tables).
docs/design-notes.md describes both attentions and the faithfulness score;
attention_maps.ASSUMPTIONS lists every choice.

Example:
  grad2vae explain --results-dir results --data-dir data --out-dir results/explain \\
      --datasets mnist --normal-classes 8 9 1 3 --fig3-classes 8 --fig4-classes 9 \\
      --fig5-classes 1 3 --seed 0
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from grad2vae.errors import UserError
from grad2vae.explain.runs import Settings, explain
from grad2vae.training import devices

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=Path("results"),
        help="folder holding runs/ (the trained runs; default: results)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="folder written by `grad2vae fetch` (default: data)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("results/explain"),
        help="output folder (default: results/explain)",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=["mnist"],
        metavar="DATASET",
        help="datasets (default: mnist)",
    )
    parser.add_argument(
        "--normal-classes",
        nargs="+",
        type=int,
        default=[8, 9, 1, 3],
        metavar="C",
        help="normal classes of the runs to explain; the faithfulness "
        "table covers all (default: 8 9 1 3, the classes of the paper's Figs. 3-5)",
    )
    for number, paper in (
        (3, "8 (the paper's '9th class')"),
        (4, "9 (the paper's '10th class')"),
        (5, "1 3 (the paper's '2nd and 4th classes')"),
    ):
        parser.add_argument(
            f"--fig{number}-classes",
            nargs="*",
            type=int,
            default=None,
            metavar="C",
            help=f"the classes of --normal-classes that Fig. {number} shows, none "
            f"if given without classes (default: all of them; the paper's: {paper})",
        )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the runs, and of the image choice and sampling here (default: 0)",
    )
    parser.add_argument(
        "--units",
        nargs="+",
        type=int,
        default=None,
        metavar="U",
        help="1-based latent units shown in Fig. 3 (default: 2 and d)",
    )
    parser.add_argument(
        "--fig4-images", type=int, default=8, help="normal-class test images in Fig. 4 (default: 8)"
    )
    parser.add_argument(
        "--faithfulness-per-class",
        type=int,
        default=10,
        metavar="N",
        help="test images per class in the deletion test (default: 10)",
    )
    parser.add_argument(
        "--fill",
        choices=("zero", "blur"),
        default="zero",
        help="value of deleted pixels: 0 or a Gaussian blur (default: zero)",
    )
    parser.add_argument(
        "--max-fraction",
        type=float,
        default=0.5,
        help="largest share of pixels deleted (default: 0.5)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=10,
        help="deletion steps after 0 %% (default: 10, i.e. 5 %% each)",
    )
    parser.add_argument(
        "--random-repeats",
        type=int,
        default=2,
        help="random orders per image for the baseline (default: 2)",
    )
    parser.add_argument("--batch-size", type=int, default=50, help="images per forward pass")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto | cpu | cuda | cuda:N (default: auto = CUDA when present)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    if not args.normal_classes:
        raise UserError("--normal-classes needs at least one class")
    bad = [c for c in args.normal_classes if not 0 <= c <= 9]
    if bad:
        raise UserError(f"--normal-classes {bad}: classes are 0..9")
    if len(set(args.normal_classes)) != len(args.normal_classes):
        raise UserError(f"--normal-classes {args.normal_classes} has duplicates")
    if args.fig5_classes == []:
        raise UserError(
            "--fig5-classes needs at least one class (or leave it out: all of --normal-classes)"
        )
    for number in (3, 4, 5):
        chosen = getattr(args, f"fig{number}_classes", None)
        outside = [c for c in chosen or [] if c not in args.normal_classes]
        if outside:
            raise UserError(
                f"--fig{number}-classes {outside} are not in --normal-classes "
                f"{args.normal_classes}: add them there (their runs are loaded) or leave them out "
                f"of Fig. {number}"
            )
    try:
        from grad2vae.data.datasets import DATASETS

        unknown = [d for d in args.datasets if d not in DATASETS]
        if unknown:
            raise UserError(f"unknown dataset(s) {unknown}; known: {', '.join(sorted(DATASETS))}")
    except ImportError:
        pass
    if not 0 < args.max_fraction <= 1 or args.steps < 1:
        raise UserError("--max-fraction must be in (0, 1] and --steps at least 1")
    if args.fig4_images < 1 or args.faithfulness_per_class < 1 or args.random_repeats < 1:
        raise UserError("--fig4-images, --faithfulness-per-class and --random-repeats must be >= 1")
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    fractions = tuple(round(args.max_fraction * i / args.steps, 6) for i in range(args.steps + 1))
    return Settings(
        results_dir=args.results_dir,
        data_dir=args.data_dir,
        out_dir=args.out_dir,
        datasets=list(args.datasets),
        normal_classes=list(args.normal_classes),
        seed=args.seed,
        fig3_classes=args.fig3_classes,
        fig4_classes=args.fig4_classes,
        fig5_classes=args.fig5_classes,
        units=args.units,
        fig4_images=args.fig4_images,
        per_class=args.faithfulness_per_class,
        fill=args.fill,
        fractions=fractions,
        random_repeats=args.random_repeats,
        batch_size=args.batch_size,
        device=args.device,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with devices.deterministic():  # the trainer's numerical settings (no TF32 on GPUs)
        summary = explain(settings)
    log.info(
        "wrote %d figures and %d table(s) to %s in %.0f s",
        len(summary["figures"]),
        len(summary["tables"]),
        settings.out_dir,
        time.perf_counter() - started,
    )
    return 0
