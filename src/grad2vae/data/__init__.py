"""Stage 1, ``grad2vae fetch``: MNIST and Fashion-MNIST fetched, verified (SHA-256, IDX) and
split under the one-class protocol. ``command`` is the subcommand; ``datasets`` the library."""
