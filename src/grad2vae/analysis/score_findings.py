"""The findings of the report's section "Which score, and what the attention path does": the
Grad2VAE-vs-VAE ordering under every score and how well anomalies are reconstructed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from grad2vae import published as pub
from grad2vae.analysis.verdicts import CLAIMED, VAE, claim_label, round_value


# --------------------------------------------------------------------------------------------
# which score, and what the attention path does (the report's section of that name)
def score_findings(
    per_score: pd.DataFrame, runs: pd.DataFrame, datasets: list[str]
) -> dict[str, Any]:
    """Per dataset: does the Grad2VAE-vs-VAE ordering of the average AUC under the main score
    survive each other score, and how well each model reconstructs anomalies relative to normal
    images at the last epoch (mean over runs of mean anomalous / mean normal reconstruction
    score). ``per_score``: tables.scores_table; ``runs``: runs.csv rows."""
    out: dict[str, Any] = {}
    for dataset in datasets:
        sentences, ordering, ratios = [], {}, {}
        part = per_score[per_score["dataset"] == dataset] if not per_score.empty else per_score
        table = (
            part.pivot_table(index="score", columns="model", values="auc_pct_mean")
            if not part.empty
            else pd.DataFrame()
        )
        if {CLAIMED, VAE} <= set(table.columns) and "main" in table.index:
            # "reconstruction" is the VAEs' main score again: not a change of score
            differences = (
                (table[CLAIMED] - table[VAE]).dropna().drop("reconstruction", errors="ignore")
            )
            main = differences.get("main")
            for score, difference in differences.items():
                ordering[score] = {
                    "grad2vae_minus_vae_pct": round_value(difference, 3),
                    "same_order_as_main": bool(np.sign(difference) == np.sign(main))}  # fmt: skip
            kept = [s for s, o in ordering.items() if s != "main" and o["same_order_as_main"]]
            flipped = [
                s for s, o in ordering.items() if s != "main" and not o["same_order_as_main"]
            ]
            leader = "Grad2VAE" if main > 0 else "the VAE"
            sentences.append(
                f"Under the main score {leader} has the higher average AUC "
                f"({main:+.2f} points, Grad2VAE minus VAE); the ordering "
                f"survives under {', '.join(kept) or 'no other score'}"
                + (f" and reverses under {', '.join(flipped)}." if flipped else ".")
            )
        else:
            sentences.append("The Grad2VAE-vs-VAE ordering needs runs of both models.")
        if not runs.empty and {
            "mean_reconstruction_anomalous",
            "mean_reconstruction_normal",
        } <= set(runs.columns):
            mine = runs[runs["dataset"] == dataset]
            ratio = pd.to_numeric(
                mine["mean_reconstruction_anomalous"], errors="coerce") / pd.to_numeric(
                mine["mean_reconstruction_normal"], errors="coerce")  # fmt: skip
            for model, values in ratio.groupby(mine["model"]):
                if values.notna().any():
                    ratios[str(model)] = round_value(float(values.mean()), 3)
        if ratios:
            sentences.append(
                "At the last epoch, the mean reconstruction error of anomalous test images is "
                + "; ".join(
                    f"{r:.2f}x that of normal ones for {claim_label(m)}" for m, r in ratios.items()
                )
                + " (1x: anomalies reconstructed as well as normal images)."
            )
        entropy = (
            part[part["model"] == "entropy_only"]["auc_pct_mean"]
            if not part.empty
            else pd.Series(dtype=float)
        )
        if len(entropy):
            sentences.append(
                "The image entropy H(x) alone, with no model, ranks anomalies with an average AUC "
                f"of {float(entropy.iloc[0]):.2f} % over these classes: BCE contains H(x), so part "
                "of a BCE-based AUC is the class's ink rather than the model."
            )
        out[dataset] = {"label": pub.dataset_label(dataset), "ordering": ordering,
                        "anomalous_over_normal_error": ratios, "sentences": sentences}  # fmt: skip
    return out
