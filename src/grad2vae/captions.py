"""The prose captions of the report's figures: reStructuredText files in the report templates'
``captions/`` folder (``layout.CAPTIONS_DIR``), which ``snakemake --report`` shows as they are and
``grad2vae report`` shows with the details only a run can give (from figures.json).

Caption files are plain paragraphs; the only markup they use is ``literal`` text.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from grad2vae.errors import UserError
from grad2vae.layout import CAPTIONS, CAPTIONS_DIR

LITERAL = re.compile(r"``(.+?)``")


def report_entry(path: Path | str, name: str, title: str, details: str = "", **fields: Any) -> dict:
    """The report's entry (figures.json, explain's summary.json) for the file at ``path``.

    ``name`` is the file's name as ``layout.CAPTIONS`` spells it (with its ``{placeholders}``);
    its caption file holds the fixed prose, shared with ``snakemake --report``; ``details`` is
    what only this run can say (classes, seeds, models shown). ``fields`` are added as they are
    (e.g. ``section``, ``dataset``).
    """
    return {
        "file": Path(path).name,
        **fields,
        "title": title,
        "caption_file": CAPTIONS[name],
        "details": details,
    }


def read_caption(template_dir: Path, name: str) -> str:
    """The text of caption file ``name`` of the templates in ``template_dir``."""
    path = Path(template_dir) / CAPTIONS_DIR / name
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise UserError(
            f"caption {path} cannot be read ({error.strerror or error}); point --template-dir at "
            f"a folder with {CAPTIONS_DIR}/{name} (the package's grad2vae/report/templates)"
        ) from None


def caption_html(text: str) -> Markup:
    """``text`` (plain paragraphs, ``literals``) as HTML, escaped."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    html = [LITERAL.sub(r"<code>\1</code>", str(escape(p))) for p in paragraphs]
    return Markup(" ".join(html))


def entry_caption(template_dir: Path, entry: dict) -> Markup:
    """The caption of one figures.json (or explain summary.json) entry: its caption file, then
    its details."""
    if "caption_file" not in entry:
        raise UserError(
            f"the entry of {entry.get('file', '?')!r} names no caption_file: it was written by an "
            "older `grad2vae figures` or `grad2vae explain`; run that command again (in the "
            "workflow: snakemake --forcerun figures explain)"
        )
    text = read_caption(template_dir, entry["caption_file"])
    details = str(entry.get("details") or "")
    return caption_html(f"{text}\n\n{details}" if details else text)
