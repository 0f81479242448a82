// The classic threshold rule, in JavaScript.
//
// Config (JSON, every key optional):
//     {"thresholds": {"cpu_usage": 80, "memory_usage": 80}}
//
// An alert `<Metric>High` (warning) for every metric above its threshold, and
// `TargetDown` (critical) when the poll failed. Build (from plugins/js, after
// `npm ci`):
//     npm run build:threshold

// The version comes from the WIT the rule is built against (../../../wit).
import * as host from "vigil:rules/host";
// Keeps each target's series and hands `evaluate` whole samples (see ../vigil.js).
import { rule } from "../vigil.js";

const DEFAULTS = { cpu_usage: 80, memory_usage: 80 };
let thresholds = DEFAULTS;

// `cpu_usage` -> `CpuUsageHigh`, `disk.used` -> `DiskUsedHigh`.
function alertName(metric) {
  const words = metric.split(/[._]/).filter((word) => word.length > 0);
  return words.map((word) => word[0].toUpperCase() + word.slice(1)).join("") + "High";
}

// The exports the host calls: `rule` turns its `evaluate(target, ...)` into
// `evaluate(sample)` below.
export const { configure, defineTarget, forgetTarget, evaluate } = rule({
  // A `result<rule-info, string>`: return the info, or throw the error text.
  configure(config) {
    let parsed;
    try {
      parsed = JSON.parse(config);
    } catch (error) {
      throw `invalid threshold config: ${error.message}`;
    }
    const wanted = parsed.thresholds ?? DEFAULTS;
    for (const [metric, limit] of Object.entries(wanted)) {
      if (typeof limit !== "number") {
        throw `threshold \`${metric}\`: expected a number, got ${JSON.stringify(limit)}`;
      }
    }
    thresholds = wanted;
    const metrics = Object.keys(thresholds).sort();
    host.log("info", `js threshold watching ${metrics.join(", ")}`);
    return {
      name: "threshold-js",
      version: "0.1.0",
      description: "thresholds, written in JavaScript",
      metrics,
    };
  },

  evaluate(sample) {
    const alerts = [];
    if (sample.health.tag === "down") {
      alerts.push({
        name: "TargetDown",
        severity: "critical",
        summary: `target \`${sample.target}\` is down: ${sample.health.val}`,
        labels: [],
        annotations: [],
        forMs: 0,
        keepFiringForMs: 0,
      });
      return { alerts, actions: [] };
    }
    for (const metric of sample.metrics) {
      const limit = thresholds[metric.name];
      if (limit !== undefined && metric.value > limit) {
        alerts.push({
          name: alertName(metric.name),
          severity: "warning",
          summary: `${metric.name} is ${metric.value.toFixed(1)}, above ${limit}`,
          labels: [{ name: "metric", value: metric.name }, ...metric.labels],
          annotations: [],
          forMs: 0,
          keepFiringForMs: 0,
        });
      }
    }
    return { alerts, actions: [] };
  },
});
