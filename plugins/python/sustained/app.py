"""A stateful rule, in Python: alert when a metric was above its limit in at
least N of the last M samples of a target.

Config (JSON): {"metric": "cpu_usage", "above": 80, "n": 3, "m": 5}

The window lives in the host's key-value state (one key per target), not in
instance memory, so it survives a hot reload of this rule and a restart of
the host. Build:
    componentize-py -d ../../../wit -w rule componentize -p . -p .. app -o sustained.wasm
"""

import json

import vigil_rule
from componentize_py_types import Err
from wit_world.imports import host, types


class Sustained:
    metric = "cpu_usage"
    above = 80.0
    n = 3
    m = 5

    def configure(self, config: str) -> types.RuleInfo:
        try:
            parsed = json.loads(config)
            Sustained.metric = str(parsed.get("metric", "cpu_usage"))
            Sustained.above = float(parsed.get("above", 80))
            Sustained.n = int(parsed.get("n", 3))
            Sustained.m = int(parsed.get("m", 5))
        except (ValueError, TypeError) as error:
            raise Err(f"invalid config: {error}")
        if not 1 <= Sustained.n <= Sustained.m:
            raise Err(f"need 1 <= n <= m, got n={Sustained.n}, m={Sustained.m}")
        return types.RuleInfo(
            name="sustained-py",
            version="0.1.0",
            description=f"{Sustained.metric} above {Sustained.above:g} in {Sustained.n} of the last {Sustained.m} samples",
            metrics=[Sustained.metric],
        )

    def evaluate(self, sample: vigil_rule.Sample) -> types.Verdict:
        key = f"window/{sample.target}"
        stored = host.state_get(key)
        window = json.loads(stored) if stored is not None else []
        values = [m.value for m in sample.metrics if m.name == Sustained.metric]
        if values:
            window = (window + [max(values) > Sustained.above])[-Sustained.m:]
            host.state_set(key, json.dumps(window))
        alerts = []
        high = sum(window)
        if high >= Sustained.n:
            name = "".join(w[:1].upper() + w[1:] for w in Sustained.metric.split("_") if w) + "Sustained"
            summary = f"{Sustained.metric} above {Sustained.above:g} in {high} of the last {len(window)} samples"
            alerts.append(
                types.Alert(
                    name=name,
                    severity=types.Severity.WARNING,
                    summary=summary,
                    labels=[],
                    annotations=[],
                    for_ms=0,
                    keep_firing_for_ms=0,
                )
            )
        return types.Verdict(alerts=alerts, actions=[])


WitWorld = vigil_rule.export(Sustained)
