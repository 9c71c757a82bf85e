"""The operator's settings: environment variables (what the chart sets) and the flags that override them."""

from __future__ import annotations

import pytest

from kubefusion_operator.__main__ import build_parser
from kubefusion_operator.options import Options

IMAGE = "registry.example.com/ml/kubefusion-trainer:2026.11.1"


def test_the_default_trainer_image_comes_from_the_environment_the_chart_sets():
    assert Options.from_env({"KUBEFUSION_OPERATOR_DEFAULT_TRAINER_IMAGE": IMAGE}).default_trainer_image == IMAGE
    assert Options.from_env({}).default_trainer_image == ""  # none: jobs without spec.image are refused
    assert Options.from_env({"KUBEFUSION_OPERATOR_DEFAULT_TRAINER_IMAGE": ""}).default_trainer_image == ""


def test_the_flag_overrides_the_environment():
    defaults = Options.from_env({"KUBEFUSION_OPERATOR_DEFAULT_TRAINER_IMAGE": IMAGE})
    assert build_parser(defaults).parse_args([]).default_trainer_image == IMAGE
    assert build_parser(defaults).parse_args(["--default-trainer-image", "other:1"]).default_trainer_image == "other:1"


def test_the_setting_reaches_the_handlers_through_the_environment():
    options = Options(default_trainer_image=IMAGE)
    assert Options.from_env(options.to_env()) == options


def test_an_image_with_whitespace_is_refused_naming_the_variable():
    with pytest.raises(ValueError, match="KUBEFUSION_OPERATOR_DEFAULT_TRAINER_IMAGE"):
        Options.from_env({"KUBEFUSION_OPERATOR_DEFAULT_TRAINER_IMAGE": "trainer :1"})
