#!/usr/bin/env bash
# test_deploy.sh - the operations files check out without a cluster, a
# container engine or Grafana: each tool that would reject them in real use
# is run on them here.
#
#   promtool      alerts.yml parses, every alert's unit test passes, the
#                 compose Prometheus config (with its rule file) is valid;
#   kubectl       `kubectl kustomize` builds the base and the example overlay;
#   docker-compose `config -q` accepts deploy/docker-compose.yml;
#   the worker    `halflife run` accepts the properties and HALFLIFE_*
#                 variables of every k8s and compose worker (config_accepted);
#   the image     the build stage's COPY list builds build/halflife, and every
#                 shared library the binary needs is installed by the final stage;
#   npm packages  (installed into build/node from deploy/package-lock.json)
#                 every built manifest validates against the Kubernetes, KEDA
#                 and Prometheus Operator schemas and type-checks against
#                 their TypeScript models (misspelt fields too), the rules of
#                 DESIGN.md section 8 hold (deploy/checks/k8s.mjs), the
#                 dashboard type-checks against @grafana/schema and names
#                 only exported metrics (deploy/checks/dashboard.mjs), the
#                 compose file wires what it promises (deploy/checks/compose.mjs),
#                 and dockerfile-utils lints the Dockerfile.
# A missing tool, or npm without a registry, gives SKIP lines that say so.
set -u
top=${HL_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
node_dir="$top/build/node"      # shared by make test and make test SAN=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$top" || exit 1

failed=0
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; failed=1; }
skip() { echo "SKIP $1: $2"; }
have() { command -v "$1" >/dev/null 2>&1; }
# run NAME CMD...: PASS if CMD succeeds, else FAIL with its output indented.
run() {
  local name=$1 out; shift
  if out=$("$@" 2>&1); then pass "$name"; else
    fail "$name" "$*"
    printf '%s\n' "$out" | head -n 30 | sed 's/^/    /'
  fi
}

# ---- every alert named in deploy/README.md's Monitoring list: an alert
# added without a line there was found only by reading alerts.yml.
missing=$(grep -o 'alert: [A-Za-z0-9]*' deploy/prometheus/alerts.yml | cut -d' ' -f2 |
  while read -r a; do grep -q "\`$a\`" deploy/README.md || printf '%s ' "$a"; done)
if [ -z "$missing" ] && grep -q 'alert: ' deploy/prometheus/alerts.yml; then
  pass alerts_in_readme
else
  fail alerts_in_readme "deploy/README.md's Monitoring list lacks: ${missing:-every alert}"
fi

