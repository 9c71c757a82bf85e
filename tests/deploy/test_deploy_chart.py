"""The Helm chart: lint, render under several value sets, validate what it renders, and behave as documented."""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_util import CHART, ROOT, by_kind, one, run, sync_deploy

pytestmark = pytest.mark.tools

# The value combinations the issue names, as `helm` flags.
VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "monitoring-on": ["--set", "monitoring.enabled=true",
                      "--set", "monitoring.serviceMonitor.labels.release=kube-prometheus-stack",
                      "--set", "monitoring.podMonitor.labels.release=kube-prometheus-stack",
                      "--set", "monitoring.prometheusRule.labels.release=kube-prometheus-stack",
                      "--set", "monitoring.grafanaDashboard.namespace=grafana"],
    "monitoring-auto-detected": ["--api-versions", "monitoring.coreos.com/v1"],
    "namespaced": ["--set", "operator.watchNamespaces={team-a,team-b}", "--set", "monitoring.enabled=true"],
    "custom-images": ["--set", "operator.image.repository=registry.example.com/ml/kubefusion-operator",
                      "--set", "operator.image.digest=sha256:" + "a" * 64,
                      "--set", "trainer.image.repository=registry.example.com/ml/kubefusion-trainer",
                      "--set", "trainer.image.tag=2026.11.1",
                      "--set", "operator.imagePullSecrets[0].name=regcred"],
}

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion; the CRD's CEL rules use fieldPath, new
# in 1.28) and the newest schema kubernetes-validate has.
KUBERNETES_VERSIONS = ("1.28.0", "1.37.0")
PROMETHEUS_OPERATOR_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")


# `helm lint` has no --api-versions: the auto-detected set renders what "monitoring-on" lints.
@pytest.mark.parametrize("name", [n for n in VALUE_SETS if "--api-versions" not in VALUE_SETS[n]])
def test_helm_lint_strict(helm, name):
    done = run([helm, "lint", "--strict", str(CHART), *VALUE_SETS[name]])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_objects_validate(render, name):
    objects = render(*VALUE_SETS[name])
    assert objects
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']} ({name})"
        if obj["kind"] in PROMETHEUS_OPERATOR_KINDS:
            errors = sorted(jsonschema.Draft7Validator(PROMETHEUS_OPERATOR_SCHEMAS[obj["kind"]]).iter_errors(obj),
                            key=str)
            assert not errors, f"{where}: " + "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} is invalid for Kubernetes {version}: {exc.message} at "
                            f"{'/'.join(map(str, exc.path))}")


def test_defaults_install_crd_operator_and_cluster_rbac_without_monitoring(render):
    objects = render()
    kinds = sorted(o["kind"] for o in objects)
    # The dashboard ConfigMap is the one monitoring object that needs no Prometheus operator.
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "CustomResourceDefinition", "Deployment",
                     "Service", "Service", "ServiceAccount"]  # metrics, progress
    crd = one(objects, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "multimodaltrainjobs.kubefusion.io"
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubefusion-operator",
                                    "namespace": "kubefusion-system"}]
    deployment = one(objects, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [a for a in args if a.startswith("--namespace")], "cluster-wide by default"


def test_operator_pod_is_locked_down_and_probed_on_healthz(render):
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081, "progress": 8082}
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8081
    assert pod["serviceAccountName"] == "kubefusion-operator"


def service_named(objects, suffix):
    (found,) = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"].endswith(suffix)]
    return found


def test_metrics_service_targets_the_operator_metrics_port(render):
    objects = render()
    service = service_named(objects, "-metrics")
    deployment = one(objects, "Deployment")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]


def test_the_progress_service_is_what_new_jobs_pods_are_told_to_report_to(render):
    objects = render()
    service = service_named(objects, "-progress")
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert service["spec"]["ports"] == [{"name": "progress", "port": 8082, "targetPort": "progress",
                                         "protocol": "TCP"}]
    assert "--progress-port=8082" in container["args"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KUBEFUSION_OPERATOR_PROGRESS_URL"] == \
        f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:8082"
    from kubefusion_operator.__main__ import build_parser
    from kubefusion_operator.options import Options

    assert build_parser(Options()).parse_args(container["args"]).progress_port == 8082


def test_progress_off_serves_no_endpoint_and_tells_the_pods_nothing(render):
    objects = render("--set", "progress.enabled=false")
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "Service"] == ["kubefusion-operator-metrics"]
    assert "--progress-port=0" in container["args"]
    assert "KUBEFUSION_OPERATOR_PROGRESS_URL" not in {e["name"] for e in container["env"]}
    assert "progress" not in {p["name"] for p in container["ports"]}


