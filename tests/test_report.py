"""The HTML report: content, escaping, the explain section, relative assets, and a real browser.

The report is built from synthetic run directories (test_aggregate.write_fake_run) through the
same commands the workflow runs: `grad2vae aggregate`, `figures`, `report`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import unavailable
from markupsafe import escape
from test_aggregate import oracle_grid, write_fake_run

from grad2vae.captions import caption_html, entry_caption, read_caption
from grad2vae.cli import main as cli_main
from grad2vae.errors import UserError
from grad2vae.layout import CAPTIONS, CAPTIONS_DIR, TRAIN_LOG
from grad2vae.report.command import default_template_dir
from grad2vae.training.assumptions import gather_assumptions

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DATASETS = ["mnist", "fashion_mnist"]
CLASSES = [0, 1, 2]
MODELS = ["grad2vae", "vae", "cae", "inception_caenn", "deep_svdd", "cae_ocsvm"]  # Table 1 complete
SEEDS = [0, 1]


class _Page(HTMLParser):
    """Collects images, links, and the body rows of every table with an id."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.stylesheets: list[str] = []
        self.rows: dict[str, int] = {}
        self.ids: set[str] = set()
        self._table: list[str | None] = []
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        elif tag == "link" and attrs.get("rel") == "stylesheet":
            self.stylesheets.append(attrs["href"])
        elif tag == "table":
            self._table.append(attrs.get("id"))
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table and self._table[-1]:
            self.rows[self._table[-1]] = self.rows.get(self._table[-1], 0) + 1

    def handle_endtag(self, tag):
        if tag == "table" and self._table:
            self._table.pop()
        elif tag == "tbody":
            self._in_body = False


def parse(html_text: str) -> _Page:
    page = _Page()
    page.feed(html_text)
    return page


def make_results(root: Path) -> Path:
    """A partial grid: every run of DATASETS x CLASSES x MODELS x SEEDS except two."""
    results = root / "results"
    for d, dataset in enumerate(DATASETS):
        for c in CLASSES:
            for m, model in enumerate(MODELS):
                for seed in SEEDS:
                    if (dataset, c, model, seed) == ("fashion_mnist", 2, "vae", 1):
                        continue  # missing
                    if (dataset, c, model, seed) == ("mnist", 1, "cae", 0):
                        log = results / TRAIN_LOG.format(
                            dataset=dataset, model=model, normal_class=c, seed=seed
                        )
                        log.parent.mkdir(parents=True, exist_ok=True)
                        log.write_text("ValueError: <script>alert('x')</script> broke\n")
                        continue  # failed, with markup in its reason
                    auc = 0.8 + 0.03 * m + 0.01 * c + 0.005 * seed - 0.02 * d
                    write_fake_run(
                        results,
                        dataset,
                        model,
                        c,
                        seed,
                        auc=auc,
                        device="cuda" if model == "grad2vae" else "cpu",
                        auc_extra=oracle_grid(auc + 0.05) if model == "cae_ocsvm" else None,
                    )
    config = {
        "datasets": DATASETS,
        "normal_classes": CLASSES,
        "models": MODELS,
        "seeds": SEEDS,
        "train": {
            "epochs": 3,
            "batch_size": 128,
            "lr": 0.001,
            "lr_decay_epoch": 50,
            "lr_decay_factor": 0.01,
            "train_limit": 0,
            "test_limit": 0,
        },
    }
    (results / "aggregate").mkdir(parents=True, exist_ok=True)
    (results / "aggregate" / "workflow_config.json").write_text(json.dumps(config))
    return results


def make_explain(results: Path) -> None:
    """A synthetic `grad2vae explain` output: one figure, one table, one bad path."""
    explain = results / "explain"
    (explain / "sub").mkdir(parents=True)
    shutil.copyfile(results / "figures" / "parameters.png", explain / "sub" / "attention.png")
    (explain / "faithfulness.csv").write_text(
        "dataset,attention,faithfulness\nmnist,online,1.2345678\nmnist,<b>offline</b>,0.9\n"
    )
    summary = {
        "figures": [
            {
                "file": "sub/attention.png",
                "title": "Attention <maps>",
                "caption_file": "fig4.rst",
                "details": "Details with <i>markup</i> & ampersand",
            },
            {"file": "../../outside.png", "title": "escapes the folder"},
        ],
        "tables": [
            {
                "file": "faithfulness.csv",
                "title": "Faithfulness",
                "caption_file": "faithfulness.rst",
                "details": "deletion test",
            }
        ],
    }
    (explain / "summary.json").write_text(json.dumps(summary))


