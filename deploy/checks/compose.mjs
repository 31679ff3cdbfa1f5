// compose.mjs - checks what deploy/docker-compose.yml promises, on the
// normalised file `docker-compose config` prints (paths made absolute,
// anchors expanded), without a container engine.
//
//   node compose.mjs CONFIG.yaml PROMETHEUS.yml GRAFANA_PROVISIONING_DIR
//
// Prints compose_rules PASS or FAIL: Kafka in KRaft mode with no ZooKeeper;
// a topics job; at least two workers in one group with distinct
// group.instance.id values, each with a writable snapshot.dir (state.store=
// file: one volume they share; kafka: a volume of its own each, and the
// topics job creates the compacted changelog <group.id>-state), each
// given a stop grace period longer than shutdown.timeout.ms; a producer
// running `halflife produce`; Prometheus loading the alert rules and
// scraping every worker; Grafana provisioned with the datasource and the
// dashboard at the path its provider reads; every bind-mounted file present.
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { parse } from "yaml";

const [configPath, promPath, provDir] = process.argv.slice(2);
if (!provDir) {
  console.error("usage: node compose.mjs CONFIG.yaml PROMETHEUS.yml GRAFANA_PROVISIONING_DIR");
  process.exit(2);
}
const cfg = parse(readFileSync(configPath, "utf8"));
const services = cfg.services ?? {};
const errs = [];

// "src:dst[:mode]" -> {src, dst, ro}
const mounts = (svc) => (svc.volumes ?? []).map((v) => {
  if (typeof v !== "string") return { src: v.source, dst: v.target, ro: !!v.read_only };
  const [src, dst, mode] = v.split(":");
  return { src, dst, ro: mode === "ro" };
});
const seconds = (d) => {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(String(d ?? ""));
  if (!m) return NaN;
  return Number(m[1]) * ({ ms: 0.001, s: 1, m: 60 }[m[2] ?? "s"]);
};
const cmd = (svc) => [].concat(svc.command ?? []);

function checkKafka() {
  const kafka = Object.entries(services).find(([, s]) => /kafka/.test(s.image ?? "") &&
    s.environment?.KAFKA_PROCESS_ROLES);
  if (!kafka) return errs.push("no Kafka service with KAFKA_PROCESS_ROLES (KRaft)");
  if (!/controller/.test(kafka[1].environment.KAFKA_PROCESS_ROLES))
    errs.push(`${kafka[0]}: KAFKA_PROCESS_ROLES lacks controller: not KRaft`);
  if (Object.values(services).some((s) => /zookeeper/i.test(s.image ?? "")))
    errs.push("a ZooKeeper service: KRaft needs none");
  const topics = Object.entries(services).find(([, s]) => /kafka-topics/.test(JSON.stringify(s.command ?? "")));
  if (!topics) errs.push("no service creating the topics (kafka-topics.sh)");
}

function checkWorkers() {
  const workers = Object.entries(services).filter(([, s]) => cmd(s)[0] === "run");
  if (workers.length < 2) {
    errs.push(`want two or more workers (command run), found ${workers.length}`);
    return workers;
  }
  const ids = new Set(), groups = new Set(), volumes = new Set();
  for (const [name, s] of workers) {
    const env = s.environment ?? {};
    ids.add(env.HALFLIFE_KAFKA_GROUP_INSTANCE_ID);
    groups.add(env.HALFLIFE_GROUP_ID ?? "halflife");
    const dir = env.HALFLIFE_SNAPSHOT_DIR;
    const m = mounts(s).find((x) => x.dst === dir);
    if (!dir || !m || m.ro) errs.push(`${name}: no writable volume at snapshot.dir ${dir}`);
    else volumes.add(m.src);
    const shutdownS = Number(env.HALFLIFE_SHUTDOWN_TIMEOUT_MS ?? 30000) / 1000;
    if (!(seconds(s.stop_grace_period ?? "10s") > shutdownS))
      errs.push(`${name}: stop_grace_period ${s.stop_grace_period ?? "10s"} must exceed shutdown.timeout.ms (${shutdownS} s)`);
  }
  if (ids.size !== workers.length || ids.has(undefined))
    errs.push("workers need distinct HALFLIFE_KAFKA_GROUP_INSTANCE_ID values");
  if (groups.size !== 1) errs.push(`workers in different groups: ${[...groups]}`);
  const stores = new Set(workers.map(([, s]) => s.environment?.HALFLIFE_STATE_STORE ?? "file"));
  if (stores.size !== 1) errs.push(`workers with different state.store values: ${[...stores]}`);
  if (![...volumes].every((v) => cfg.volumes && v in cfg.volumes))
    errs.push("snapshot volumes must be named volumes");
  if (stores.has("kafka")) checkChangelog(workers, volumes, [...groups][0]);
  else if (volumes.size !== 1) errs.push(`workers must share one snapshot volume, found ${[...volumes]}`);
  return workers;
}

