"""The alert rules: promtool accepts them, their unit tests pass, every alert is tested firing and not firing,
and every alert links to a runbook section that exists in docs/deploy.md."""

from __future__ import annotations

import re

import pytest
import yaml
from deploy_util import ROOT, run

pytestmark = pytest.mark.tools

ALERTS = ROOT / "monitoring" / "alerts.yaml"
TESTS = ROOT / "monitoring" / "alerts.test.yaml"


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules(promtool):
    done = run([promtool, "check", "rules", str(ALERTS)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_promtool_unit_tests_pass(promtool):
    done = run([promtool, "test", "rules", str(TESTS)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    firing, silent = set(), set()
    for case in yaml.safe_load(TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), f"alerts never tested firing: {sorted(names - firing)}"
    assert names - silent == set(), f"alerts never tested staying silent: {sorted(names - silent)}"


def test_every_alert_has_severity_summary_and_a_runbook_in_the_docs():
    headings = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                for h in re.findall(r"^#+\s+(.+)$", (ROOT / "docs" / "deploy.md").read_text(), flags=re.MULTILINE)}
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/deploy.md" and anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in headings, f"{rule['alert']}: docs/deploy.md has no heading for #{anchor}"


def test_example_scrape_configs_pass_promtool(promtool, tmp_path):
    """monitoring/scrape-configs.yaml (for a Prometheus without the Prometheus operator). Debian's promtool
    is built without Kubernetes service discovery, so the discovery block is swapped for a static target;
    promtool still checks every other field, the relabelling rules and their regular expressions."""
    config = yaml.safe_load((ROOT / "monitoring" / "scrape-configs.yaml").read_text())
    names = [job["job_name"] for job in config["scrape_configs"]]
    assert names == ["kubefusion-trainer", "kubefusion-operator"]  # the job names the alerts select
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")
        job["static_configs"] = [{"targets": ["localhost:9402"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    done = run([promtool, "check", "config", str(path)])
    assert done.returncode == 0, done.stdout + done.stderr