def build(tmp: Path, with_explain: bool) -> Path:
    results = make_results(tmp)
    workflow_config = str(results / "aggregate" / "workflow_config.json")
    assert (
        cli_main(["aggregate", "--results-dir", str(results), "--workflow-config", workflow_config])
        == 0
    )
    assert (
        cli_main(["figures", "--results-dir", str(results), "--roc-class", "1", "--dpi", "60"]) == 0
    )
    if with_explain:
        make_explain(results)
    report = tmp / "report"
    assert (
        cli_main(
            [
                "report",
                "--results-dir",
                str(results),
                "--report-dir",
                str(report),
                "--title",
                "Test <report>",
            ]
        )
        == 0
    )
    return report / "index.html"


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("report"), with_explain=True)


def expected_rows() -> dict[str, int]:
    k, paper = len(MODELS), 4  # our methods; the paper's Table 1 columns
    rows = {
        "table1": len(DATASETS) * (len(CLASSES) + 1),
        "summary-table": len(DATASETS) * (len(MODELS) + 1),  # + the CAE OCSVM oracle
        "status-matrix": len(DATASETS),
        "status-table": 2,
    }
    for dataset in DATASETS:
        rows.update(
            {
                f"stats-ranks-{dataset}": k,
                f"stats-pairs-{dataset}": k * (k - 1) // 2,
                f"stats-ranks-published-{dataset}": paper,
                f"stats-pairs-published-{dataset}": paper * (paper - 1) // 2,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------


def test_report_sections_and_tables(report_html):
    text = report_html.read_text(encoding="utf-8")
    page = parse(text)
    for section in (
        "summary",
        "table1-section",
        "statistics",
        "claims",
        "scores",
        "stats-mnist",
        "stats-fashion_mnist",
        "fig6",
        "per-class",
        "compute",
        "explainability",
        "assumptions",
        "status",
        "provenance",
        "protocol-deviations",
        "partial-notice",
    ):
        assert section in page.ids, section
    for table, rows in expected_rows().items():
        assert page.rows.get(table) == rows, (table, page.rows)
    assert "Published" in text and "Abukmeil" in text and "10.1007/978-3-031-06427-2_56" in text
    assert "97.62" in text  # Table 1: Grad2VAE, MNIST, class 0
    # Average rows of a 3-class grid: the paper's mean over those classes, not its printed 98.23
    table1 = text[text.index('id="table1"') : text.index("</table>", text.index('id="table1"'))]
    assert "97.76" in table1 and "98.23" not in table1
    assert "epochs = 3 (paper: 100)" in text
    assert "70 complete" in text and "1 failed" in text and "1 missing" in text


def test_report_table1_complete_and_statistics(report_html):
    text = report_html.read_text(encoding="utf-8")
    page = parse(text)
    table1 = text[text.index('id="table1"') : text.index("</table>", text.index('id="table1"'))]
    # our reruns beside the published CAE OCSVM and Deep SVDD columns, and the oracle, labelled
    assert 'CAE OCSVM<span class="vs"> vs published CAE OCSVM' in table1
    assert 'Deep SVDD<span class="vs"> vs published Deep SVDD' in table1
    assert "oracle: selects hyperparameters on the test labels" in table1
    assert "99.10" in table1 and "95.40" in table1  # published Deep SVDD / CAE OCSVM, MNIST class 0
    assert "Published only" not in text
    statistics = text[text.index('id="statistics"') : text.index('id="claims"')]
    assert "Friedman test over 3 classes and 6 methods" in statistics
    assert "α = 0.05" in statistics and "Holm-corrected p" in statistics
    # the paper's claims, with the Wilcoxon-Holm sentence of the best average, in their own section
    claims = text[text.index('id="claims"') : text.index('id="scores"')]
    assert "Grad2VAE has the best average AUC on MNIST: published 98.23" in claims
    assert "Verdict:" in claims and "tested on the paper&#39;s own Table 1 numbers" in claims
    written = json.loads((report_html.parent / "data" / "claims.json").read_text())
    # the paper's seven claims and the question what its Table 1 measures
    assert [f'id="claim-{c["id"]}"' in claims for c in written] == [True] * 8
    assert written[-1]["id"] == "table1_metric"
    for item in written:  # the section renders the file: every verdict and definition is there
        assert str(escape(item["definition"])) in claims and str(escape(item["words"])) in claims
    assert (
        "smallest possible two-sided Wilcoxon p-value is 2/2^3" in statistics
    )  # 3 classes: never significant
    assert "no Holm-corrected p-value can be below" in statistics
    assert "selects on the test labels" in statistics or "test labels" in statistics
    assert {"figures/cd_mnist.png", "figures/cd_fashion_mnist.png"} <= set(page.images)
    assert (report_html.parent / "data" / "stats.json").is_file()


def test_statistics_section_says_why_tests_were_not_run(tmp_path):
    """One normal class (like the end-to-end test): no ranks or tests, a reason, a placeholder."""
    results = tmp_path / "results"
    for model in ("grad2vae", "vae"):
        write_fake_run(results, "mnist", model, 1, 0)
    config = {
        "datasets": ["mnist"],
        "normal_classes": [1],
        "models": ["grad2vae", "vae"],
        "seeds": [0],
    }
    (results / "aggregate").mkdir(parents=True)
    (results / "aggregate" / "workflow_config.json").write_text(json.dumps(config))
    assert (
        cli_main(
            [
                "aggregate",
                "--results-dir",
                str(results),
                "--workflow-config",
                str(results / "aggregate" / "workflow_config.json"),
            ]
        )
        == 0
    )
    assert cli_main(["figures", "--results-dir", str(results), "--dpi", "50"]) == 0
    assert (
        cli_main(
            ["report", "--results-dir", str(results), "--report-dir", str(tmp_path / "report")]
        )
        == 0
    )
    text = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    page = parse(text)
    assert (
        "need at least 2 methods and 2 normal classes" in text
        and "stats-ranks-mnist" not in page.ids
    )
    assert page.rows["stats-ranks-published-mnist"] == 4  # the paper's numbers are still analysed
    assert (
        "figures/cd_mnist.png" in page.images
        and (tmp_path / "report" / "figures" / "cd_mnist.png").is_file()
    )


def test_report_escapes_everything(report_html):
    text = report_html.read_text(encoding="utf-8")
    assert "<script>" not in text and "&lt;script&gt;" in text  # the failed run's reason
    assert "Test &lt;report&gt;" in text
    assert "Details with &lt;i&gt;markup&lt;/i&gt; &amp; ampersand" in text
    assert "&lt;b&gt;offline&lt;/b&gt;" in text


CAPTIONS_FOLDER = default_template_dir() / CAPTIONS_DIR  # the package's templates


def test_every_figure_has_a_caption_file_and_every_caption_file_a_figure():
    assert set(CAPTIONS.values()) == {path.name for path in CAPTIONS_FOLDER.glob("*.rst")}


def test_caption_files_are_valid_restructuredtext():
    """`snakemake --report` renders them with Jinja, then docutils: no Jinja syntax, no warnings."""
    try:
        from docutils.core import publish_doctree
        from docutils.utils import SystemMessage
    except ImportError:
        unavailable("docutils is not installed (it comes with snakemake: pip install -e '.[test]')")
    for path in sorted(CAPTIONS_FOLDER.glob("*.rst")):
        text = path.read_text(encoding="utf-8")
        assert "{{" not in text and "{%" not in text, path.name
        try:
            publish_doctree(text, settings_overrides={"halt_level": 2, "report_level": 5})
        except SystemMessage as problem:
            pytest.fail(f"{path.name}: {problem}")


def test_report_shows_each_figures_caption_file_and_details(report_html):
    manifest = json.loads(
        (report_html.parents[1] / "results" / "figures" / "figures.json").read_text()
    )
    text = report_html.read_text(encoding="utf-8")
    for entry in manifest["figures"]:
        caption = caption_html(read_caption(CAPTIONS_FOLDER.parent, entry["caption_file"]))
        assert str(caption) in text, entry["file"]
        assert str(escape(entry["details"])) in text, entry["file"]
    details = {entry["file"]: entry["details"] for entry in manifest["figures"]}
    assert details["roc_class1.png"] == "Normal class 1; the seeds of the runs shown: 0, 1."


def test_caption_html_escapes_and_marks_literals():
    html = caption_html("Read <b> & ``metrics.json``\nwrapped.\n\nNext paragraph.")
    assert html == "Read &lt;b&gt; &amp; <code>metrics.json</code> wrapped. Next paragraph."


def test_missing_caption_file_is_named(tmp_path):
    with pytest.raises(UserError, match=r"captions/fig6.rst.*--template-dir"):
        entry_caption(tmp_path, {"caption_file": "fig6.rst", "details": ""})


def test_figures_json_of_an_older_version_asks_to_draw_again():
    old_entry = {"file": "fig6_auc_vs_epoch.png", "title": "Fig. 6", "caption": "prose"}
    with pytest.raises(UserError, match=r"fig6_auc_vs_epoch.png.*run that command again"):
        entry_caption(CAPTIONS_FOLDER.parent, old_entry)


def test_report_assets_are_relative_and_present(report_html):
    folder = report_html.parent
    page = parse(report_html.read_text(encoding="utf-8"))
    assert page.images and page.stylesheets == ["style.css"]
    local = (
        page.images
        + page.stylesheets
        + [link for link in page.links if not link.startswith(("#", "http"))]
    )
    for src in local:
        assert not src.startswith(("/", "file:")) and ".." not in src, src
        assert (folder / src).is_file(), src
    assert {
        "figures/fig6_auc_vs_epoch.png",
        "figures/per_class_auc.png",
        "figures/roc_class1.png",
        "figures/parameters.png",
        "figures/compute.png",
    } <= set(page.images)
    assert any(src.startswith("explain/") for src in page.images)
    assert not list(folder.rglob(".tmp-*"))


def test_explain_section_reports_bad_entries(report_html):
    text = report_html.read_text(encoding="utf-8")
    assert "Attention &lt;maps&gt;" in text
    assert text.count('src="explain/') == 1  # the entry outside the explain folder is not copied
    assert "&#39;../../outside.png&#39; listed in summary.json was not found" in text
    assert "1.2346" in text  # CSV floats rounded for display
    assert (report_html.parent / "explain" / "00-faithfulness.csv").is_file()
    assert 'href="explain/00-faithfulness.csv"' in text


def test_no_explain_section_without_summary(tmp_path):
    html_path = build(tmp_path, with_explain=False)
    page = parse(html_path.read_text(encoding="utf-8"))
    assert "explainability" not in page.ids
    assert page.rows["table1"] == expected_rows()["table1"]


def test_assumptions_gathered_from_models_and_modules():
    groups = gather_assumptions()
    sources = [g["source"] for g in groups]
    for model in MODELS:
        assert f"grad2vae.models: {model}" in sources
    assert "grad2vae.data.datasets" in sources and "grad2vae.training.run_config" in sources
    assert all(g["items"] for g in groups)


# --------------------------------------------------------------------------------------------
# a real browser


def check_report_in_browser(
    index_html: Path, rows: dict[str, int], screenshot: Path | None = None
) -> None:
    """Open the report from file:// in headless Chromium; every image loaded, the tables have the
    expected body rows, no console errors."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        unavailable(
            "Debian's chromium and chromium-driver are not installed "
            "(apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1366,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(index_html.resolve().as_uri())
        assert driver.execute_script("return document.readyState") == "complete"
        images = driver.execute_script(
            "return Array.from(document.images)"
            ".map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
        )
        assert images, "no images in the report"
        broken = [src for src, complete, width in images if not complete or width == 0]
        assert not broken, f"images that did not load: {broken}"
        counts = driver.execute_script(
            "const out = {}; for (const t of document.querySelectorAll('table[id]')) {"
            " out[t.id] = t.querySelectorAll('tbody tr').length; } return out;"
        )
        for table, expected in rows.items():
            assert counts.get(table) == expected, (table, counts)
        stylesheet_applied = driver.execute_script(
            "return getComputedStyle(document.querySelector('table')).borderCollapse"
        )
        assert stylesheet_applied == "collapse", "style.css did not load"
        if screenshot is not None:
            driver.save_screenshot(str(screenshot))
        errors = [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
        assert not errors, f"console errors: {errors}"
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.browser
def test_report_in_headless_chromium(report_html, tmp_path):
    check_report_in_browser(report_html, expected_rows(), screenshot=tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 0


@pytest.mark.browser
def test_report_opens_after_the_folder_is_moved(report_html, tmp_path):
    """Relative links: the whole folder can be copied elsewhere (or zipped) and still works."""
    moved = tmp_path / "copied-report"
    shutil.copytree(report_html.parent, moved)
    check_report_in_browser(moved / "index.html", expected_rows())


def test_the_templates_ship_inside_the_package():
    """`pip install .` gets a working `grad2vae report`: its templates are package data (every
    file under report/templates matches pyproject.toml's package-data), found beside the code."""
    import fnmatch
    import tomllib

    from grad2vae.report.command import default_template_dir

    package = ROOT / "src" / "grad2vae"
    templates = default_template_dir()
    assert templates == package / "report" / "templates"
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["grad2vae"]
    files = [p.relative_to(package).as_posix() for p in templates.rglob("*") if p.is_file()]
    assert files and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), files
