"""The ``grad2vae`` command: one entry point for users, Snakemake rules and tests.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``; the first line of that module's docstring is the one-line help. Modules are
imported only when their subcommand runs, so ``grad2vae --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from grad2vae.errors import UserError

# subcommand -> (module, one-line summary shown in `grad2vae --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch": (
        "grad2vae.data.command",
        "download and verify MNIST and Fashion-MNIST (SHA-256 checked)",
    ),
    "params": ("grad2vae.models.command", "print every model's parameter count beside the paper's"),
    "train": (
        "grad2vae.training.command",
        "train and evaluate one run: model x dataset x normal class x seed",
    ),
    "assumptions": (
        "grad2vae.training.assumptions",
        "write every choice the paper leaves open (the report's Assumptions) to JSON",
    ),
    "entropy": (
        "grad2vae.training.entropy",
        "the model-free entropy-only AUC of each normal class's test images",
    ),
    "aggregate": ("grad2vae.analysis.command", "collect runs into the tidy table and Table 1"),
    "figures": (
        "grad2vae.figures.command",
        "draw Fig. 6, per-class AUC, ROC, parameter and time figures",
    ),
    "explain": (
        "grad2vae.explain.command",
        "attention figures (Figs. 3-5) and the faithfulness table",
    ),
    "report": ("grad2vae.report.command", "render report/index.html from the aggregated results"),
    "bench": ("grad2vae.bench.command", "speed benchmark: ratios measured side by side in one run"),
}

EPILOG = """\
typical use:
  grad2vae fetch --data-dir data              # MNIST + Fashion-MNIST, verified
  grad2vae params                             # model sizes beside the paper's
  grad2vae train --model grad2vae --dataset mnist --normal-class 0 --seed 0 \\
                 --data-dir data --out-dir results/runs/mnist/grad2vae/0/0
  snakemake --cores 2 --configfile presets/quick.yaml   # the whole pipeline, CPU preset

Run `grad2vae COMMAND --help` for the options of one command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grad2vae",
        description="Reproduce and check Grad2VAE (Abukmeil et al., ICIAP 2022) "
        "on one-class MNIST and Fashion-MNIST.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, summary) in COMMANDS.items():
        subparsers.add_parser(name, help=summary, description=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    top = build_parser()
    # The top-level parser only picks the subcommand; the module then parses its own options,
    # so `grad2vae train --help` shows train's options without importing every module.
    known, rest = top.parse_known_args(argv)
    module_name, summary = COMMANDS[known.command]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(
        prog=f"grad2vae {known.command}",
        description=(module.__doc__ or summary).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    logging.basicConfig(
        level=logging.DEBUG if known.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(module.run(args) or 0)
    except UserError as error:
        print(f"grad2vae {known.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Every file is written atomically and a run resumes from its checkpoint: nothing to
        # clean up, so no traceback either.
        print(
            f"grad2vae {known.command}: interrupted; nothing half-written is left. Run the same "
            "command again to continue (a training run resumes from its last checkpoint).",
            file=sys.stderr,
        )
        return 130
    except OSError as error:
        # A path the user chose that cannot be read or written (read-only, a file where a folder
        # should be, permissions, space). The command checks its own folders first with a
        # message naming the option (atomic.make_folder); this catches what is left.
        if known.verbose:
            logging.exception("grad2vae %s", known.command)
        print(f"grad2vae {known.command}: error: {_os_error_text(error)}", file=sys.stderr)
        return 2


def _os_error_text(error: OSError) -> str:
    where = " -> ".join(str(name) for name in (error.filename, error.filename2) if name)
    why = (error.strerror or str(error)).lower()
    return (
        f"{where or 'a file'}: {why}. Check that path (a folder where a file should be or the "
        "other way round, permissions, free space) or choose another one, then run the same "
        "command again (-v shows where it happened)."
    )


if __name__ == "__main__":
    sys.exit(main())
