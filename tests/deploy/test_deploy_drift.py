"""The chart and manifests/ stay one product: copies match their sources, and `helm template` with default
values makes the same objects as `kubectl kustomize manifests/` (modulo the Helm-only labels)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from deploy_util import CHART, ROOT, load_yaml_docs, one, run, sync_deploy

pytestmark = pytest.mark.tools


def test_derived_files_are_current():
    stale = sync_deploy.check()
    assert not stale, (f"stale derived deploy files {stale}: run `.venv/bin/python charts/sync_deploy.py` "
                       "(sources: manifests/crd.yaml, manifests/rbac.yaml, monitoring/, charts/kubefusion)")


def test_chart_crd_is_the_manifests_crd():
    assert (CHART / "crds" / "multimodaltrainjobs.yaml").read_text() == (ROOT / "manifests" / "crd.yaml").read_text()


# Labels that mark which release an object belongs to: Helm's own two, and the instance/version/part-of the
# chart adds to everything. manifests/ need not carry them (the operator engineers' rbac.yaml does not);
# every other label, and every selector, must agree.
RELEASE_LABELS = (*sync_deploy.HELM_ONLY_LABELS, "app.kubernetes.io/instance", "app.kubernetes.io/version",
                  "app.kubernetes.io/part-of")


def without_release_labels(obj: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    for meta in (obj.get("metadata"), obj.get("spec", {}).get("template", {}).get("metadata")):
        labels = (meta or {}).get("labels") or {}
        for key in RELEASE_LABELS:
            labels.pop(key, None)
    return obj


def keyed(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): without_release_labels(o)
            for o in objects}


def kustomize(kubectl: str, folder: str) -> list[dict[str, Any]]:
    done = run([kubectl, "kustomize", str(ROOT / folder)])
    assert done.returncode == 0, f"kubectl kustomize {folder} failed:\n{done.stderr}"
    return load_yaml_docs(done.stdout)


def assert_same_objects(chart: list[dict[str, Any]], kustomized: list[dict[str, Any]]) -> None:
    ours, theirs = keyed(chart), keyed(kustomized)
    assert sorted(ours) == sorted(theirs), (
        f"only in the chart: {sorted(set(ours) - set(theirs))}; only in manifests/: {sorted(set(theirs) - set(ours))}")
    for key in ours:
        if ours[key] != theirs[key]:
            pytest.fail(f"{key} differs between the chart and manifests/:\nchart:\n"
                        f"{yaml.safe_dump(ours[key], sort_keys=True)}\nmanifests/:\n"
                        f"{yaml.safe_dump(theirs[key], sort_keys=True)}")


def test_chart_defaults_equal_kustomize_manifests(render, kubectl):
    kustomized = kustomize(kubectl, "manifests")
    # The namespace is the one object only the kustomization makes (`helm install --create-namespace`).
    namespace = one(kustomized, "Namespace")
    assert namespace["metadata"]["name"] == sync_deploy.NAMESPACE
    assert_same_objects(render(), [o for o in kustomized if o["kind"] != "Namespace"])


def test_chart_monitoring_equals_kustomize_monitoring(render, kubectl):
    # Only the kinds that need the Prometheus operator's CRDs: the dashboard ConfigMap is in manifests/.
    chart = [o for o in render("--set", "monitoring.enabled=true")
             if o["kind"] in ("ServiceMonitor", "PodMonitor", "PrometheusRule")]
    assert_same_objects(chart, kustomize(kubectl, "manifests/monitoring"))


def test_chart_training_runtime_equals_kustomize_trainjob(render, kubectl):
    """`kubectl apply -k manifests/trainjob/` installs the ClusterTrainingRuntime the chart makes where Trainer v2
    is (cluster-scoped: kustomize gives it no namespace)."""
    chart = [o for o in render("--set", "trainJob.runtime.create=true") if o["kind"] == "ClusterTrainingRuntime"]
    kustomized = kustomize(kubectl, "manifests/trainjob")
    assert [o["kind"] for o in kustomized] == ["ClusterTrainingRuntime"] and "namespace" not in kustomized[0]["metadata"]
    assert_same_objects(chart, kustomized)


def test_rendered_alerts_are_the_promtool_tested_rules(render):
    rule = one(render("--set", "monitoring.enabled=true"), "PrometheusRule")
    source = yaml.safe_load((ROOT / "monitoring" / "alerts.yaml").read_text())
    assert rule["spec"]["groups"] == source["groups"]


def test_rendered_dashboard_is_the_source_dashboard(render):
    configmap = one(render("--set", "monitoring.enabled=true"), "ConfigMap")
    source = json.loads((ROOT / "monitoring" / "dashboard.json").read_text())
    assert json.loads(configmap["data"]["kubefusion-training.json"]) == source


def test_chart_rbac_is_the_operators_rbac(render):
    """The operator engineers' manifests/rbac.yaml is the source of the rules: the chart grants exactly them."""
    theirs = {o["kind"]: o for o in load_yaml_docs((ROOT / "manifests" / "rbac.yaml").read_text())}
    ours = {o["kind"]: o for o in render() if o["kind"] in theirs}
    assert set(ours) == set(theirs) >= {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    assert ours["ClusterRole"]["rules"] == theirs["ClusterRole"]["rules"]
    assert ours["ClusterRoleBinding"]["subjects"] == theirs["ClusterRoleBinding"]["subjects"]
    assert ours["ServiceAccount"]["metadata"]["name"] == theirs["ServiceAccount"]["metadata"]["name"]


def test_rules_split_by_scope_for_namespaced_installs():
    rbac = yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}, "rules": [
            {"apiGroups": ["kubefusion.io"], "resources": ["multimodaltrainjobs", "multimodaltrainjobs/status"],
             "verbs": ["get", "patch"]},
            {"apiGroups": ["", "apiextensions.k8s.io"], "resources": ["namespaces", "configmaps",
                                                                      "customresourcedefinitions"],
             "verbs": ["list"]},
            {"nonResourceURLs": ["/healthz"], "verbs": ["get"]},
        ]},
    ])
    split = sync_deploy.split_rules(rbac)
    assert len(split["rules"]) == 3
    assert split["clusterRules"] == [
        {"apiGroups": ["", "apiextensions.k8s.io"], "resources": ["namespaces", "customresourcedefinitions"],
         "verbs": ["list"]},
        {"nonResourceURLs": ["/healthz"], "verbs": ["get"]},
    ]
    assert split["namespacedRules"] == [
        {"apiGroups": ["kubefusion.io"], "resources": ["multimodaltrainjobs", "multimodaltrainjobs/status"],
         "verbs": ["get", "patch"]},
        {"apiGroups": ["", "apiextensions.k8s.io"], "resources": ["configmaps"], "verbs": ["list"]},
    ]


def test_rbac_without_exactly_one_clusterrole_is_refused():
    with pytest.raises(ValueError, match="exactly one ClusterRole"):
        sync_deploy.split_rules("kind: ServiceAccount\nmetadata: {name: sa}\n")