def test_watch_namespaces_gives_a_role_per_namespace_and_starts_the_operator_with_them(render):
    objects = render(*VALUE_SETS["namespaced"])
    roles = by_kind(objects, "Role")
    bindings = by_kind(objects, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"][0]["namespace"] == "kubefusion-system"
        assert binding["roleRef"]["kind"] == "Role"
    # What stays cluster-wide is only what cannot be namespaced.
    for role in by_kind(objects, "ClusterRole"):
        for rule in role["rules"]:
            assert set(r.split("/")[0] for r in rule.get("resources", [])) <= sync_deploy.CLUSTER_SCOPED
    rules = yaml.safe_load((CHART / "files" / "operator-rules.yaml").read_text())
    assert roles[0]["rules"] == rules["namespacedRules"]
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]
    podmonitor = one(objects, "PodMonitor")
    assert podmonitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_custom_images_reach_the_deployment_and_the_trainer_default(render):
    container = one(render(*VALUE_SETS["custom-images"]), "Deployment")["spec"]["template"]["spec"]
    assert container["imagePullSecrets"] == [{"name": "regcred"}]
    (operator,) = container["containers"]
    assert operator["image"] == "registry.example.com/ml/kubefusion-operator@sha256:" + "a" * 64
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert env["KUBEFUSION_OPERATOR_DEFAULT_TRAINER_IMAGE"] == "registry.example.com/ml/kubefusion-trainer:2026.11.1"


def test_image_tags_default_to_the_app_version(render):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (operator,) = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert operator["image"] == f"kubefusion/kubefusion-operator:{chart['appVersion']}"
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert env["KUBEFUSION_OPERATOR_DEFAULT_TRAINER_IMAGE"] == f"kubefusion/kubefusion-trainer:{chart['appVersion']}"


def test_monitoring_objects_scrape_operator_and_every_rank(render):
    objects = render(*VALUE_SETS["monitoring-on"])
    servicemonitor = one(objects, "ServiceMonitor")
    assert servicemonitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = service_named(objects, "-metrics")
    assert servicemonitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = servicemonitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert {"action": "replace", "targetLabel": "job", "replacement": "kubefusion-operator"} in endpoint["relabelings"]

    podmonitor = one(objects, "PodMonitor")
    assert podmonitor["spec"]["selector"]["matchLabels"] == {"kubefusion.io/component": "training"}
    ports = [e["port"] for e in podmonitor["spec"]["podMetricsEndpoints"]]
    assert ports == [f"metrics-{i}" for i in range(8)]
    assert all(e["honorLabels"] is True for e in podmonitor["spec"]["podMetricsEndpoints"])

    dashboard = one(objects, "ConfigMap")
    assert dashboard["metadata"]["namespace"] == "grafana"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["kubefusion-training.json"])["uid"] == "kubefusion-training"


def test_monitoring_auto_follows_the_cluster_and_false_wins(render):
    assert not by_kind(render(), "PrometheusRule")
    detected = render(*VALUE_SETS["monitoring-auto-detected"])
    assert {o["kind"] for o in detected} >= {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}
    forced_off = render("--api-versions", "monitoring.coreos.com/v1", "--set", "monitoring.enabled=false")
    assert not [o for o in forced_off if o["kind"] in PROMETHEUS_OPERATOR_KINDS]


# (flags, Prometheus-operator objects expected, dashboard expected). `helm template` asks no cluster: "auto"
# sees monitoring.coreos.com/v1 only when --api-versions names it; the dashboard ConfigMap has its own switch.
MONITORING_COMBINATIONS = [
    ([], False, True),
    (["--api-versions", "monitoring.coreos.com/v1"], True, True),
    (["--set", "monitoring.enabled=true"], True, True),
    (["--set", "monitoring.enabled=false"], False, True),
    (["--api-versions", "monitoring.coreos.com/v1", "--set", "monitoring.enabled=false"], False, True),
    (["--set", "monitoring.grafanaDashboard.enabled=false"], False, False),
    (["--set", "monitoring.enabled=true", "--set", "monitoring.grafanaDashboard.enabled=false"], True, False),
    (["--set", "monitoring.enabled=false", "--set", "monitoring.grafanaDashboard.enabled=false"], False, False),
]


