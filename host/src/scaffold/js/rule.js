// `{{name}}`: a Vigil rule that raises `<Metric>High` while a metric is above
// a limit, e.g. `CpuUsageHigh` while `cpu_usage` is above 80.
//
// Config (JSON, from the `config` of the rule's `[[rules]]` table in the host
// config; both keys optional):
//     {"metric": "cpu_usage", "above": 80}
//
// Bindings, as componentize-qjs maps `wit/vigil.wit`: records are objects
// with camelCase keys, enums are strings, variants are `{ tag, val }`, and
// `result<T, string>` is "return T or throw the string".

// The version comes from `wit/vigil.wit`, the contract this rule is built against.
import * as host from "vigil:rules/host";
// Keeps each target's series and hands `evaluate` whole samples (see vigil.js).
import { rule } from "./vigil.js";

const DEFAULTS = { metric: "cpu_usage", above: 80 };

// Set by `configure`, which the host calls once, before any sample.
let settings = DEFAULTS;

// `cpu_usage` -> `CpuUsageHigh`, `disk.used` -> `DiskUsedHigh`.
function alertName(metric) {
  const words = metric.split(/[._]/).filter((word) => word.length > 0);
  return words.map((word) => word[0].toUpperCase() + word.slice(1)).join("") + "High";
}

// The exports the host calls: `rule` turns the contract's `evaluate(target,
// ...)` into `evaluate(sample)` below.
export const { configure, defineTarget, forgetTarget, evaluate } = rule({
  configure(config) {
    // A thrown string refuses the rule; the operator sees it as is.
    let given;
    try {
      given = JSON.parse(config);
    } catch (error) {
      throw `invalid config: ${error.message}`;
    }
    if (typeof given !== "object" || given === null || Array.isArray(given)) {
      throw `invalid config: expected a JSON object, got ${config}`;
    }
    // A misspelt key is an error, not a silently ignored limit.
    const unknown = Object.keys(given).filter((key) => !(key in DEFAULTS));
    if (unknown.length > 0) {
      throw `invalid config: unknown key \`${unknown[0]}\`, expected \`metric\` or \`above\``;
    }
    const { metric, above } = { ...DEFAULTS, ...given };
    if (typeof metric !== "string") {
      throw `invalid config: \`metric\` must be a string, got ${JSON.stringify(metric)}`;
    }
    if (typeof above !== "number") {
      throw `invalid config: \`above\` must be a number, got ${JSON.stringify(above)}`;
    }
    settings = { metric, above };
    host.log("info", `watching ${metric} above ${above}`);
    return {
      name: "{{name}}",
      version: "0.1.0",
      description: `alerts while ${metric} is above ${above}`,
      // The host sends only these metrics: smaller samples, cheaper calls.
      metrics: [metric],
    };
  },

  evaluate(sample) {
    // Level-triggered: return every alert that holds now, every time; the host
    // works out when it starts firing and when it resolves. A failed poll
    // (`sample.health.tag` is "down") has no metrics, so raises nothing.
    const { metric: wanted, above } = settings;
    const alerts = sample.metrics
      .filter((metric) => metric.name === wanted && metric.value > above)
      .map((metric) => ({
        name: alertName(metric.name),
        severity: "warning",
        summary: `${metric.name} is ${metric.value.toFixed(1)}, above ${above}`,
        // One metric can come several times with different labels (a disk per
        // mount); labels keep their alerts apart.
        labels: metric.labels,
        annotations: [],
        // Fire on the first sample above the limit, resolve on the first below.
        forMs: 0,
        keepFiringForMs: 0,
      }));
    return { alerts, actions: [] };
  },
});
