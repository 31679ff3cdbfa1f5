// dashboard.mjs - checks dashboards/halflife.json without Grafana.
//
//   node dashboard.mjs DASHBOARD.json GEN_DIR
//
// Prints one PASS/FAIL line, dashboard_rules: schemaVersion >= 39, a
// Prometheus datasource variable that every panel and query uses, job and
// instance variables that every query filters on, the rows issue 6 names,
// unique panel ids, panels that do not overlap, and PromQL that names only
// metrics the worker exports: the list below (issue 5's names; `up` comes
// from Prometheus itself) and every "halflife_..." name registered in
// worker/*.c, read from the sources, so a new metric needs no edit here and
// a misspelt one in a panel still fails; and each panel README.md or
// deploy/README.md names by row ("the dashboard's Worker row ("Model
// swaps", ...)") is in that row.
// It also writes GEN_DIR/dashboard.ts, the dashboard as a literal typed
// with @grafana/schema's Dashboard, and each panel's options and custom
// field config typed with its panel type's schema, for tsc to check.
import { readFileSync, writeFileSync, mkdirSync, readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";

const [path, genDir] = process.argv.slice(2);
if (!genDir) {
  console.error("usage: node dashboard.mjs DASHBOARD.json GEN_DIR");
  process.exit(2);
}
const dash = JSON.parse(readFileSync(path, "utf8"));

const exported = new Set([
  "up",
  "halflife_events_consumed_total", "halflife_events_invalid_total",
  "halflife_unknown_items_total", "halflife_users", "halflife_state_bytes",
  "halflife_batches_total", "halflife_batch_size",
  "halflife_stage_duration_seconds", "halflife_event_to_publish_seconds",
  "halflife_lists_published_total", "halflife_delivery_errors_total",
  "halflife_snapshot_duration_seconds", "halflife_snapshot_bytes",
  "halflife_snapshot_last_success_timestamp_seconds",
  "halflife_restore_duration_seconds", "halflife_snapshots_total", "halflife_rebalances_total",
  "halflife_assigned_partitions", "halflife_consumer_lag",
  "halflife_model_info", "halflife_evictions_total",
  "halflife_dlq_records_total", "halflife_dlq_errors_total",
  "halflife_broker_up", "halflife_ready", "halflife_partitions_waiting_schema",
]);
const histograms = ["halflife_batch_size", "halflife_stage_duration_seconds",
  "halflife_event_to_publish_seconds", "halflife_snapshot_duration_seconds"];
// The worker's registrations: hl_metrics_counter/gauge/histogram(reg, "name", ...).
const workerDir = join(dirname(resolve(path)), "..", "worker");
for (const f of readdirSync(workerDir).filter((n) => n.endsWith(".c"))) {
  const src = readFileSync(join(workerDir, f), "utf8");
  for (const m of src.matchAll(/hl_metrics_(counter|gauge|histogram)\(\s*[\w>.-]+\s*,\s*"(halflife_\w+)"/g)) {
    exported.add(m[2]);
    if (m[1] === "histogram") histograms.push(m[2]);
  }
}

// The metric names in a PromQL expression: identifiers followed by { or [,
// or standing alone, minus functions, keywords and label names.
const promqlWords = new Set(["sum", "max", "min", "avg", "count", "by", "without",
  "rate", "increase", "irate", "delta", "deriv", "histogram_quantile", "time",
  "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "offset",
  "absent", "clamp_min", "clamp_max", "topk", "bottomk", "label_replace", "vector",
  "scalar", "abs", "changes", "resets", "avg_over_time", "max_over_time", "bool"]);
function metricNames(expr) {
  const bare = expr
    .replace(/"[^"]*"/g, '""')                                  // label values
    .replace(/\{[^}]*\}/g, "{}")                                // label matchers
    .replace(/\[[^\]]*\]/g, "[]")                               // ranges
    .replace(/\b(by|without|on|ignoring)\s*\([^)]*\)/g, "");   // groupings
  const names = new Set();
  for (const m of bare.matchAll(/(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)/g))
    if (!promqlWords.has(m[1])) names.add(m[1]);
  return [...names];
}

function known(name) {
  if (exported.has(name)) return true;
  const base = name.replace(/_(bucket|sum|count)$/, "");
  return base !== name && histograms.includes(base);
}

function panelsOf(d) {
  const out = [];
  for (const p of d.panels ?? []) {
    out.push(p);
    for (const q of p.panels ?? []) out.push(q);
  }
  return out;
}

function checkVariables(errs) {
  const vars = dash.templating?.list ?? [];
  const ds = vars.find((v) => v.type === "datasource" && v.query === "prometheus");
  if (!ds) errs.push("no Prometheus datasource variable");
  for (const n of ["job", "instance"])
    if (!vars.some((v) => v.name === n && v.type === "query"))
      errs.push(`no ${n} query variable`);
  return ds?.name ?? "datasource";
}

function checkLayout(errs, panels) {
  const ids = new Set();
  const cells = new Map();
  for (const p of panels) {
    if (ids.has(p.id)) errs.push(`duplicate panel id ${p.id}`);
    ids.add(p.id);
    const g = p.gridPos;
    if (!g) { errs.push(`panel "${p.title}" has no gridPos`); continue; }
    if (g.x + g.w > 24) errs.push(`panel "${p.title}" wider than the grid`);
    for (let y = g.y; y < g.y + g.h; y++)
      for (let x = g.x; x < g.x + g.w; x++) {
        const k = `${x},${y}`;
        if (cells.has(k)) { errs.push(`panels "${cells.get(k)}" and "${p.title}" overlap`); y = Infinity; break; }
        cells.set(k, p.title);
      }
  }
}

