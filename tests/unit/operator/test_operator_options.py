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


def test_backend_preference_and_runtime_come_from_the_chart_and_the_flags_override_them():
    chart = Options.from_env({"KUBEFUSION_OPERATOR_PREFERRED_BACKEND": "TrainJob",
                              "KUBEFUSION_OPERATOR_TRAINING_RUNTIME": "ml-kubefusion"})
    assert (chart.preferred_backend, chart.training_runtime) == ("TrainJob", "ml-kubefusion")
    assert (Options().preferred_backend, Options().training_runtime) == ("PyTorchJob", "kubefusion")
    args = build_parser(chart).parse_args(["--preferred-backend", "PyTorchJob", "--training-runtime", "other"])
    assert (args.preferred_backend, args.training_runtime) == ("PyTorchJob", "other")


@pytest.mark.parametrize("env, variable", [
    ({"KUBEFUSION_OPERATOR_PREFERRED_BACKEND": "Auto"}, "KUBEFUSION_OPERATOR_PREFERRED_BACKEND"),
    ({"KUBEFUSION_OPERATOR_TRAINING_RUNTIME": "Kube_Fusion"}, "KUBEFUSION_OPERATOR_TRAINING_RUNTIME"),
])
def test_a_bad_backend_setting_is_refused_naming_the_variable(env, variable):
    with pytest.raises(ValueError, match=variable):
        Options.from_env(env)