# ---- HalflifeWorkerNotReady names every reason /readyz gives for its 503
# (hl_worker_ready's texts, up to a number they print): it named an
# unfinished restore only, and sent whoever it woke to the restore's log
# lines for a worker that had no assignment yet.
if out=$(/usr/bin/python3 - <<'PY'
import re, yaml
src = open("worker/worker.c").read()
body = src[src.index("int hl_worker_ready("):]
body = body[:body.index("\n}\n")]
texts = re.findall(r'"((?:[^"\\]|\\.)*)"((?:\s*"(?:[^"\\]|\\.)*")*)', body)
reasons = [(a + "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', b))).split("%")[0].rstrip(": ")
           for a, b in texts]
rules = [r for g in yaml.safe_load(open("deploy/prometheus/alerts.yml"))["groups"]
         for r in g["rules"] if r.get("alert") == "HalflifeWorkerNotReady"]
desc = " ".join(rules[0]["annotations"]["description"].split()) if rules else ""
missing = [t for t in reasons if t not in desc]
print("; ".join(repr(t) for t in missing) if missing or len(reasons) < 3
      else "", "found only %d reasons" % len(reasons) if len(reasons) < 3 else "")
raise SystemExit(1 if missing or len(reasons) < 3 else 0)
PY
); then pass alert_not_ready_reasons
else fail alert_not_ready_reasons "HalflifeWorkerNotReady's description lacks /readyz's reason(s) $out"; fi

# ---- promtool
if have promtool; then
  run promtool_check_rules promtool check rules deploy/prometheus/alerts.yml
  run promtool_test_rules bash -c 'cd deploy/prometheus && promtool test rules alerts_test.yml'
  run promtool_check_config promtool check config deploy/prometheus/prometheus.yml
else
  for c in promtool_check_rules promtool_test_rules promtool_check_config; do
    skip $c "promtool not installed (Debian package prometheus; make deps)"
  done
fi

# ---- kustomize
overlays="base overlays/example"
for o in $overlays; do
  n=$(basename "$o")
  if ! have kubectl; then skip "kustomize_$n" "kubectl not installed (Debian package kubernetes-client)"; continue; fi
  if kubectl kustomize "deploy/k8s/$o" >"$tmp/$n.yaml" 2>"$tmp/$n.err"; then pass "kustomize_$n"
  else fail "kustomize_$n" "kubectl kustomize deploy/k8s/$o: $(head -c 400 "$tmp/$n.err")"; rm -f "$tmp/$n.yaml"; fi
done

# ---- the model volume: a CronJob that writes a model (the daily retrain)
# must write it where the workers read model.path, i.e. the worker
# container mounts the same claim and subPath at model.path's directory,
# and the job's script names model.path's file in that mount (a rename to
# another name there passed when only the directory was compared).
# Otherwise the job succeeds every night and no worker ever swaps.
model_volume() {   # NAME BUILT_YAML
  /usr/bin/python3 - "$2" <<'PY'
import os, re, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kind = lambda k: [d for d in docs if d.get("kind") == k]
props = {}
for cm in kind("ConfigMap"):
    for line in cm.get("data", {}).get("halflife.properties", "").splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            props[k.strip()] = v.strip()
def claims(pod, c):
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        pvc = vols.get(m["name"], {}).get("persistentVolumeClaim")
        yield m, (pvc["claimName"], m.get("subPath", "")) if pvc else None
errs = []
model_dir = os.path.dirname(props.get("model.path", ""))
for sts in kind("StatefulSet"):
    pod = sts["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    read = {src for m, src in claims(pod, worker) if m["mountPath"] == model_dir and src}
    for cj in kind("CronJob"):
        jpod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        for c in jpod["containers"]:
            script = " ".join(c.get("command", []) + c.get("args", []))
            for m, src in claims(jpod, c):
                if not (src and not m.get("readOnly") and m["mountPath"] in script):
                    continue
                if src not in read:
                    errs.append("CronJob %s writes %s (claim %s, subPath %r) but the workers "
                                "read model.path %s from %s" % (cj["metadata"]["name"],
                                m["mountPath"], src[0], src[1], props.get("model.path"),
                                sorted(read) or "no claim (an emptyDir or image copy)"))
                target = os.path.join(m["mountPath"], os.path.basename(props.get("model.path", "")))
                # what it renames (mv) or writes (train --out) onto
                onto = r"(\bmv\s+(-\S+\s+)*\S+|--out)\s+" + re.escape(target) + r"(\s|;|$)"
                if not re.search(onto, script):
                    errs.append("CronJob %s neither moves nor writes a model onto %s, the "
                                "workers' model.path %s in its mount" % (cj["metadata"]["name"],
                                target, props.get("model.path")))
print("; ".join(errs))
sys.exit(1 if errs else 0)
PY
}
for o in $overlays; do
  n=$(basename "$o")
  [ -f "$tmp/$n.yaml" ] || continue
  if out=$(model_volume "$n" "$tmp/$n.yaml" 2>&1); then pass "k8s_model_volume_$n"
  else fail "k8s_model_volume_$n" "$out"; fi
done

# ---- docker-compose
if have docker-compose; then
  run compose_config docker-compose -f deploy/docker-compose.yml config -q
  docker-compose -f deploy/docker-compose.yml config >"$tmp/compose.yaml" 2>/dev/null || rm -f "$tmp/compose.yaml"
else
  skip compose_config "docker-compose not installed (Debian package docker-compose)"
fi

# ---- the worker accepts each configuration the manifests give it: the
# properties file and HALFLIFE_* variables of every StatefulSet worker and
# compose worker, run through `halflife run` as the container would start
# it. Paths that exist only in the image are overridden with -X (which
# wins), and model.path names no file, so a configuration the worker
# accepts ends at event=model_open_failed (exit 1) before any network,
# while a misspelt key, a HALFLIFE_* variable that names no key or a
# refused value is exit 2 at start: a pod in CrashLoopBackOff that
# nothing here saw.
config_accepted() {   # NAME KIND(k8s|compose) BUILT_YAML
  HL_BIN="$hl_bin" HL_TOP="$top" /usr/bin/python3 - "$@" "$tmp" <<'PY'
import os, subprocess, sys, yaml
name, kind, path, tmp = sys.argv[1:5]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
work = os.path.join(tmp, "cfg-" + name)
os.makedirs(os.path.join(work, "snapshots"), exist_ok=True)
def workers_k8s():
    cms = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
    for sts in (d for d in docs if d.get("kind") == "StatefulSet"):
        pod = sts["spec"]["template"]["spec"]
        c = next((x for x in pod["containers"] if x["name"] == "halflife"), pod["containers"][0])
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        args = list(c.get("command", [])[1:] + c.get("args", []))
        for m in c.get("volumeMounts", []):
            cm = cms.get(vols.get(m["name"], {}).get("configMap", {}).get("name"))
            for key, text in (cm or {}).get("data", {}).items():
                f = os.path.join(work, key)
                open(f, "w").write(text)
                args = [f if a == m["mountPath"] + "/" + key else a for a in args]
        env = {}
        for e in c.get("env", []):
            ref = e.get("valueFrom", {})
            env[e["name"]] = (e["value"] if "value" in e else sts["metadata"]["name"] + "-0"
                              if ref.get("fieldRef") else "from-a-secret")
        yield "StatefulSet/" + sts["metadata"]["name"], args, env
def workers_compose():
    for svc, s in docs[0].get("services", {}).items():
        cmd = s.get("command") or []
        if cmd[:1] == ["run"]:
            yield "service " + svc, list(cmd), {k: str(v) for k, v in (s.get("environment") or {}).items()}
errs, n = [], 0
for who, args, env in (workers_k8s() if kind == "k8s" else workers_compose()):
    n += 1
    over = ["-X", "model.path=" + os.path.join(work, "no-model.hlm"),
            "-X", "schemas.dir=" + os.path.join(os.environ["HL_TOP"], "schemas"),
            "-X", "snapshot.dir=" + os.path.join(work, "snapshots")]
    env = dict(env, PATH="/usr/bin:/bin", ASAN_OPTIONS="detect_leaks=0")
    p = subprocess.run([os.environ["HL_BIN"]] + args + over, env=env, capture_output=True,
                       text=True, timeout=30)
    out = p.stdout + p.stderr
    if p.returncode != 1 or "event=model_open_failed" not in out:
        errs.append("%s: halflife %s exits %d: %s" % (who, " ".join(args), p.returncode,
                    " ".join(out.split())[:300]))
if n == 0:
    errs.append("no worker found")
print("; ".join(errs))
sys.exit(1 if errs else 0)
PY
}
# The plain build when there is one; a sanitizer build (HL_HALFLIFE under
# SAN=1) runs with leak checks off, since this exit path is not under test.
hl_bin=$top/build/halflife
[ -x "$hl_bin" ] || hl_bin=${HL_HALFLIFE:-$hl_bin}
for n in base example compose; do
  f=$tmp/$n.yaml; kind=k8s
  [ $n = compose ] && kind=compose
  if [ ! -x "$hl_bin" ]; then skip "config_accepted_$n" "$hl_bin not built"; continue; fi
  if [ ! -f "$f" ]; then skip "config_accepted_$n" "its configuration was not built above"; continue; fi
  if out=$(config_accepted "$n" "$kind" "$f" 2>&1); then pass "config_accepted_$n"
  else fail "config_accepted_$n" "$out"; fi
done

# ---- Dockerfile rules that need no linter: bookworm stages, a runtime stage
# with only runtime packages, a non-root user and a health check.
dockerfile_rules() {
  local f=deploy/Dockerfile errs="" final
  grep -E '^FROM ' "$f" | grep -vqE '^FROM debian:bookworm(-slim)?( |$)' && errs="$errs; a stage is not Debian bookworm"
  [ "$(grep -cE '^FROM ' "$f")" -ge 2 ] || errs="$errs; not multi-stage"
  final=$(awk '/^FROM /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' "$f")
  local pkgs
  pkgs=$(printf '%s' "$final" | sed -n '/apt-get install/,/&&/p' | tr ' \\' '\n\n' |
         grep -E '^[a-z0-9][a-z0-9.+-]+$' | grep -vE '^(apt-get|install|rm|y|q)$' | sort -u)
  for p in $pkgs; do
    case $p in
      librdkafka1|libavro23|libopenblas0-pthread|libmicrohttpd12|libcurl4|libjansson4|ca-certificates) ;;
      *) errs="$errs; final stage installs $p";;
    esac
  done
  for p in librdkafka1 libavro23 libopenblas0-pthread libmicrohttpd12 libcurl4 libjansson4; do
    printf '%s\n' $pkgs | grep -qx "$p" || errs="$errs; final stage lacks $p"
  done
  printf '%s' "$final" | grep -qE '^USER +(10001|[a-z][a-z0-9_-]*)' &&
    ! printf '%s' "$final" | grep -qE '^USER +(root|0)\b' || errs="$errs; final stage must switch to a non-root USER"
  printf '%s' "$final" | sed -n '/^HEALTHCHECK/,/[^\\]$/p' | grep -q '/healthz' ||
    errs="$errs; no HEALTHCHECK on /healthz"
  if [ -n "$errs" ]; then fail dockerfile_rules "${errs#; }"; else pass dockerfile_rules; fi
}
dockerfile_rules

