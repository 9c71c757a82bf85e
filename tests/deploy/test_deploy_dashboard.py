"""The Grafana dashboard: every panel query is valid PromQL (promtool parses it), it uses only metrics that
the trainer and the operator really export, and it has the variables and panels the issue asks for."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from deploy_util import ROOT, run

pytestmark = pytest.mark.tools

DASHBOARD = json.loads((ROOT / "monitoring" / "dashboard.json").read_text())
PANELS = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
VARIABLES = {v["name"]: v for v in DASHBOARD["templating"]["list"]}

# Grafana fills these in before Prometheus sees the query; promtool needs concrete values.
GRAFANA_SUBSTITUTIONS = {
    r"\$__rate_interval|\$__interval|\$__range": "5m",
    r"\$\{?(namespace|job|stage)\}?": "example",
}


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, with Grafana's variables substituted."""
    found = []
    for panel in PANELS:
        for target in panel["targets"]:
            expr = target["expr"]
            for pattern, value in GRAFANA_SUBSTITUTIONS.items():
                expr = re.sub(pattern, value, expr)
            found.append((f"panel {panel['id']} {panel['title']!r} target {target['refId']}", expr))
    return found


def test_every_panel_query_parses_with_promtool(promtool, tmp_path):
    # One recording rule per query: `promtool check rules` parses each expression and names the bad one.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries())]}]}
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    done = run([promtool, "check", "rules", str(path)])
    if done.returncode != 0:
        bad = [where for i, (where, _) in enumerate(queries()) if f"query_{i}" in done.stdout + done.stderr]
        pytest.fail(f"promtool rejects dashboard queries {bad}:\n{done.stdout}{done.stderr}")
    assert f"SUCCESS: {len(queries())} rules found" in done.stdout


def test_substitution_leaves_no_grafana_variable_but_keeps_regex_groups():
    for where, expr in queries():
        assert not re.search(r"\$(?!1\b)", expr), f"{where}: unsubstituted variable in {expr}"


def exported_metric_names() -> set[str]:
    """Sample names a scrape of a trainer rank and of the operator can show (from the metric families, so
    that a labelled counter nobody has incremented yet still counts)."""
    from prometheus_client import REGISTRY

    import kubefusion_operator.metrics  # noqa: F401  (registers the operator's metrics)
    from kubefusion.train.metrics import TrainerMetrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for registry in (TrainerMetrics("ns", "job", 0, None).registry, REGISTRY):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def test_queries_and_alerts_use_only_exported_kubefusion_metrics():
    exported = exported_metric_names()
    alerts = (ROOT / "monitoring" / "alerts.yaml").read_text()
    used = set(re.findall(r"\bkubefusion_(?:trainer|operator)_[a-z_]+", " ".join(e for _, e in queries()) + alerts))
    assert used, "no kubefusion metric found in the dashboard"
    assert used - exported == set(), f"used but never exported: {sorted(used - exported)}"


def test_datasource_namespace_and_job_variables_drive_every_query():
    assert VARIABLES["datasource"]["type"] == "datasource" and VARIABLES["datasource"]["query"] == "prometheus"
    assert "job_name" in VARIABLES["job"]["definition"]
    for panel in PANELS:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            if "kubefusion_trainer_" in target["expr"]:
                assert 'job_name=~"$job"' in target["expr"] and 'namespace=~"$namespace"' in target["expr"], (
                    f"{panel['title']}: trainer query ignores the namespace/job variables")


# Per-stage series (docs/architecture.md): the fused model and each baseline count steps and epochs from 0.
PROGRESS_AND_THROUGHPUT = ("Epoch", "Step", "Learning rate", "Training loss", "Accuracy", "Samples per second",
                           "Step time", "Data-wait fraction")


def test_progress_and_throughput_are_shown_per_stage_and_filtered_by_the_stage_variable():
    assert "stage" in VARIABLES["stage"]["definition"] and 'job_name=~"$job"' in VARIABLES["stage"]["definition"]
    titles = {p["title"]: p for p in PANELS}
    for title in PROGRESS_AND_THROUGHPUT:
        for target in titles[title]["targets"]:
            assert 'stage=~"$stage"' in target["expr"], f"{title}: ignores the stage variable"
            for by in re.findall(r"by \(([^)]*)\)", target["expr"]):
                assert "stage" in by.split(", "), f"{title}: aggregates the stages together ({target['expr']})"
            assert "{{stage}}" in target["legendFormat"], f"{title}: the legend does not name the stage"


def test_job_level_panels_count_each_rank_once_whatever_the_stage():
    """A rank that has trained the fused model and a baseline has series for both: the rank count and the
    time since the last step must not see it twice, nor the finished stage's frozen timestamp."""
    titles = {p["title"]: p for p in PANELS}
    for title in ("Ranks serving metrics", "Time since last step"):
        (target,) = titles[title]["targets"]
        assert "by (namespace, job_name, rank)" in target["expr"], title
        assert "$stage" not in target["expr"], title


def test_panels_cover_phases_progress_throughput_data_wait_gpus_and_operator():
    exprs = " ".join(t["expr"] for p in PANELS for t in p["targets"])
    for needed in ("kubefusion_operator_jobs", "kubefusion_trainer_step", "kubefusion_trainer_epoch",
                   "kubefusion_trainer_loss", "kubefusion_trainer_accuracy", "kubefusion_trainer_samples_total",
                   "kubefusion_trainer_step_seconds_bucket", "kubefusion_trainer_data_wait_seconds_total",
                   "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", 'up{job="kubefusion-operator"}',
                   "kubefusion_operator_reconcile_errors_total"):
        assert needed in exprs, f"no panel shows {needed}"
    # DCGM is joined to the training pods by (namespace, pod), in either of dcgm-exporter's label styles.
    dcgm = [t["expr"] for p in PANELS for t in p["targets"] if "DCGM_" in t["expr"]]
    assert all("on (namespace, pod)" in e and "exported_pod" in e for e in dcgm)


def test_layout_ids_and_grid_are_consistent():
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
    assert DASHBOARD["uid"] == "kubefusion-training"
