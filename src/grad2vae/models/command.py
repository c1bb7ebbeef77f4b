"""Print every model's trainable parameter count beside the paper's.

For the MNIST (latent 16) and Fashion-MNIST (latent 32) configurations, each model's trainable
parameters are counted and set beside the figures of the paper's Sect. 4.2 (Baseline CAE 0.266 M,
vanilla VAE 3.25 M, Inception CAENN 0.335 M, Grad2VAE 3.38 M; from published.yaml), with the
ratio ours / paper, and Grad2VAE's size as a multiple of each other model's beside the paper's
stated multiples (12.7x, 1.03x, 10.10x). The paper does not say which latent size its counts are
for. A note says where a faithful architecture cannot match the paper's figure.
"""

from __future__ import annotations

import argparse

from grad2vae.models import MODELS, create_model, model_names
from grad2vae.published import parameters_millions

#: latent size per dataset (paper Sect. 4.2: 16 for MNIST, 32 for Fashion-MNIST)
LATENT_DIMS = {"mnist": 16, "fashion_mnist": 32}
#: Grad2VAE's size as a multiple of each model's, as the paper states it (Sect. 4.2)
PAPER_GRAD2VAE_MULTIPLES = {"cae": 12.7, "vae": 1.03, "inception_caenn": 10.10}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=("text", "tsv"), default="text", help="output format (default: text)"
    )


def count_rows() -> list[dict]:
    """One row per (dataset, model): measured and published counts, ratio, note."""
    paper = {name: millions * 1e6 for name, millions in parameters_millions().items()}
    model_names()  # loads the built-in models into MODELS
    rows = []
    for dataset, latent_dim in LATENT_DIMS.items():
        names = [n for n in paper if n in MODELS] + [n for n in model_names() if n not in paper]
        counts = {
            name: create_model(name, latent_dim, dataset=dataset).parameter_count()
            for name in names
        }
        for name, count in counts.items():
            published = paper.get(name)
            multiple = (
                counts["grad2vae"] / count if name != "grad2vae" and "grad2vae" in counts else None
            )
            rows.append(
                {
                    "dataset": dataset,
                    "latent_dim": latent_dim,
                    "model": name,
                    "parameters": count,
                    "paper_parameters": published,
                    "ratio": count / published if published else None,
                    "grad2vae_multiple": multiple,
                    "paper_grad2vae_multiple": PAPER_GRAD2VAE_MULTIPLES.get(name),
                    "note": getattr(MODELS[name], "parameter_note", ""),
                }
            )
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def run(args: argparse.Namespace) -> int:
    rows = count_rows()
    if args.format == "tsv":
        keys = list(rows[0])
        print("\t".join(keys))
        for row in rows:
            print("\t".join("" if row[k] is None else str(row[k]) for k in keys))
        return 0
    print("Trainable parameters, ours beside the paper's (Sect. 4.2)\n")
    header = f"{'dataset':<14} {'latent':>6}  {'model':<16} {'ours':>10} {'paper':>10} {'ratio':>6}"
    header += "  Grad2VAE/model (paper)"
    print(header)
    print("-" * len(header))
    for row in rows:
        multiple = ""
        if row["grad2vae_multiple"] is not None:
            ours, paper = row["grad2vae_multiple"], row["paper_grad2vae_multiple"]
            multiple = f"{ours:.2f}x ({_fmt(paper, '.2f')}x)"
        print(
            f"{row['dataset']:<14} {row['latent_dim']:>6}  {row['model']:<16} "
            f"{row['parameters']:>10,} {_fmt(row['paper_parameters'], ',.0f'):>10} "
            f"{_fmt(row['ratio'], '.3f'):>6}  {multiple}".rstrip()
        )
    print("\nNotes:")
    for row in rows[: len(rows) // len(LATENT_DIMS)]:
        if row["note"]:
            print(f"  {row['model']}: {row['note']}")
    return 0
