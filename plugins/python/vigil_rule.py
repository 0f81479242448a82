"""Glue between the `vigil:rules` contract and a rule's `evaluate(sample)`.

Since `vigil:rules@0.3.0` the host sends a target's name, labels and series
(metric names and labels) once, in `define_target`, and then only the values
of each poll, in `evaluate`: the whole sample crossing on every call was most
of a call's cost. This module keeps each target's definition (in the rule's
own memory, which counts against its limit) and rebuilds the sample, so a
rule reads `sample.target`, `sample.timestamp_ms`, `sample.health`,
`sample.metrics` (each with `name`, `value` and `labels`), `sample.labels`
and `sample.recent_actions` as it always did.

Use it in `app.py`:

    import vigil_rule

    class Rule:
        def configure(self, config: str) -> types.RuleInfo: ...
        def evaluate(self, sample: vigil_rule.Sample) -> types.Verdict: ...

    WitWorld = vigil_rule.export(Rule)

One `Rule` object serves every call of the instance; its attributes live
until the rule is reloaded or restarted.
"""

import wit_world


class Metric:
    """One reading: a metric's name, its value and its labels."""

    __slots__ = ("name", "value", "labels")

    def __init__(self, name, value, labels):
        self.name = name
        self.value = value
        self.labels = labels


class Sample:
    """One poll of one target, with the fields rules read before 0.3.0."""

    __slots__ = ("target", "timestamp_ms", "health", "metrics", "labels", "recent_actions")

    def __init__(self, target, timestamp_ms, health, metrics, labels, recent_actions):
        self.target = target
        self.timestamp_ms = timestamp_ms
        self.health = health
        self.metrics = metrics
        self.labels = labels
        self.recent_actions = recent_actions


# Each target's last definition by id: (name, labels, series).
_targets = {}


def export(rule_class):
    """The `WitWorld` class componentize-py exports, serving `rule_class`."""
    rule = rule_class()

    class WitWorld(wit_world.WitWorld):
        def configure(self, config):
            return rule.configure(config)

        def define_target(self, target, name, labels, series):
            _targets[target] = (name, labels, series)

        def forget_target(self, target):
            _targets.pop(target, None)

        def evaluate(self, target, timestamp_ms, health, values, recent_actions):
            name, labels, series = _targets[target]
            # A down poll has no values, so no metrics.
            metrics = [Metric(s.name, value, s.labels) for s, value in zip(series, values)]
            return rule.evaluate(Sample(name, timestamp_ms, health, metrics, labels, recent_actions))

    return WitWorld
