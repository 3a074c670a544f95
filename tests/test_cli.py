"""xaijax.cli: the pieces every script shares."""

import pytest
from absl import app

from xaijax import cli


def test_integers_parse_a_list_flag_and_name_it_when_they_cannot():
    assert cli.integers(["0", "3", "-2"], "--seeds") == [0, 3, -2]
    with pytest.raises(app.UsageError, match=r"--seeds must be integers"):
        cli.integers(["0", "one"], "--seeds")


def test_positional_arguments_are_refused():
    cli.check_no_arguments(["script.py"])
    with pytest.raises(app.UsageError, match=r"unexpected arguments: \['extra'\]"):
        cli.check_no_arguments(["script.py", "extra"])


def test_print_table_prints_the_table_then_where_the_results_are(tmp_path, capsys):
    cli.print_table({"table": "| a |\n|---|"}, tmp_path)
    assert capsys.readouterr().out == f"| a |\n|---|\nresults in {tmp_path / 'results.json'}\n"
