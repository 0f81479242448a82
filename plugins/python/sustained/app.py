"""A stateful rule, in Python: alert when a metric was above its limit in at
least N of the last M samples of a target.

Config (JSON): {"metric": "cpu_usage", "above": 80, "n": 3, "m": 5}

The window lives in the host's key-value state (one key per target), not in
instance memory, so it survives a hot reload of this rule and a restart of
the host. Build:
    componentize-py -d ../../../wit -w rule componentize app -o sustained.wasm
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types


class WitWorld(wit_world.WitWorld):
    metric = "cpu_usage"
    above = 80.0
    n = 3
    m = 5

    def configure(self, config: str) -> types.RuleInfo:
        try:
            parsed = json.loads(config)
            WitWorld.metric = str(parsed.get("metric", "cpu_usage"))
            WitWorld.above = float(parsed.get("above", 80))
            WitWorld.n = int(parsed.get("n", 3))
            WitWorld.m = int(parsed.get("m", 5))
        except (ValueError, TypeError) as error:
            raise Err(f"invalid config: {error}")
        if not 1 <= WitWorld.n <= WitWorld.m:
            raise Err(f"need 1 <= n <= m, got n={WitWorld.n}, m={WitWorld.m}")
        return types.RuleInfo(
            name="sustained-py",
            version="0.1.0",
            description=f"{WitWorld.metric} above {WitWorld.above:g} in {WitWorld.n} of the last {WitWorld.m} samples",
            metrics=[WitWorld.metric],
        )

    def evaluate(self, sample: types.Sample) -> types.Verdict:
        key = f"window/{sample.target}"
        stored = host.state_get(key)
        window = json.loads(stored) if stored is not None else []
        values = [m.value for m in sample.metrics if m.name == WitWorld.metric]
        if values:
            window = (window + [max(values) > WitWorld.above])[-WitWorld.m:]
            host.state_set(key, json.dumps(window))
        alerts = []
        high = sum(window)
        if high >= WitWorld.n:
            name = "".join(w[:1].upper() + w[1:] for w in WitWorld.metric.split("_") if w) + "Sustained"
            summary = f"{WitWorld.metric} above {WitWorld.above:g} in {high} of the last {len(window)} samples"
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
