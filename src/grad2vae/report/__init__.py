"""Stage 6, ``grad2vae report``: one HTML page from what the earlier stages wrote; the templates
and captions ship as package data in ``templates/``. Torch-free."""