// state.store=kafka: private volumes (the changelog is the shared copy),
// and the changelog topic created compacted by the topics job.
function checkChangelog(workers, volumes, group) {
  if (volumes.size !== workers.length)
    errs.push(`with state.store=kafka each worker needs its own snapshot volume, found ${[...volumes]}`);
  const topic = workers[0][1].environment?.HALFLIFE_STATE_TOPIC ?? `${group}-state`;
  const job = Object.values(services).map((s) => cmd(s).join(" ")).join("\n");
  const line = job.split("\n").find((l) => l.includes(`--topic ${topic} `));
  if (!line || !line.includes("cleanup.policy=compact"))
    errs.push(`no job creates the changelog topic ${topic} with cleanup.policy=compact`);
}

function checkProducer() {
  if (!Object.values(services).some((s) => cmd(s)[0] === "produce"))
    errs.push("no producer service (command produce)");
}

function checkPrometheus(workers) {
  const prom = Object.entries(services).find(([, s]) => /prometheus/.test(s.image ?? ""));
  if (!prom) return errs.push("no Prometheus service");
  const dsts = mounts(prom[1]).map((m) => m.dst);
  const conf = parse(readFileSync(promPath, "utf8"));
  for (const rf of conf.rule_files ?? [])
    if (!dsts.some((d) => d.endsWith("/" + rf))) errs.push(`prometheus: rule file ${rf} is not mounted`);
  if (!(conf.rule_files ?? []).length) errs.push("prometheus.yml loads no rule files");
  const targets = (conf.scrape_configs ?? []).flatMap((sc) =>
    (sc.static_configs ?? []).flatMap((st) => st.targets ?? []));
  for (const [name, s] of workers) {
    const port = s.environment?.HALFLIFE_METRICS_PORT ?? "9464";
    if (!targets.includes(`${name}:${port}`)) errs.push(`prometheus.yml does not scrape ${name}:${port}`);
  }
}

function checkGrafana() {
  const graf = Object.entries(services).find(([, s]) => /grafana/.test(s.image ?? ""));
  if (!graf) return errs.push("no Grafana service");
  const ms = mounts(graf[1]);
  if (!ms.some((m) => m.dst === "/etc/grafana/provisioning"))
    errs.push("grafana: /etc/grafana/provisioning is not mounted");
  const provFiles = readdirSync(`${provDir}/dashboards`).filter((f) => /\.ya?ml$/.test(f));
  for (const f of provFiles)
    for (const p of parse(readFileSync(`${provDir}/dashboards/${f}`, "utf8")).providers ?? [])
      if (!ms.some((m) => m.dst.startsWith(p.options.path + "/") && m.dst.endsWith(".json")))
        errs.push(`grafana: no dashboard mounted under the provider path ${p.options.path}`);
  for (const f of readdirSync(`${provDir}/datasources`).filter((x) => /\.ya?ml$/.test(x)))
    for (const ds of parse(readFileSync(`${provDir}/datasources/${f}`, "utf8")).datasources ?? []) {
      const host = new URL(ds.url).hostname;
      if (!(host in services)) errs.push(`grafana datasource ${ds.name}: ${ds.url} names no service`);
    }
}

function checkBindMounts() {
  for (const [name, s] of Object.entries(services))
    for (const m of mounts(s))
      if (m.src?.startsWith("/") && !/datasets/.test(m.src) && !existsSync(m.src))
        errs.push(`${name}: bind mount ${m.src} does not exist`);
}

checkKafka();
const workers = checkWorkers();
checkProducer();
checkPrometheus(workers);
checkGrafana();
checkBindMounts();
if (errs.length === 0) console.log("PASS compose_rules");
else console.log(`FAIL compose_rules: ${errs.join("\n    also: ")}`);
process.exit(errs.length ? 1 : 0);
