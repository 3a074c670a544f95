"""Every stage's section: one importance sub-section, one starting point, one validation idiom."""

from __future__ import annotations

import numpy as np
import pytest

from xaijax import data
from xaijax.defaults import base_config
from xaijax.experiments import STAGES, common, scoring, sections


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_has_the_importance_sub_section_and_the_starting_point(name):
    section = STAGES[name].defaults()
    assert set(section.importance) == set(scoring.defaults())
    assert {"variables_dir", "trained_workdir", "seed"} <= set(section)
    assert section.variables_dir is None and section.trained_workdir is None
    STAGES[name].validate(section)


@pytest.mark.parametrize("name", sorted(STAGES))
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target", "everything"),
        ("reference", "noise"),
        ("num_examples", 0),
        ("batch_size", True),
        ("num_references", 0),
        ("examples_per_class", 0),
    ],
)
def test_a_bad_importance_field_is_named_with_its_stage(name, field, value):
    config = base_config()
    config[name].importance[field] = value
    with pytest.raises(ValueError, match=rf"config\.{name}\.importance\.{field}"):
        STAGES[name].section(config)


def test_an_unknown_field_of_a_sub_section_is_refused_by_its_dotted_name():
    config = base_config()
    config.prune.importance.tagret = "all"
    with pytest.raises(
        ValueError, match=r"config\.prune has unknown fields \['importance\.tagret'\]"
    ):
        STAGES["prune"].section(config)


def test_a_sub_section_override_keeps_the_other_defaults():
    config = base_config()
    config.share.importance = {"target": "all"}
    merged = STAGES["share"].section(config).importance
    assert merged.target == "all"
    assert merged.num_examples == STAGES["share"].defaults().importance.num_examples


def test_neutral_fields_of_a_sub_section_are_left_out_only_at_their_neutral_value():
    section = {"seed": 0, "importance": {"target": "label", "examples_per_class": None}}
    neutral = {"importance": scoring.NEUTRAL_FIELDS}
    assert common.plain(section, neutral=neutral) == {"seed": 0, "importance": {"target": "label"}}
    section["importance"]["examples_per_class"] = 5
    assert common.plain(section, neutral=neutral) == section


def test_score_arguments_clip_the_examples_or_draw_the_balanced_sample():
    labels = np.repeat(np.arange(3, dtype=np.int32), [4, 6, 5])
    images = np.arange(labels.size, dtype=np.float32).reshape(-1, 1, 1, 1)
    train = data.Dataset(images, labels)
    section = scoring.defaults(num_examples=100, batch_size=8)
    plain = scoring.score_arguments(section, train, seed=3)
    assert plain["data"] is train and plain["num_examples"] == train.num_examples
    assert (plain["batch_size"], plain["seed"], plain["target"]) == (8, 3, "label")
    section.examples_per_class = 2
    scarce = scoring.score_arguments(section, train, seed=3)
    expected = data.balanced_subset(train, 2, seed=3)
    np.testing.assert_array_equal(scarce["data"].images, expected.images)
    assert scarce["num_examples"] == 6 and np.all(np.bincount(scarce["data"].labels) == 2)
    assert scoring.score_arguments(section, None, seed=3)["num_examples"] is None


def test_check_helpers_name_the_field():
    with pytest.raises(ValueError, match=r"config\.x\.n must be an integer >= 1, got True"):
        sections.check_integers({"n": True}, "x", {"n": 1})
    with pytest.raises(ValueError, match=r"config\.x\.c must be None or one of \('a',\)"):
        sections.check_choice({"c": "b"}, "x", "c", ("a",), optional=True)
    sections.check_choice({"c": None}, "x", "c", ("a",), optional=True)


def test_the_rule_field_reaches_the_scorer_only_when_set_and_is_checked():
    section = scoring.defaults()
    assert "rule" not in scoring.score_arguments(section, None, seed=0)
    section.rule = "epsilon"
    assert scoring.score_arguments(section, None, seed=0)["rule"] == "epsilon"
    scoring.validate(section, "share.importance")
    section.rule = "epsilonn"
    with pytest.raises(ValueError, match=r"config\.share\.importance\.rule must be None or one of"):
        scoring.validate(section, "share.importance")
