"""grad2vae.metrics_file: metrics.json is checked where it is written and where it is read."""

from __future__ import annotations

import json

import pytest

from grad2vae.metrics_file import FORMAT_VERSION, MetricsError, read_metrics, write_metrics

RUN = {
    "model": "vae",
    "dataset": "mnist",
    "normal_class": 3,
    "seed": 0,
    "config": {"epochs": 2},
    "config_hash": "cafe",
    "main_score": "bce",
    "auc": 0.9,
    "auc_reconstruction": 0.85,
    "epochs": 2,
}


def test_written_with_its_format_version_and_read_back(tmp_path):
    written = write_metrics(tmp_path / "metrics.json", RUN)
    assert written == {"format_version": FORMAT_VERSION, **RUN}
    assert read_metrics(tmp_path / "metrics.json") == written


def test_a_file_of_format_1_reads_as_it_is(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(RUN))  # no format_version: format 1
    assert read_metrics(tmp_path / "metrics.json") == RUN


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": FORMAT_VERSION + 1}, "newer than this grad2vae reads"),
        ({"auc": "0.9"}, "'auc' is '0.9', not int or float"),
        ({"normal_class": True}, "'normal_class' is True, not int"),
        ({"bounds": {"oracle": {"setting": "x"}}}, "bound 'oracle' has no numeric 'auc'"),
    ],
)
def test_a_file_that_breaks_its_format_is_refused_with_the_key(tmp_path, change, message):
    (tmp_path / "metrics.json").write_text(json.dumps({**RUN, **change}))
    with pytest.raises(MetricsError, match=message):
        read_metrics(tmp_path / "metrics.json")


def test_a_missing_key_is_named_and_nothing_is_written(tmp_path):
    without = {k: v for k, v in RUN.items() if k != "config_hash"}
    with pytest.raises(MetricsError, match="no 'config_hash'"):
        write_metrics(tmp_path / "metrics.json", without)
    assert not list(tmp_path.iterdir())
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(MetricsError, match="not JSON"):
        read_metrics(tmp_path / "broken.json")
