"""The fleet operations files (ops/): the Prometheus alert rules and the Grafana dashboard use
only metrics tillplug really exports, and the rules are valid (promtool, when installed)."""

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tillplug.daemon.metrics import Metrics
from tillplug.engine.traffic import Traffic
from tillplug.outbox import Pacer, PacingPolicy

OPS = Path(__file__).resolve().parents[2] / "ops"
RULES = OPS / "prometheus" / "tillplug-alerts.yml"
DASHBOARD = OPS / "grafana" / "tillplug-fleet.json"
PROMQL_WORDS = {
    "sum", "rate", "max", "min", "by", "and", "or", "count", "topk", "delta", "deriv", "increase", "clamp_min",
    "histogram_quantile", "le", "humanize", "humanizeDuration", "up", "on", "without",
}  # fmt: skip


def exported_metrics() -> set[str]:
    """Every series name a daemon's /metrics can show, with a device, a printer and traffic."""
    metrics = Metrics()
    stats = SimpleNamespace(depth=1, oldest_pending_age=2.0, dead=0)
    device = SimpleNamespace(name="scanner0", kind="scanner", reconnects=0, state=SimpleNamespace(value="ready"))
    metrics.watch(lambda: stats, lambda: [device], lambda: {"printer0": "ok"})
    traffic = Traffic()
    traffic.request("lookup")
    traffic.answered(429, None, "lookup")
    metrics.watch_traffic(traffic, Pacer(PacingPolicy(share=1.0), traffic=traffic).view)
    metrics.scans.labels("member").inc()
    metrics.engine_call("users", 0.1, "timeout")
    text = metrics.exposition()[0].decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")} | {
        "up"
    }


def names_in(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"by \([^)]*\)", "", expr)
    return {w for w in re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", expr) if w not in PROMQL_WORDS}


def test_every_alert_is_complete_and_uses_only_exported_metrics():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    known = exported_metrics()
    alerts = [rule for group in groups for rule in group["rules"]]
    assert len(alerts) >= 10
    for rule in alerts:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        unknown = names_in(rule["expr"]) - known
        assert not unknown, f"{rule['alert']} uses {unknown}, which tillplug does not export"
    covered = " ".join(rule["expr"] for rule in alerts)
    for metric in (
        "outbox_oldest_age",
        "outbox_dead",
        "rate_limited",
        "engine_failures",
        "printer_status",
        "device_ready",
    ):
        assert metric in covered


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_accepts_the_rules():
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_dashboard_is_grafana_json_over_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    known = exported_metrics()
    assert dashboard["uid"] and dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            unknown = names_in(target["expr"]) - known
            assert not unknown, f"panel {panel['title']!r} uses {unknown}"


def test_status_json_is_one_object_for_scripts_and_metrics_count_requests_by_use_case(tmp_path, capsys):
    from tillplug.commands.cli import main
    from tillplug.commands.virtual.till import VirtualTill

    with VirtualTill(tmp_path / "till") as till:
        assert till.api.get("/v1/members/1000001").status_code == 200
        metrics = till.api.get("/metrics").text
        lookups = re.search(r'tillplug_engine_requests_total\{use_case="lookup"\} (\d+)', metrics)
        assert lookups and int(lookups.group(1)) >= 1  # set by the route, counted by the engine client
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f'till_id="t"\nbranch_id="b"\n[engine]\npreset="simulator"\n'
            f'[api]\nlisten="127.0.0.1:{till.daemon.api_port}"\n'
        )
        assert main(["status", "--json", "--config", str(cfg)]) == 0
        health = json.loads(capsys.readouterr().out)
        assert health["status"] == "ok" and health["outbox"]["pacing"]["sharePerSecond"] == 50
    assert main(["status", "--json", "--config", str(cfg)]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "not_running"
