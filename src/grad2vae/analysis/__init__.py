"""Stage 3, ``grad2vae aggregate``: the finished runs read back into tables, Table 1, statistics
and the verdicts on the paper's claims. Torch-free: it reads what training wrote."""
