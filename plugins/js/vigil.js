// Glue between the `vigil:rules` contract and a rule's `evaluate(sample)`.
//
// Since `vigil:rules@0.3.0` the host sends a target's name, labels and series
// (metric names and labels) once, in `defineTarget`, and then only the values
// of each poll, in `evaluate`: the whole sample crossing on every call was
// most of a call's cost. This module keeps each target's definition (in the
// rule's own memory, which counts against its limit) and rebuilds the sample,
// so a rule reads `sample.target`, `sample.timestampMs`, `sample.health`,
// `sample.metrics` (each with `name`, `value` and `labels`), `sample.labels`
// and `sample.recentActions` as it always did.
//
// Use it in the rule's module; the four names are the exports the host calls:
//
//     import { rule } from "./vigil.js";
//     export const { configure, defineTarget, forgetTarget, evaluate } = rule({
//       configure(config) { ... return ruleInfo; },
//       evaluate(sample) { ... return verdict; },
//     });

export function rule({ configure, evaluate }) {
  // Each target's last definition by id.
  const targets = new Map();
  return {
    configure,
    defineTarget(target, name, labels, series) {
      targets.set(target, { name, labels, series });
    },
    forgetTarget(target) {
      targets.delete(target);
    },
    evaluate(target, timestampMs, health, values, recentActions) {
      const defined = targets.get(target);
      if (defined === undefined) {
        throw new Error(`target ${target} was never defined`);
      }
      // A down poll has no values, so no metrics.
      const metrics = values.map((value, i) => ({
        name: defined.series[i].name,
        value,
        labels: defined.series[i].labels,
      }));
      return evaluate({
        target: defined.name,
        timestampMs,
        health,
        metrics,
        labels: defined.labels,
        recentActions,
      });
    },
  };
}
