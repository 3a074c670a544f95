"""Report writers: CSV round trip, Markdown tables, figures written atomically."""

import csv

import numpy as np

from xaijax import report


def test_csv_round_trip_and_union_of_columns(tmp_path):
    rows = [
        {"criterion": "deeplift", "accuracy": 0.91},
        {"criterion": "magnitude", "sparsity": 0.5},
    ]
    path = report.write_csv_atomic(tmp_path / "out.csv", rows)
    with open(path) as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == ["criterion", "accuracy", "sparsity"]
    assert read[0]["accuracy"] == "0.91" and read[1]["sparsity"] == "0.5"
    assert read[1]["accuracy"] == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_markdown_table_shape():
    table = report.markdown_table(
        [{"a": 1234567, "b": 0.123456}, {"a": 2}], columns=["a", "b"]
    ).splitlines()
    assert table[0] == "| a | b |"
    assert table[1] == "|---|---|"
    assert table[2] == "| 1,234,567 | 0.1235 |"
    assert table[3] == "| 2 |  |"


def test_figures_are_png_files(tmp_path):
    line = report.line_plot(
        tmp_path / "line.png", {"x": ([3, 1, 2], [0.3, 0.1, 0.2])}, xlabel="x", ylabel="y"
    )
    bars = report.grouped_bar_plot(
        tmp_path / "bars.png",
        {"uniform": {"conv1": 4, "fc1": 4}, "deeplift": {"conv1": 6}},
        ylabel="bits",
    )
    grid = report.image_grid(
        tmp_path / "grid.png",
        [[np.zeros((4, 4))], [np.linspace(-1, 1, 16).reshape(4, 4)]],
        titles=[["image"], ["attribution"]],
        cmaps=["gray", "bwr"],
        symmetric_rows=[False, True],
    )
    for path in (line, bars, grid):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.png", "grid.png", "line.png"]


def test_text_writer_replaces_existing_file(tmp_path):
    path = tmp_path / "report.md"
    report.write_text_atomic(path, "old")
    report.write_text_atomic(path, "new")
    assert path.read_text() == "new"
