"""Write every choice the paper leaves open, as the code states it, to one JSON file.

Each choice is written where the code makes it: a model's ``assumptions`` class attribute and
the ``ASSUMPTIONS`` tuple of the modules in ``ASSUMPTION_MODULES``; each entry reads
"choice — source". The report (torch-free) shows this file's groups in its Assumptions section,
so that rendering it never imports the models. The workflow writes it once per results folder.

Example: grad2vae assumptions --out results/assumptions.json
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from grad2vae.analysis.labels import model_label, model_order
from grad2vae.atomic import write_json

# Modules whose ASSUMPTIONS tuple the report shows; only `attention_maps` (explain) may be absent.
ASSUMPTION_MODULES = (
    "grad2vae.data.datasets",
    "grad2vae.data.command",
    "grad2vae.training.run_config",
    "grad2vae.schedule",
    "grad2vae.training.devices",
    "grad2vae.explain.attention_maps",
)


OPTIONAL_MODULES = ("grad2vae.explain.attention_maps",)


def gather_assumptions() -> list[dict[str, Any]]:
    """[{"source", "title", "items"}] for every registered model, then each module's ASSUMPTIONS."""
    from grad2vae.models import MODELS, model_names

    groups = []
    for name in model_order(model_names()):
        cls = MODELS[name]
        items = list(getattr(cls, "assumptions", ()) or ())
        groups.append(
            {
                "source": f"grad2vae.models: {name}",
                "title": f"{model_label(name)} ({cls.__name__}); "
                f"main score: {getattr(cls, 'main_score', 'main')}",
                "items": items,
            }
        )
    for module_name in ASSUMPTION_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if module_name in OPTIONAL_MODULES and error.name == module_name:
                continue
            raise
        items = list(getattr(module, "ASSUMPTIONS", ()) or ())
        if items:
            summary = (module.__doc__ or "").strip().splitlines()
            groups.append(
                {
                    "source": module_name,
                    "title": summary[0] if summary else module_name,
                    "items": items,
                }
            )
    return groups


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, help="the JSON to write (the workflow: RESULTS/assumptions.json)"
    )


def run(args: argparse.Namespace) -> int:
    write_json(Path(args.out), {"groups": gather_assumptions()})
    return 0
