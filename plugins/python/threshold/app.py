"""The classic threshold rule, in Python.

Config (JSON, every key optional):
    {"thresholds": {"cpu_usage": 80, "memory_usage": 80}}

An alert `<Metric>High` (warning) for every metric above its threshold, and
`TargetDown` (critical) when the poll failed. Build:
    componentize-py -d ../../../wit -w rule componentize -p . -p .. app -o threshold.wasm
"""

import json

import vigil_rule
from componentize_py_types import Err
from wit_world.imports import host, types

DEFAULTS = {"cpu_usage": 80.0, "memory_usage": 80.0}


def alert_name(metric: str) -> str:
    words = metric.replace(".", "_").split("_")
    return "".join(word[:1].upper() + word[1:] for word in words if word) + "High"


class Threshold:
    thresholds = DEFAULTS

    def configure(self, config: str) -> types.RuleInfo:
        try:
            parsed = json.loads(config)
        except ValueError as error:
            raise Err(f"invalid threshold config: {error}")
        thresholds = parsed.get("thresholds", DEFAULTS)
        for metric, limit in thresholds.items():
            if not isinstance(limit, (int, float)):
                raise Err(f"threshold `{metric}`: expected a number, got {limit!r}")
        Threshold.thresholds = {metric: float(limit) for metric, limit in thresholds.items()}
        host.log(host.Level.INFO, f"python threshold watching {sorted(Threshold.thresholds)}")
        return types.RuleInfo(
            name="threshold-py",
            version="0.1.0",
            description="thresholds, written in Python",
            metrics=sorted(Threshold.thresholds),
        )

    def evaluate(self, sample: vigil_rule.Sample) -> types.Verdict:
        alerts = []
        if isinstance(sample.health, types.Health_Down):
            summary = f"target `{sample.target}` is down: {sample.health.value}"
            alerts.append(
                types.Alert(
                    name="TargetDown",
                    severity=types.Severity.CRITICAL,
                    summary=summary,
                    labels=[],
                    annotations=[],
                    for_ms=0,
                    keep_firing_for_ms=0,
                )
            )
            return types.Verdict(alerts=alerts, actions=[])
        for metric in sample.metrics:
            limit = Threshold.thresholds.get(metric.name)
            if limit is not None and metric.value > limit:
                summary = f"{metric.name} is {metric.value:.1f}, above {limit:g}"
                labels = [types.Label("metric", metric.name)] + list(metric.labels)
                alerts.append(
                    types.Alert(
                        name=alert_name(metric.name),
                        severity=types.Severity.WARNING,
                        summary=summary,
                        labels=labels,
                        annotations=[],
                        for_ms=0,
                        keep_firing_for_ms=0,
                    )
                )
        return types.Verdict(alerts=alerts, actions=[])


WitWorld = vigil_rule.export(Threshold)