# ---- the image's stages against the real build: the build stage's COPY
# list is enough to build the binary, and every shared library the binary
# needs comes from a package the final stage installs (or the base image).
dockerfile_build_context() {
  local ctx="$tmp/ctx" srcs cmd want=hl-test-1.2.3 got
  mkdir -p "$ctx"
  srcs=$(awk '/^FROM /{n++} n==1 && /^COPY / && !/--from/ {for (i = 2; i < NF; i++) print $i}' deploy/Dockerfile)
  for s in $srcs; do cp -r "${s%/}" "$ctx/" || { fail dockerfile_build_context "COPY $s: not in the repository"; return; }; done
  # The build stage's own make command, run as docker would with
  # --build-arg HL_VERSION=$want (an ARG reaches RUN as a variable).
  cmd=$(awk '/^FROM /{n++} n==1 && /^RUN make / {sub(/^RUN /, ""); print; exit}' deploy/Dockerfile)
  [ -n "$cmd" ] || { fail dockerfile_build_context "the build stage has no 'RUN make' line"; return; }
  # -O0: this checks that the sources are all there, not how fast they run.
  # A clean environment: under `make test SAN=1` the outer make's SAN=1 would
  # reach this make through MAKEFLAGS and build build/san/ instead.
  if (cd "$ctx" && env -u MAKEFLAGS -u MAKELEVEL -u MFLAGS HL_VERSION=$want \
        sh -c "$cmd SAN=0 OPT=-O0" >"$tmp/ctx.log" 2>&1); then pass dockerfile_build_context
  else fail dockerfile_build_context "$cmd with only: $(echo $srcs)"; tail -n 10 "$tmp/ctx.log" | sed 's/^/    /'; return; fi
  # The context has no .git (nor the stage git), so the version
  # (halflife --version, halflife_build_info) comes only from the build
  # argument: without it every image said "unknown", and the dashboard
  # could not tell a rollout's old pods from its new ones.
  got=$("$ctx/build/halflife" --version 2>&1 | head -n 1)
  if awk '/^FROM /{n++} n==1' deploy/Dockerfile | grep -qE '^ARG +HL_VERSION\b' &&
     [ "$got" = "halflife $want" ]; then pass dockerfile_version
  else fail dockerfile_version "docker build --build-arg HL_VERSION=$want gives '$got' (the build stage needs ARG HL_VERSION, passed to make)"; fi
}
dockerfile_runtime_libs() {
  # The image ships the plain build, never the sanitizer one (HL_HALFLIFE
  # under SAN=1), so check the binary the Dockerfile builds.
  local bin=$top/build/halflife errs="" lib path pkg
  if [ ! -x "$bin" ]; then skip dockerfile_runtime_libs "$bin not built (run make first)"; return; fi
  for lib in $(readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
    case $lib in libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|libgcc_s.so.*) continue;; esac
    path=$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ {print $NF; exit}')
    pkg=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null | head -n 1 | cut -d: -f1)
    [ -n "$pkg" ] || pkg=$(dpkg -S "*/$lib" 2>/dev/null | head -n 1 | cut -d: -f1)
    awk '/^FROM /{n++} n>=2' deploy/Dockerfile | grep -qw -- "$pkg" ||
      errs="$errs; $lib (package ${pkg:-unknown}) is not installed by the final stage"
  done
  if [ -n "$errs" ]; then fail dockerfile_runtime_libs "${errs#; }"; else pass dockerfile_runtime_libs; fi
}
if have make && have cc; then dockerfile_build_context; else skip dockerfile_build_context "no make/cc"; fi
if have readelf && have dpkg; then dockerfile_runtime_libs; else skip dockerfile_runtime_libs "no readelf/dpkg"; fi

