// A stateful rule, in JavaScript: alert when a metric was above its limit in
// at least N of the last M samples of a target.
//
// Config (JSON): {"metric": "cpu_usage", "above": 80, "n": 3, "m": 5}
//
// The window lives in the host's key-value state (one key per target), not in
// a module variable, so it survives a hot reload of this rule and a restart
// of the host. Build (from plugins/js, after `npm ci`):
//     npm run build:sustained

// The version comes from the WIT the rule is built against (../../../wit).
import * as host from "vigil:rules/host";
// Keeps each target's series and hands `evaluate` whole samples (see ../vigil.js).
import { rule } from "../vigil.js";

let settings = { metric: "cpu_usage", above: 80, n: 3, m: 5 };

function camel(metric) {
  const words = metric.split(/[._]/).filter((word) => word.length > 0);
  return words.map((word) => word[0].toUpperCase() + word.slice(1)).join("");
}

// The exports the host calls: `rule` turns its `evaluate(target, ...)` into
// `evaluate(sample)` below.
export const { configure, defineTarget, forgetTarget, evaluate } = rule({
  configure(config) {
    let parsed;
    try {
      parsed = { ...settings, ...JSON.parse(config) };
    } catch (error) {
      throw `invalid config: ${error.message}`;
    }
    const { metric, above, n, m } = parsed;
    if (typeof metric !== "string" || typeof above !== "number") {
      throw "`metric` must be a string and `above` a number";
    }
    if (!Number.isInteger(n) || !Number.isInteger(m) || n < 1 || n > m) {
      throw `need whole numbers 1 <= n <= m, got n=${n}, m=${m}`;
    }
    settings = { metric, above, n, m };
    return {
      name: "sustained-js",
      version: "0.1.0",
      description: `${metric} above ${above} in ${n} of the last ${m} samples`,
      metrics: [metric],
    };
  },

  evaluate(sample) {
    const { metric, above, n, m } = settings;
    const key = `window/${sample.target}`;
    const stored = host.stateGet(key);
    let window = stored === null ? [] : JSON.parse(stored);
    const values = sample.metrics.filter((x) => x.name === metric).map((x) => x.value);
    if (values.length > 0) {
      window = [...window, Math.max(...values) > above].slice(-m);
      host.stateSet(key, JSON.stringify(window));
    }
    const high = window.filter(Boolean).length;
    const alerts = [];
    if (high >= n) {
      alerts.push({
        name: `${camel(metric)}Sustained`,
        severity: "warning",
        summary: `${metric} above ${above} in ${high} of the last ${window.length} samples`,
        labels: [],
        annotations: [],
        forMs: 0,
        keepFiringForMs: 0,
      });
    }
    return { alerts, actions: [] };
  },
});