@pytest.mark.parametrize("flags, prometheus_objects, dashboard", MONITORING_COMBINATIONS,
                         ids=[" ".join(f for f in c[0] if f.startswith(("monitoring", "--api"))) or "defaults"
                              for c in MONITORING_COMBINATIONS])
def test_dashboard_is_gated_apart_from_the_prometheus_operator_objects(render, flags, prometheus_objects,
                                                                        dashboard):
    kinds = [o["kind"] for o in render(*flags)]
    for kind in PROMETHEUS_OPERATOR_KINDS:
        assert kinds.count(kind) == int(prometheus_objects), f"{kind} with {flags}"
    assert kinds.count("ConfigMap") == int(dashboard), f"dashboard ConfigMap with {flags}"


def test_training_stalled_threshold_is_a_chart_value(render):
    def stalled(*flags: str) -> dict[str, Any]:
        rule = one(render("--set", "monitoring.enabled=true", *flags), "PrometheusRule")
        (found,) = [r for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"] == "KubefusionTrainingStalled"]
        return found

    source = yaml.safe_load((ROOT / "monitoring" / "alerts.yaml").read_text())
    (tested,) = [r for g in source["groups"] for r in g["rules"] if r["alert"] == "KubefusionTrainingStalled"]
    assert stalled()["expr"] == tested["expr"], "the default is the promtool-tested threshold"
    assert tested["labels"]["severity"] == "warning"
    changed = stalled("--set", "monitoring.prometheusRule.trainingStalledMinutes=90")["expr"]
    assert changed.rstrip().endswith("> 90 * 60") and "30 * 60" not in changed
    assert changed.replace("> 90 * 60", "> 30 * 60") == tested["expr"]


def test_each_monitoring_object_can_be_turned_off(render):
    objects = render("--set", "monitoring.enabled=true", "--set", "monitoring.podMonitor.enabled=false",
                     "--set", "monitoring.grafanaDashboard.enabled=false")
    kinds = {o["kind"] for o in objects}
    assert "PodMonitor" not in kinds and "ConfigMap" not in kinds
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds


def test_dashboard_sidecar_label_is_configurable(render):
    dashboard = one(render("--set", "monitoring.enabled=true", "--set", "monitoring.grafanaDashboard.label=dash",
                           "--set", "monitoring.grafanaDashboard.labelValue=kubefusion"), "ConfigMap")
    assert dashboard["metadata"]["labels"]["dash"] == "kubefusion"
    assert "grafana_dashboard" not in dashboard["metadata"]["labels"]


def test_alerts_can_be_disabled_and_labelled(render):
    rule = one(render("--set", "monitoring.enabled=true",
                      "--set", "monitoring.prometheusRule.disabledAlerts={KubefusionGPUUnderused}",
                      "--set", "monitoring.prometheusRule.alertLabels.team=ml-platform"), "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    names = {r["alert"] for r in alerts}
    assert "KubefusionGPUUnderused" not in names and "KubefusionTrainingStalled" in names
    assert all(r["labels"]["team"] == "ml-platform" and r["labels"]["severity"] for r in alerts)


@pytest.mark.parametrize("flags, complaint", [
    (["--set", "monitoring.enabled=maybe"], "/monitoring/enabled"),
    (["--set", "operator.watchNamespaces={Team_A}"], "/operator/watchNamespaces/0"),
    (["--set", "operator.image.digest=latest"], "/operator/image/digest"),
    (["--set", "monitoring.prometheusRule.disabledAlerts={NoSuchAlert}"], "/monitoring/prometheusRule/disabledAlerts/0"),
    (["--set", "operator.replicas=2"], "replicas"),
    (["--set", "monitoring.prometheusRule.trainingStalledMinutes=1"], "/monitoring/prometheusRule/trainingStalledMinutes"),
    (["--set", "operator.preferredBackend=Volcano"], "/operator/preferredBackend"),
    (["--set", "trainJob.runtime.create=maybe"], "/trainJob/runtime/create"),
])
def test_schema_rejects_bad_values_naming_the_key(helm, flags, complaint):
    done = run([helm, "template", "x", str(CHART), *flags])
    assert done.returncode != 0
    assert complaint in done.stderr, done.stderr


def notes(helm: str, *flags: str) -> str:
    # `helm template` skips NOTES.txt; a client-side dry-run install renders it without a cluster.
    done = run([helm, "install", "kubefusion", str(CHART), "-n", "kubefusion-system", "--dry-run=client", *flags])
    assert done.returncode == 0, done.stderr
    return done.stdout.split("NOTES:", 1)[1]


@pytest.mark.parametrize("flags, expected, absent", [
    ([], ["all namespaces", "not created", "--api-versions monitoring.coreos.com/v1", "monitoring.enabled=true",
          "ConfigMap kubefusion-dashboard", "ClusterTrainingRuntime kubefusion was not installed",
          "--api-versions trainer.kubeflow.org/v1alpha1"], ["are installed"]),
    (["--set", "operator.watchNamespaces={team-a,team-b}", "--set", "monitoring.enabled=true"],
     ["namespaces: team-a, team-b", "PodMonitor", "monitoring.podMonitor.labels", "namespace: team-a}"],
     ["not created"]),
    (["--set", "monitoring.enabled=false", "--set", "monitoring.grafanaDashboard.enabled=false"],
     ["monitoring.enabled is false"], ["--api-versions monitoring.coreos.com/v1", "kubefusion-dashboard"]),
    (["--set", "trainJob.runtime.create=true", "--set", "operator.preferredBackend=TrainJob"],
     ["ClusterTrainingRuntime kubefusion installed with this release", "(TrainJob where both are"],
     ["was not installed"]),
    (["--set", "trainJob.runtime.create=false"], [], ["ClusterTrainingRuntime kubefusion"]),
])
def test_notes_tell_what_was_installed_and_how_to_check_it(helm, flags, expected, absent):
    text = notes(helm, *flags)
    for wanted in ["kubectl get mmtj", "pytorchjobs.kubeflow.org", "trainjobs.trainer.kubeflow.org",
                   "logs deploy/kubefusion-operator",
                   "kubectl explain mmtj.spec", *expected]:
        assert wanted in text, f"{wanted!r} missing from NOTES:\n{text}"
    for unwanted in ["examples/", "registry.example.com", *absent]:
        assert unwanted not in text, f"{unwanted!r} in NOTES:\n{text}"


def test_notes_job_example_is_a_valid_job_for_the_crd_and_the_trainer(helm, tmp_path):
    """A packaged-chart user has no examples/ folder: the job NOTES prints must be accepted as it is."""
    from kubefusion.config import load_job_file

    text = notes(helm)
    body = text.split("kubectl apply -f -\n", 1)[1].split("\n  EOF", 1)[0]
    document = yaml.safe_load(textwrap.dedent(body))
    assert (document["apiVersion"], document["kind"]) == ("kubefusion.io/v1alpha1", "MultimodalTrainJob")
    crd = yaml.safe_load((CHART / "crds" / "multimodaltrainjobs.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    errors = list(jsonschema.Draft4Validator(version["schema"]["openAPIV3Schema"]["properties"]["spec"])
                  .iter_errors(document["spec"]))
    assert not errors, [e.message for e in errors]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(document))
    job = load_job_file(path)
    assert job.resources.gpus_per_node == 1 and not job.model.vision.pretrained and not job.model.text.pretrained


# ------------------------------------------------------------------------------------------------------
# Values documentation: every key in values.yaml is in the README table and in values.schema.json.

def value_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of values.yaml: leaves and empty maps (their contents are free-form)."""
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in FREE_FORM:
            paths += value_paths(value, path + ".")
        else:
            paths.append(path)
    return paths


# Maps passed through to Kubernetes as they are (their keys are Kubernetes', not the chart's).
FREE_FORM = {"operator.resources"}


def values_section() -> str:
    """The README from its "## Values" heading on (other tables there name alerts, not values)."""
    readme = (CHART / "README.md").read_text()
    assert "\n## Values\n" in readme, "charts/kubefusion/README.md needs a '## Values' section"
    return readme.split("\n## Values\n", 1)[1]


def test_every_value_is_documented_in_the_readme_and_typed_in_the_schema():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = values_section()
    schema = json.loads((CHART / "values.schema.json").read_text())
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.MULTILINE))
    missing_readme, missing_schema = [], []
    for path in value_paths(values):
        if path not in documented:
            missing_readme.append(path)
        node = schema
        for part in path.split("."):
            node = node.get("properties", {}).get(part)
            if node is None:
                missing_schema.append(path)
                break
    assert not missing_readme, f"values missing from the README values table: {missing_readme}"
    assert not missing_schema, f"values missing from values.schema.json: {missing_schema}"
    stale = sorted(documented - set(value_paths(values)))
    assert not stale, f"README documents values that values.yaml does not have: {stale}"


def test_readme_defaults_match_values_yaml():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = values_section()
    rows = dict(re.findall(r"^\| `([^`]+)` \| `([^`]*)` \|", readme, flags=re.MULTILINE))
    wrong = {}
    for path, shown in rows.items():
        node: Any = values
        for part in path.split("."):
            node = node[part]
        if shown != json.dumps(node, separators=(",", ":")):
            wrong[path] = (shown, json.dumps(node, separators=(",", ":")))
    assert not wrong, f"README default differs from values.yaml (shown, actual): {wrong}"


def test_disabled_alerts_enum_lists_exactly_the_shipped_alerts():
    schema = json.loads((CHART / "values.schema.json").read_text())
    enum = schema["properties"]["monitoring"]["properties"]["prometheusRule"]["properties"]["disabledAlerts"][
        "items"]["enum"]
    alerts = yaml.safe_load((ROOT / "monitoring" / "alerts.yaml").read_text())
    assert sorted(enum) == sorted(r["alert"] for g in alerts["groups"] for r in g["rules"])


# ------------------------------------------------------------------------------------------------------
# Structural schemas of the Prometheus operator's kinds (monitoring.coreos.com/v1), for the fields this
# chart uses. kubernetes-validate has no schemas for CRDs; unknown fields are rejected here as --strict would.

_DURATION = {"type": "string",
             "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {"type": "object", "required": ["name", "namespace"],
             "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                            "namespace": {"type": "string"}, "labels": _STRING_MAP, "annotations": _STRING_MAP}}
_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": _STRING_MAP,
    "matchExpressions": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["key", "operator"],
        "properties": {"key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                       "values": {"type": "array", "items": {"type": "string"}}}}}}}
_NAMESPACE_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}}
_RELABELINGS = {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
    "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "labelmap", "LabelMap",
                        "labeldrop", "LabelDrop", "labelkeep", "LabelKeep"]},
    "sourceLabels": {"type": "array", "items": {"type": "string"}}, "separator": {"type": "string"},
    "targetLabel": {"type": "string"}, "regex": {"type": "string"}, "replacement": {"type": "string"}}}}
_ENDPOINT = {"type": "object", "additionalProperties": False, "required": ["port"], "properties": {
    "port": {"type": "string", "minLength": 1}, "path": {"type": "string"}, "interval": _DURATION,
    "honorLabels": {"type": "boolean"}, "relabelings": _RELABELINGS}}


def _kind(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {"apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": kind},
                           "metadata": _METADATA, "spec": spec}}


PROMETHEUS_OPERATOR_SCHEMAS = {
    "ServiceMonitor": _kind("ServiceMonitor", {
        "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
        "properties": {"selector": _SELECTOR, "namespaceSelector": _NAMESPACE_SELECTOR,
                       "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT}}}),
    "PodMonitor": _kind("PodMonitor", {
        "type": "object", "additionalProperties": False, "required": ["selector", "podMetricsEndpoints"],
        "properties": {"selector": _SELECTOR, "namespaceSelector": _NAMESPACE_SELECTOR,
                       "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT}}}),
    "PrometheusRule": _kind("PrometheusRule", {
        "type": "object", "additionalProperties": False, "required": ["groups"], "properties": {"groups": {
            "type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "rules"], "properties": {
                    "name": {"type": "string", "minLength": 1}, "interval": _DURATION,
                    "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False, "required": ["expr"],
                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                        "properties": {"alert": {"type": "string"}, "record": {"type": "string"},
                                       "expr": {"type": "string", "minLength": 1}, "for": _DURATION,
                                       "labels": _STRING_MAP, "annotations": _STRING_MAP}}}}}}}}),
}


# ------------------------------------------------------------------------------------------------------
# Kubeflow Trainer v2: the ClusterTrainingRuntime of the TrainJob backend.

TRAINER_API = ["--api-versions", "trainer.kubeflow.org/v1alpha1"]


@pytest.mark.parametrize("flags, installed", [
    ([], False),  # `helm template` sees no Trainer
    (TRAINER_API, True),
    (["--set", "trainJob.runtime.create=true"], True),
    ([*TRAINER_API, "--set", "trainJob.runtime.create=false"], False),
])
def test_training_runtime_follows_trainer_and_false_wins(render, flags, installed):
    assert len(by_kind(render(*flags), "ClusterTrainingRuntime")) == int(installed)


def test_training_runtime_runs_the_trainer_image_and_the_values_the_operator_checks_jobs_against(render):
    from kubefusion_operator.backends import runtime_conflicts

    objects = render(*TRAINER_API, "--set", "trainer.image.repository=registry.example.com/ml/kubefusion-trainer",
                     "--set", "trainer.image.tag=2026.11.1", "--set", "trainJob.runtime.name=ml-kubefusion",
                     "--set", "trainJob.runtime.priorityClassName=training", "--set", "trainJob.runtime.backoffLimit=5",
                     "--set", "trainJob.runtime.ttlSecondsAfterFinished=600", "--set", "operator.preferredBackend=TrainJob")
    runtime = one(objects, "ClusterTrainingRuntime")
    assert runtime["metadata"]["name"] == "ml-kubefusion" and "namespace" not in runtime["metadata"]
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node" and job["replicas"] == 1
    assert job["template"]["metadata"]["labels"] == {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
    pod = job["template"]["spec"]["template"]
    for version in KUBERNETES_VERSIONS:  # the pod template of the Job, as Kubernetes checks it
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
                                      "template": pod}, version, strict=True)
    image = "registry.example.com/ml/kubefusion-trainer:2026.11.1"
    assert [c["image"] for c in pod["spec"]["initContainers"] + pod["spec"]["containers"]] == [image, image]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["node"]  # the name Trainer gives trainer.* to
    # What a job on this runtime must ask for, and what the operator is told.
    job_spec = {"image": image, "scheduling": {"priorityClassName": "training"},
                "runPolicy": {"backoffLimit": 5, "ttlSecondsAfterFinished": 600}}
    assert runtime_conflicts(job_spec, runtime) == []
    assert len(runtime_conflicts({"image": image}, runtime)) == 3
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBEFUSION_OPERATOR_TRAINING_RUNTIME"] == "ml-kubefusion"
    assert env["KUBEFUSION_OPERATOR_PREFERRED_BACKEND"] == "TrainJob"
    assert env["KUBEFUSION_OPERATOR_DEFAULT_TRAINER_IMAGE"] == image


def test_operator_accepts_the_arguments_the_chart_passes(render):
    """The Deployment's args parse with the real `kubefusion-operator` parser (the image's entry point)."""
    from kubefusion_operator.__main__ import build_parser as operator_parser
    from kubefusion_operator.options import Options

    def build_parser():
        return operator_parser(Options())

    (container,) = one(render("--set", "operator.watchNamespaces={team-a,team-b}", "--set", "operator.verbose=true"),
                       "Deployment")["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.namespaces == ["team-a", "team-b"]
    assert args.liveness == "http://0.0.0.0:8081/healthz" and args.metrics_port == 8080 and args.verbose
    (default,) = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert build_parser().parse_args(default["args"]).namespaces is None  # all namespaces


def test_another_release_name_prefixes_objects_but_keeps_the_scrape_job_names(helm):
    done = run([helm, "template", "ml", str(CHART), "-n", "ml-platform", "--set", "monitoring.enabled=true"])
    assert done.returncode == 0, done.stderr
    objects = [o for o in yaml.safe_load_all(done.stdout) if o]
    assert one(objects, "Deployment")["metadata"]["name"] == "ml-kubefusion-operator"
    assert one(objects, "ClusterRoleBinding")["subjects"][0] == {
        "kind": "ServiceAccount", "name": "ml-kubefusion-operator", "namespace": "ml-platform"}
    # The alerts and the dashboard select these job names, whatever the release is called.
    jobs = {r["replacement"] for kind in ("ServiceMonitor", "PodMonitor")
            for e in (one(objects, kind)["spec"].get("endpoints") or one(objects, kind)["spec"]["podMetricsEndpoints"])
            for r in e["relabelings"] if r["targetLabel"] == "job"}
    assert jobs == {"kubefusion-operator", "kubefusion-trainer"}