# ---- npm-based checks
npm_ready() {
  have node && have npm || { echo "node/npm not installed (Debian packages nodejs npm)"; return 1; }
  mkdir -p "$node_dir"
  if cmp -s deploy/package-lock.json "$node_dir/package-lock.json" &&
     [ -f "$node_dir/node_modules/.package-lock.json" ]; then return 0; fi
  cp deploy/package.json deploy/package-lock.json "$node_dir/"
  if ! (cd "$node_dir" && timeout 300 npm ci --no-audit --no-fund --loglevel=error \
          --fetch-retries=1 --fetch-timeout=30000 >"$tmp/npm.log" 2>&1); then
    rm -f "$node_dir/package-lock.json"     # retry next time
    echo "npm ci failed (no registry?): $(grep -m1 -iE 'err' "$tmp/npm.log" | head -c 200)"
    return 1
  fi
}
npm_checks="dockerfile_lint dashboard_types compose_rules"
for o in $overlays; do n=$(basename "$o"); npm_checks="$npm_checks k8s_schema_$n k8s_rules_$n k8s_types_$n"; done

# dashboard.mjs needs node only; it also writes the .ts that tsc checks below.
gen="$node_dir/gen"
if have node; then
  mkdir -p "$node_dir" && rm -rf "$node_dir/checks" "$gen" && cp -r deploy/checks "$node_dir/checks"
  node "$node_dir/checks/dashboard.mjs" dashboards/halflife.json "$gen" || failed=1
