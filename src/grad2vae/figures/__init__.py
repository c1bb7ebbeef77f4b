"""Stage 4, ``grad2vae figures``: every figure drawn from the aggregated tables (and
``stats.json``), never by recomputing them. Torch-free."""
