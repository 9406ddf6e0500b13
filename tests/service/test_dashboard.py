"""deploy/grafana/genserve.json asks only for what the server exposes: every PromQL expression of the dashboard
(panels and variables) parses, and each metric it selects, each label it matches on and each label it groups by
is in the /metrics output of a real app over the tiny PixelCNN store after a little traffic."""

import json
import re
from pathlib import Path

import numpy as np
import promql_parser
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.api import create_app
from service.engine.engine import Engine
from service.engine.metrics import EngineMetrics
from service.settings import Settings
from service.store import ModelStore

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "genserve.json"
MODEL = "pixelcnn"
SERIES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
          "gauge": ("",), "summary": ("", "_count", "_sum", "_created"), "info": ("_info",)}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every series it scrapes
LABEL_VALUES = re.compile(r"label_values\((?P<selector>.+),\s*(?P<label>\w+)\)")


def exposed(text: str) -> dict[str, set[str] | None]:
    """Series name -> its label names (scrape labels included), from an exposition; None where the series has no
    sample yet (a labelled metric no request has touched), so its labels are unknown."""
    series: dict[str, set[str] | None] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SERIES[family.type]:
            series.setdefault(family.name + suffix, None)
        for sample in family.samples:
            series[sample.name] = (series.get(sample.name) or set(TARGET_LABELS)) | set(sample.labels)
    return series


def with_values(expr: str) -> str:
    """Grafana's variables replaced by values PromQL takes: $__rate_interval and the like by a duration, the
    dashboard's own ($model) by a regex."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: "5m" if m.group(1).startswith("__") else ".*", expr)


def selectors(node) -> list:
    found: list = []
    promql_parser.walk(node, pre_visit=lambda n: found.append(n) if isinstance(n, promql_parser.VectorSelector)
                       else None)
    return found


def metric_name(selector) -> str:
    return selector.name or next(m.value for m in selector.matchers.matchers if m.name == "__name__")


def problems(expr: str, series: dict[str, set[str] | None]) -> list[str]:
    """What in `expr` the server does not expose: metrics, matched labels, labels grouped by."""
    found: list[str] = []
    tree = promql_parser.parse(with_values(expr))  # ValueError on a syntax error
    for selector in selectors(tree):
        name = metric_name(selector)
        if name not in series:
            found.append(f"{name}: no such series")
        elif series[name] is not None:
            found += [f"{name}: no label {m.name!r}" for m in selector.matchers.matchers
                      if m.name != "__name__" and m.name not in series[name]]

    def grouping(node) -> None:
        if not isinstance(node, promql_parser.AggregateExpr) or node.modifier is None:
            return
        labels = [series.get(metric_name(s)) for s in selectors(node.expr)]
        if node.modifier.type == promql_parser.AggModifierType.By and None not in labels:
            found.extend(f"by ({label}): not a label of {node.expr}" for label in node.modifier.labels
                         if not all(label in known for known in labels))

    promql_parser.walk(tree, pre_visit=grouping)
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and variable query; label_values(selector, label) as
    `count by (label) (selector)`, which asks for the same metric and label."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]
    for panel in panels:
        queries += [(f"panel {panel['title']!r} {t['refId']}", t["expr"]) for t in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found = LABEL_VALUES.fullmatch(variable["query"]["query"])
            assert found, f"variable {variable['name']}: expected label_values(selector, label)"
            queries.append((f"variable {variable['name']}", f"count by ({found['label']}) ({found['selector']})"))
    return queries


@pytest.fixture(scope="module")
def series(tiny_store) -> dict[str, set[str] | None]:
    """What /metrics of a real app says after a sample, a stream, a score, a V2 inference and an error."""
    store = ModelStore(tiny_store)
    metrics = EngineMetrics()
    store.register_metrics(metrics.registry)  # as service.main does
    engine = Engine(store, Settings(intra_op_threads=1), metrics)
    x = np.zeros((1, 1, 28, 28), np.int64)
    with TestClient(create_app(engine, Settings(intra_op_threads=1))) as client:
        assert client.post(f"/v1/models/{MODEL}/sample", json={"n": 2, "seed": 1}).status_code == 200
        assert client.post(f"/v1/models/{MODEL}/sample/stream", json={"n": 1, "seed": 1}).status_code == 200
        assert client.post(f"/v1/models/{MODEL}/score", json={"inputs": x[:, 0].tolist()}).status_code == 200
        assert client.post(f"/v2/models/{MODEL}.log_prob/infer", json={"inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "INT64", "data": x.ravel().tolist()}]}).status_code == 200
        assert client.post(f"/v1/models/{MODEL}/sample", json={"n": 0}).status_code == 422
        return exposed(client.get("/metrics").text)


@pytest.mark.parametrize("where, expr", dashboard_queries(), ids=[where for where, _ in dashboard_queries()])
def test_every_dashboard_query_asks_for_what_the_server_exposes(series, where, expr):
    assert not problems(expr, series), f"{where}: {expr}"


def test_the_dashboard_shows_what_the_issue_asks_for():
    trees = [promql_parser.parse(with_values(expr)) for _, expr in dashboard_queries()]
    used = {metric_name(s) for tree in trees for s in selectors(tree)}
    assert {
        "genserve_http_requests_total", "genserve_inference_request_total",  # request rate
        "genserve_inference_request_duration_seconds_bucket",  # p50/p99 by model and function
        "genserve_inference_pending_request_count",  # queue depth
        "genserve_inference_batch_size_bucket", "genserve_inference_batch_size_count",  # batch size
        "genserve_worker_restarts_total", "genserve_audio_generated_seconds_total",
    } <= used


def test_the_check_refuses_a_misspelt_metric_a_wrong_label_and_a_bad_grouping(series):
    assert problems("rate(genserve_http_request_total[5m])", series) == [
        "genserve_http_request_total: no such series"]
    assert problems('genserve_inference_pending_request_count{endpoint="/x"}', series) == [
        "genserve_inference_pending_request_count: no label 'endpoint'"]
    assert len(problems("sum by (function) (rate(genserve_http_requests_total[5m]))", series)) == 1
    assert not problems("sum by (le, endpoint) (rate(genserve_http_request_duration_seconds_bucket[$__range]))", series)
    with pytest.raises(ValueError):
        problems("sum(rate(genserve_http_requests_total[5m])", series)
