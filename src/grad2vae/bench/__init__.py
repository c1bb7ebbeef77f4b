"""``grad2vae bench``: speed measured side by side, printed as ratios, written as JSON."""