else
  skip dashboard_rules "node not installed (Debian package nodejs)"
fi
if ! why=$(npm_ready); then
  for c in $npm_checks; do skip "$c" "$why"; done
else
  run dockerfile_lint "$node_dir/node_modules/.bin/dockerfile-utils" lint deploy/Dockerfile
  if [ -f "$tmp/compose.yaml" ]; then
    node "$node_dir/checks/compose.mjs" "$tmp/compose.yaml" deploy/prometheus/prometheus.yml \
      dashboards/provisioning || failed=1
  else
    skip compose_rules "docker-compose config did not run"
  fi
  for o in $overlays; do
    n=$(basename "$o")
    if [ -f "$tmp/$n.yaml" ]; then
      node "$node_dir/checks/k8s.mjs" "$n" "$tmp/$n.yaml" deploy/prometheus/alerts.yml "$gen" || failed=1
    else
      skip "k8s_schema_$n" "kustomize did not build it"; skip "k8s_rules_$n" "kustomize did not build it"
    fi
  done
  cat >"$gen/tsconfig.json" <<'EOF'
{
  "compilerOptions": {
    "strict": true, "noEmit": true, "skipLibCheck": true, "types": [],
    "module": "nodenext", "moduleResolution": "nodenext", "target": "es2022"
  },
  "include": ["*.ts"]
}
EOF
  (cd "$node_dir" && node_modules/.bin/tsc -p gen/tsconfig.json >"$tmp/tsc.out" 2>&1)
  for ts in "$gen"/*.ts; do
    [ -f "$ts" ] || continue
    b=$(basename "$ts" .ts)
    case $b in dashboard) c=dashboard_types;; *) c=k8s_types_$b;; esac
    if grep -q "^gen/$b.ts(" "$tmp/tsc.out"; then
      fail "$c" "tsc found $(grep -c "^gen/$b.ts(" "$tmp/tsc.out") type errors"
      grep "^gen/$b.ts(" "$tmp/tsc.out" | head -n 10 | cut -c1-300 | sed 's/^/    /'
    else
      pass "$c"
    fi
  done
  if grep -vq "^gen/\|^ " "$tmp/tsc.out"; then
    fail typescript "tsc: $(grep -v '^gen/' "$tmp/tsc.out" | head -n 5)"
  fi
fi
exit $failed
