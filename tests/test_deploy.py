"""deploy/: the Kubernetes example and the Grafana dashboard parse, and say what they should."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from bot.metrics import Metrics

DEPLOY = Path(__file__).parent.parent / "deploy"


def manifests() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def test_two_replicas_in_http_mode_probed_on_healthz_and_readyz():
    found = manifests()
    deployment = found["Deployment/ivh-approvals"]
    assert deployment["spec"]["replicas"] == 2
    [bot] = deployment["spec"]["template"]["spec"]["containers"]
    assert bot["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert bot["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert bot["resources"]["requests"]["cpu"] and bot["resources"]["requests"]["memory"]
    sources = {next(iter(s.values()))["name"] for s in bot["envFrom"]}
    assert sources == {"ivh-approvals"}
    secret = found["Secret/ivh-approvals"]["stringData"]
    assert {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "IVH_ACCESS_TOKEN", "REDIS_URL"} <= set(
        secret
    )
    assert "SLACK_APP_TOKEN" not in secret  # HTTP mode: one Request URL for every replica
    assert all(value == "replace-me" for k, value in secret.items() if k != "REDIS_URL")


def test_redis_keeps_an_append_only_file_on_a_volume():
    redis = manifests()["StatefulSet/ivh-approvals-redis"]
    [server] = redis["spec"]["template"]["spec"]["containers"]
    assert server["args"][server["args"].index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def exported_names() -> set[str]:
    """Every sample name /metrics can show (counters' _total, histograms' _bucket and so on)."""
    metrics = Metrics()
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_count", "_sum")}
    return names


def test_every_dashboard_query_names_a_real_metric():
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs
    used = {name for expr in exprs for name in re.findall(r"ivh_approvals_[a-z_]+", expr)}
    assert used and used <= exported_names(), used - exported_names()
    every_family = {f.name for f in Metrics().registry.collect()}
    shown = {n.removesuffix("_total").removesuffix("_bucket") for n in used}
    assert every_family <= shown  # each metric has a panel
