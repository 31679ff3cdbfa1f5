#!/usr/bin/env bash
# test_dashboard_live.sh - the dashboard and the alerts against a real
# worker: `halflife demo` runs (embedded broker, producer, worker), Debian's
# Prometheus scrapes its /metrics every second on 127.0.0.1, and then
#   - `promtool check metrics` accepts the live /metrics text;
#   - every metric the alert rules name is one the worker exports (an alert
#     on a metric nobody exports never fires, silently), and every rule
#     evaluates on the real series without an error;
#   - every PromQL expression in dashboards/halflife.json, with $job,
#     $instance and $__rate_interval substituted as Grafana would, returns
#     data through the query API: at least one series with a number that is
#     not NaN. A panel whose metric the worker does not export fails here,
#     named with its expression;
#   - every label a dashboard query or an alert groups by, matches on or
#     prints (legends, {{ $labels.x }}) is one its metrics carry live.
# Expressions get until the deadline (about 40 s) to return data, because
# some only do once the demo has published lists and taken snapshots.
set -u
top=${HL_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
hl=${HL_HALFLIFE:-$top/build/halflife}
py=/usr/bin/python3
name=dashboard_live
# The demo trains its model (about 10 s quiet) before it serves HTTP; on a
# loaded machine that took 55 s, so wait up to 120 s (the test ends the
# demo as soon as it is done, so the bound costs nothing when quiet).
start_s=120
# Under sanitizers the demo spends a minute training its model before it
# serves HTTP. This test is about metric names and queries, not memory
# safety, so it uses the plain build when there is one (make test built it).
if [ "${HL_SAN:-0}" = 1 ]; then
  if [ -x "$top/build/halflife" ]; then hl=$top/build/halflife; else start_s=150; fi
fi

if [ ! -x "$hl" ] || ! "$hl" demo --help >/dev/null 2>&1; then
  echo "SKIP $name: halflife demo not built ($hl demo --help fails)"; exit 0
fi
for tool in prometheus promtool curl; do
  command -v $tool >/dev/null 2>&1 || { echo "SKIP $name: $tool not installed (make deps)"; exit 0; }
done

tmp=$(mktemp -d)
demo_pid="" prom_pid=""
cleanup() {
  [ -n "$demo_pid" ] && kill "$demo_pid" 2>/dev/null
  [ -n "$prom_pid" ] && kill "$prom_pid" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
  $py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_http() {   # URL TIMEOUT_S
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}

metrics_port=$(free_port)
prom_port=$(free_port)
# Snapshots and changelog flushes every second so the Snapshots and State
# store panels have data within the test. state.store=kafka, as deploy/
# runs it: the worker then exports the changelog's metrics as well as the
# snapshot ones (the snapshots are its local cache).
(cd "$tmp" && exec "$hl" demo --duration $((start_s + 60)) --rate 3000 -X schemas.dir="$top/schemas" \
   -X metrics.port="$metrics_port" -X snapshot.dir="$tmp/snapshots" \
   -X snapshot.interval.ms=1000 -X state.store=kafka -X state.flush.ms=1000) \
   >"$tmp/demo.out" 2>"$tmp/demo.err" &
demo_pid=$!
if ! wait_http "http://127.0.0.1:$metrics_port/healthz" $start_s; then
  echo "FAIL $name: halflife demo did not serve /healthz on port $metrics_port within $start_s s"
  tail -n 20 "$tmp/demo.err" | sed 's/^/    /'
  exit 1
fi

cp "$top/deploy/prometheus/alerts.yml" "$tmp/alerts.yml"
cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - alerts.yml
scrape_configs:
  - job_name: halflife
    static_configs:
      - targets: ["127.0.0.1:$metrics_port"]
EOF
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$tmp/prom.log" 2>&1 &
prom_pid=$!
if ! wait_http "http://127.0.0.1:$prom_port/-/ready" 30; then
  echo "FAIL $name: prometheus did not become ready"; tail -n 20 "$tmp/prom.log" | sed 's/^/    /'
  exit 1
fi

# ---- the live exposition text
curl -fsS "http://127.0.0.1:$metrics_port/metrics" >"$tmp/metrics.txt"
if out=$(promtool check metrics <"$tmp/metrics.txt" 2>&1); then
  echo "PASS metrics_live_promtool"
else
  echo "FAIL metrics_live_promtool: $(echo "$out" | head -n 5 | tr '\n' ' ')"
fi

# ---- the dashboard's queries (and the alerts' metric names), in Python for the JSON
HL_TOP="$top" PROM="http://127.0.0.1:$prom_port" METRICS="http://127.0.0.1:$metrics_port/metrics" \
$py - <<'EOF'
import json, math, os, re, sys, time, urllib.parse, urllib.request
import yaml

top, prom, metrics_url = os.environ["HL_TOP"], os.environ["PROM"], os.environ["METRICS"]
deadline = time.time() + 45

def fetch(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()

# The dashboard's expressions, substituted as Grafana would with job=halflife,
# instance=All and a 1 s scrape interval ($__rate_interval = 4 scrapes).
dash = json.load(open(os.path.join(top, "dashboards/halflife.json")))
subst = {"$__rate_interval": "4s", "$__interval": "1s", "$__range": "1m",
         "$job": "halflife", "$instance": ".+", "${job}": "halflife", "${instance}": ".+"}
queries = []
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
for p in panels(dash.get("panels", [])):
    for t in p.get("targets", []):
        e = t.get("expr")
        if not e:
            continue
        for k in sorted(subst, key=len, reverse=True):
            e = e.replace(k, subst[k])
        queries.append((f'panel {p.get("id")} {t.get("refId")} "{p.get("title")}"', t["expr"], e))

def evaluate(expr):
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        body = json.loads(fetch(url))
    except Exception as ex:          # a 400 is a bad expression: say so
        return "error", str(ex)
    if body.get("status") != "success":
        return "error", body.get("error", "query failed")
    res = body["data"]["result"]
    if body["data"]["resultType"] == "scalar":
        res = [{"value": res}]
    if not res:
        return "empty", "no series"
    if all(math.isnan(float(r["value"][1])) for r in res):
        return "nan", f"{len(res)} series, every value NaN"
    return "ok", f"{len(res)} series"

pending = {q[0]: q for q in queries}
last = {}
time.sleep(5)                        # a few scrapes first
while pending and time.time() < deadline:
    for key, (_, _, e) in list(pending.items()):
        state, why = evaluate(e)
        last[key] = (state, why)
        if state == "ok":
            print(f"PASS dashboard_live {key}: {why}")
            del pending[key]
        elif state == "error":
            break
    if pending:
        time.sleep(2)
for key, (_, raw, e) in pending.items():
    state, why = last.get(key, ("empty", "never evaluated"))
    print(f"FAIL dashboard_live {key}: {why} for {e}")
print(f"dashboard_live: {len(queries) - len(pending)} of {len(queries)} expressions returned data")

# The job and instance variables' label_values() queries must offer a value,
# or Grafana shows an empty dashboard with nothing to pick.
bad_vars = 0
for v in dash.get("templating", {}).get("list", []):
    q = v.get("query")
    q = q.get("query", "") if isinstance(q, dict) else (q or "")
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", q)
    if v.get("type") != "query" or not m:
        continue
    sel, label = m.group(1), m.group(2)
    for k in sorted(subst, key=len, reverse=True):
        sel = sel.replace(k, subst[k])
    url = f"{prom}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": sel})
    values = json.loads(fetch(url)).get("data", [])
    if values:
        print(f"PASS dashboard_live variable {v['name']}: {', '.join(values)}")
    else:
        bad_vars += 1
        print(f"FAIL dashboard_live variable {v['name']}: label_values({sel}, {label}) offers nothing")

# Every alert rule evaluated against the real series without an error (a
# many-to-many match, say, only shows at evaluation time).
groups = json.loads(fetch(prom + "/api/v1/rules"))["data"]["groups"]
rules_seen = [r for g in groups for r in g["rules"]]
broken = [f'{r["name"]}: {r.get("lastError")}' for r in rules_seen if r.get("health") != "ok"]
firing = [f'{r["name"]} ({r["state"]})' for r in rules_seen if r.get("state") not in (None, "inactive")]
if not rules_seen:
    print("FAIL alerts_live_evaluate: Prometheus loaded no alert rules")
elif broken:
    print("FAIL alerts_live_evaluate: " + "; ".join(broken))
else:
    print(f"PASS alerts_live_evaluate: {len(rules_seen)} rules evaluate cleanly"
          + (f"; pending/firing on the demo: {', '.join(firing)}" if firing else ""))
bad_rules = not rules_seen or bool(broken)

# After the run, when every series has been registered: every metric an
# alert rule names must be one the worker exports.
exported = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", fetch(metrics_url), re.M))
rules = open(os.path.join(top, "deploy/prometheus/alerts.yml")).read()
wanted = {re.sub(r"_bucket$", "", m) for m in re.findall(r"\b(halflife_[a-z0-9_]+)", rules)}
def exported_name(m):
    return m in exported or any(m + s in exported for s in ("_bucket", "_sum", "_count"))
# Exported only with schema.registry.url (the demo runs registry-free, as
# the embedded default must); test_schema_registry.py reads them from a
# worker that has one.
registry_only = {"halflife_schema_registry_up"}
missing = sorted(m for m in wanted - registry_only if not exported_name(m))
if missing:
    print("FAIL alerts_metrics_exported: alerts.yml names metrics the worker does not export: "
          + ", ".join(missing))
else:
    print("PASS alerts_metrics_exported")

# Label names. A grouping (by, on, ignoring, without), a matcher, a
# legend's {{label}} or an alert's {{ $labels.label }} naming a label none
# of its metrics carries still returns data above, as one series with that
# label empty: a legend or an alert text with a blank where the partition
# or reason should be. Each must be a label of one of the expression's
# metrics as the worker exports them, or job or instance (Prometheus's).
text = fetch(metrics_url)
labels_of = {"up": set()}
for line in text.splitlines():
    m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s", line)
    if m:
        names = re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"', m.group(2) or "")
        labels_of.setdefault(m.group(1), set()).update(names)

def labels_used(expr):
    used = set()
    for g in re.findall(r"\b(?:by|on|ignoring|without|group_left|group_right)\s*\(([^)]*)\)", expr):
        used.update(x.strip() for x in g.split(",") if x.strip())
    for sel in re.findall(r"\{([^}]*)\}", re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)):
        used.update(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", sel))
    return used

def check_labels(where, expr, extra):
    metrics = {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if w in labels_of}
    if not metrics or any(m not in labels_of and m + "_bucket" not in labels_of
                          for m in re.findall(r"\bhalflife_[a-z0-9_]+", expr)):
        return None                     # a metric this run does not export
    have = set().union(*(labels_of[m] for m in metrics)) | {"job", "instance"}
    bad = sorted((labels_used(expr) | extra) - have)
    return f"{where}: label {', '.join(bad)} not on {', '.join(sorted(metrics))}" if bad else None

label_errs = []
for key, raw, _ in queries:
    panel_targets = [t for p in panels(dash.get("panels", [])) for t in p.get("targets", [])
                     if t.get("expr") == raw]
    legends = set(re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}",
                             " ".join(t.get("legendFormat", "") for t in panel_targets)))
    e = check_labels(key, raw, legends)
    if e:
        label_errs.append(e)
for g in yaml.safe_load(rules)["groups"]:
    for r in g["rules"]:
        ann = " ".join(str(v) for v in r.get("annotations", {}).values())
        e = check_labels(f'alert {r["alert"]}', r["expr"],
                         set(re.findall(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)", ann)))
        if e:
            label_errs.append(e)
for e in label_errs:
    print(f"FAIL labels_live {e}")
if not label_errs:
    print("PASS labels_live: every grouping, matcher, legend and alert text names a label "
          "its metrics carry")

sys.exit(1 if pending or missing or bad_vars or bad_rules or label_errs else 0)
EOF
rc=$?
if [ $rc -ne 0 ]; then
  echo "    demo stderr (last lines):"; tail -n 8 "$tmp/demo.err" | sed 's/^/    /'
fi
exit $rc
