"""Reproducible benchmark of Grad2VAE (Abukmeil et al., ICIAP 2022, LNCS 13231, pp. 670-681)."""

__version__ = "0.1.0"
