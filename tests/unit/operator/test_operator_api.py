"""API names and the condition helper follow the Kubernetes conventions the tools around them expect."""

from __future__ import annotations

import json

import pytest
import yaml

from kubefusion_operator import api
from kubefusion_operator.api import Phase, set_condition

T0, T1 = "2026-11-26T22:00:00Z", "2026-11-26T23:00:00Z"


def test_identity():
    assert (api.GROUP, api.VERSION, api.KIND, api.PLURAL, api.SHORT_NAME) == (
        "kubefusion.io", "v1alpha1", "MultimodalTrainJob", "multimodaltrainjobs", "mmtj")
    assert api.API_VERSION == "kubefusion.io/v1alpha1"
    assert (api.PYTORCHJOB_API_VERSION, api.PYTORCHJOB_PLURAL) == ("kubeflow.org/v1", "pytorchjobs")
    assert api.LABEL_JOB_NAME == "kubefusion.io/job-name" and api.LABEL_JOB_NAME.startswith(api.LABEL_PREFIX)
    assert api.config_map_name("products") == "products-config"


def test_phases():
    assert [p.value for p in Phase] == ["Pending", "Created", "Running", "Restarting", "Suspended", "Succeeded",
                                        "Failed"]
    assert {p for p in Phase if p.is_terminal} == {Phase.SUCCEEDED, Phase.FAILED}
    assert Phase("Running") is Phase.RUNNING and Phase.RUNNING == "Running" and str(Phase.RUNNING) == "Running"
    assert json.dumps({"phase": Phase.FAILED}) == '{"phase": "Failed"}'


def test_condition_types_are_camel_case_with_positive_polarity():
    types = [v for k, v in vars(api.ConditionType).items() if not k.startswith("_")]
    assert all(t[0].isupper() and t.isalnum() for t in types)
    assert api.ConditionType.SPEC_VALID == "SpecValid" and api.ConditionType.BACKEND_AVAILABLE == "BackendAvailable"
    reasons = [v for k, v in vars(api.Reason).items() if not k.startswith("_")]
    assert all(r[0].isupper() and r.isalnum() for r in reasons)


def test_set_condition_adds_a_new_condition():
    conditions = set_condition([], "SpecValid", True, "Valid", "spec accepted", T0, observed_generation=1)
    assert conditions == [{"type": "SpecValid", "status": "True", "reason": "Valid", "message": "spec accepted",
                           "lastTransitionTime": T0, "observedGeneration": 1}]
    yaml.safe_dump(conditions)  # plain types only


def test_same_status_keeps_the_transition_time_but_takes_the_new_reason():
    first = set_condition(None, "SpecValid", "False", "InvalidSpec", "spec.image: is required", T0)
    second = set_condition(first, "SpecValid", "False", "ImmutableFieldChanged", "spec.resources.nodes", T1,
                           observed_generation=2)
    assert second[0]["lastTransitionTime"] == T0
    assert (second[0]["reason"], second[0]["message"], second[0]["observedGeneration"]) == (
        "ImmutableFieldChanged", "spec.resources.nodes", 2)


def test_status_change_moves_the_transition_time_and_keeps_order():
    conditions = set_condition([], "SpecValid", True, "Valid", "", T0)
    conditions = set_condition(conditions, "BackendAvailable", True, "BackendAvailable", "", T0)
    updated = set_condition(conditions, "SpecValid", False, "InvalidSpec", "bad", T1)
    assert [c["type"] for c in updated] == ["SpecValid", "BackendAvailable"]
    assert updated[0]["lastTransitionTime"] == T1 and updated[1]["lastTransitionTime"] == T0


def test_set_condition_does_not_modify_its_input():
    conditions = set_condition([], "SpecValid", True, "Valid", "", T0)
    before = [dict(c) for c in conditions]
    set_condition(conditions, "SpecValid", False, "InvalidSpec", "bad", T1)
    assert conditions == before


def test_set_condition_refuses_other_statuses():
    with pytest.raises(ValueError, match="True, False, Unknown"):
        set_condition([], "SpecValid", "yes", "Valid", "", T0)


def test_condition_lookup():
    conditions = set_condition([], "Running", "Unknown", "Starting", "", T0)
    assert api.get_condition(conditions, "Running")["status"] == "Unknown"
    assert api.get_condition(conditions, "Failed") is None and api.get_condition(None, "Failed") is None
    assert not api.is_condition_true(conditions, "Running")
    assert api.is_condition_true(set_condition(conditions, "Running", True, "Running", "", T1), "Running")