function checkQueries(errs, panels, dsVar) {
  let n = 0;
  for (const p of panels) {
    if (p.type === "row") continue;
    if (p.datasource?.uid !== `\${${dsVar}}`) errs.push(`panel "${p.title}" does not use \${${dsVar}}`);
    if (!p.description) errs.push(`panel "${p.title}" has no description`);
    for (const t of p.targets ?? []) {
      n++;
      const e = t.expr ?? "";
      if (!/job=~"\$job"/.test(e) || !/instance=~"\$instance"/.test(e))
        errs.push(`panel "${p.title}": ${e} does not filter on $job and $instance`);
      for (const m of metricNames(e))
        if (!known(m)) errs.push(`panel "${p.title}": ${m} is not a metric the worker exports`);
    }
  }
  if (n === 0) errs.push("no queries");
}

// The row a panel shows under: a collapsed row holds its panels, else a
// top-level panel belongs to the last row above it (Grafana groups by
// position, not by the order of the JSON array).
function rowOf(panel) {
  let row = null;
  for (const r of dash.panels ?? []) {
    if (r.type !== "row") continue;
    if ((r.panels ?? []).includes(panel)) return r.title;
    if (r.gridPos.y <= panel.gridPos.y && (!row || r.gridPos.y > row.gridPos.y)) row = r;
  }
  return row?.title ?? null;
}

// The docs send readers to panels by row: `the dashboard's Worker row
// ("Model swaps", "Users migrated /s", ...)` in deploy/README.md. Each
// panel so named must be in that row: a row inserted above them once moved
// four of them under "Live path", where the docs' readers did not look.
function checkDocRows(errs, panels) {
  const top = join(dirname(resolve(path)), "..");
  for (const doc of ["README.md", "deploy/README.md"]) {
    const text = readFileSync(join(top, doc), "utf8").replace(/\s+/g, " ");
    for (const m of text.matchAll(/dashboard's ([A-Z][\w ]*?) row \(((?:"[^"]+"(?:, )?)+)\)/g))
      for (const [, title] of m[2].matchAll(/"([^"]+)"/g)) {
        const p = panels.find((q) => q.type !== "row" && q.title === title);
        if (!p) errs.push(`${doc} names a panel "${title}" the dashboard lacks`);
        else if (rowOf(p) !== m[1])
          errs.push(`${doc} puts panel "${title}" in the ${m[1]} row; it is in ${rowOf(p)}`);
      }
  }
}

function checkAll() {
  const errs = [];
  if (!(dash.schemaVersion >= 39)) errs.push(`schemaVersion ${dash.schemaVersion} < 39`);
  const dsVar = checkVariables(errs);
  const panels = panelsOf(dash);
  const rows = panels.filter((p) => p.type === "row").map((p) => p.title);
  for (const r of ["Throughput", "Freshness", "State", "Snapshots", "Worker"])
    if (!rows.includes(r)) errs.push(`no "${r}" row`);
  checkLayout(errs, panels);
  checkQueries(errs, panels, dsVar);
  checkDocRows(errs, panels);
  return errs;
}

// Each panel type's own options and custom field config, from its panelcfg
// types in @grafana/schema (Partial: Grafana fills in what is left out).
const panelCfg = {
  timeseries: ["TimeSeries", "timeseries", true],
  stat: ["Stat", "stat", false],
  table: ["Table", "table", true],
};
function panelTypes() {
  const imports = [], decls = [];
  for (const [type, [cap, dir, hasFieldConfig]] of Object.entries(panelCfg)) {
    const mod = `@grafana/schema/dist/esm/raw/composable/${dir}/panelcfg/x/${cap}PanelCfg_types.gen`;
    imports.push(`import type { Options as ${cap}Options${hasFieldConfig ? `, FieldConfig as ${cap}FieldConfig` : ""} } from "${mod}";`);
  }
  for (const p of panelsOf(dash)) {
    const cfg = panelCfg[p.type];
    if (!cfg) continue;
    const [cap, , hasFieldConfig] = cfg;
    decls.push(`export const panel${p.id}Options: Partial<Json<${cap}Options>> = ${JSON.stringify(p.options ?? {})};`);
    if (hasFieldConfig && p.fieldConfig?.defaults?.custom)
      decls.push(`export const panel${p.id}Custom: Partial<Json<${cap}FieldConfig>> = ${JSON.stringify(p.fieldConfig.defaults.custom)};`);
  }
  return { imports, decls };
}

mkdirSync(genDir, { recursive: true });
const pt = panelTypes();
writeFileSync(`${genDir}/dashboard.ts`,
  `// Generated by deploy/checks/dashboard.mjs from ${path}; do not edit.\n` +
  `import type { Dashboard } from "@grafana/schema";\n` + pt.imports.join("\n") + "\n" +
  // JSON cannot hold a TypeScript enum member, only its value: Json<T>
  // turns each string enum into the union of its values ("thresholds" |
  // "palette-classic" | ...) and keeps everything else, optionality and
  // excess-property checks included.
  `type Json<T> = T extends string ? \`\${T}\` : T extends number | boolean | null | undefined ? T :\n` +
  `  T extends Array<infer U> ? Array<Json<U>> : T extends object ? { [K in keyof T]: Json<T[K]> } : T;\n` +
  `export const dashboard: Json<Dashboard> = ${JSON.stringify(dash, null, 2)};\n` +
  pt.decls.join("\n") + "\n");

const errs = checkAll();
if (errs.length === 0) console.log("PASS dashboard_rules");
else console.log(`FAIL dashboard_rules: ${errs.join("\n    also: ")}`);
process.exit(errs.length ? 1 : 0);
