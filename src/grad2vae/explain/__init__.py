"""Stage 5, ``grad2vae explain``: attention maps of saved runs (Figs. 3-5) and the deletion test
of their faithfulness. Imports torch."""
