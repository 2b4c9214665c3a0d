#!/usr/bin/env bash
# Validates the deployment files: yamllint on every YAML file; the compose
# file with `docker compose config` when Docker is installed, and always by
# parsing it and checking what it references; the
# Kubernetes kustomization's resources and every manifest's kind.
set -euo pipefail
cd "$(dirname "$0")/.."
yamllint -s -c deploy/.yamllint deploy
echo "== yamllint: $(find deploy -name '*.yaml' -o -name '*.yml' | wc -l) files clean"
# The alerting rules: valid, their unit tests pass, and the Prometheus
# configurations that load them pass promtool's own check.
(cd deploy/compose && promtool check rules engram-alerts.yml >/dev/null &&
  promtool test rules engram-alerts-test.yml >/dev/null &&
  promtool check config prometheus.yml >/dev/null &&
  promtool check config prometheus-sharded.yml >/dev/null)
echo "== alerting rules: promtool check and unit tests pass"
compose=deploy/compose/compose.yaml
# (Debian's podman-compose 1.0.3 has no `config`; the parser below stands in.)
if docker compose version >/dev/null 2>&1; then
  docker compose -f "$compose" config -q && echo "== docker compose config: ok"
fi
python3 - <<'PY'
import json, os, yaml
base = "deploy/compose"
c = yaml.safe_load(open(f"{base}/compose.yaml"))
assert set(c["services"]) == {"engramd", "prometheus", "grafana", "backup"}, c["services"].keys()
assert "backup create" in c["services"]["backup"]["command"][0]
for name, s in c["services"].items():
    assert "image" in s or "build" in s, name
    for v in s.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("."):
            assert os.path.exists(os.path.join(base, src)), f"{name}: {src} missing"
        else:
            assert src in c.get("volumes", {}), f"{name}: volume {src} undeclared"
    for dep in s.get("depends_on", []):
        assert dep in c["services"], f"{name} depends on unknown {dep}"
assert os.path.exists(os.path.join(base, c["services"]["engramd"]["build"]["context"], "Dockerfile"))
prom = yaml.safe_load(open(f"{base}/prometheus.yml"))
assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["engramd:9464"]
dash = json.load(open(f"{base}/grafana/dashboards/engram.json"))
assert len(dash["panels"]) >= 6 and all(p["targets"] for p in dash["panels"])
print(f"== compose: 4 services (a backup job), {len(dash['panels'])} dashboard panels, references resolve")
k = "deploy/kubernetes"
kust = yaml.safe_load(open(f"{k}/kustomization.yaml"))
kinds = []
for r in kust["resources"]:
    for doc in yaml.safe_load_all(open(os.path.join(k, r))):
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], r
        kinds.append(doc["kind"])
need = {"StatefulSet", "Service", "ConfigMap", "Secret", "ServiceMonitor", "Namespace",
        "CronJob", "PersistentVolumeClaim"}
assert need <= set(kinds), need - set(kinds)
ss = next(d for r in kust["resources"] for d in yaml.safe_load_all(open(os.path.join(k, r)))
          if d["kind"] == "StatefulSet")
c0 = ss["spec"]["template"]["spec"]["containers"][0]
assert c0["readinessProbe"]["grpc"]["service"] == "engram.v1.Engram"
assert c0["livenessProbe"]["grpc"]["service"] == ""
assert ss["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
cron = next(d for r in kust["resources"] for d in yaml.safe_load_all(open(os.path.join(k, r)))
            if d["kind"] == "CronJob")
job = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
assert "engram --addr=engram:50051 backup create" in job["containers"][0]["args"][0]
assert job["volumes"][0]["persistentVolumeClaim"]["claimName"] == "engram-backups"
secret = next(d for r in kust["resources"] for d in yaml.safe_load_all(open(os.path.join(k, r)))
              if d["kind"] == "Secret")
assert secret["stringData"]["read-token"].split()[0] in secret["stringData"]["tokens"]
print(f"== kubernetes: {len(kinds)} objects ({', '.join(sorted(set(kinds)))}), gRPC probes, a volume claim")

# The sharded deployment: every group in the routers' topology is a
# StatefulSet of that many replicas, with its group flag, a headless
# Service of its name, a PodDisruptionBudget, and anti-affinity.
k = "deploy/kubernetes/sharded"
kust = yaml.safe_load(open(f"{k}/kustomization.yaml"))
docs = [d for r in kust["resources"] for d in yaml.safe_load_all(open(os.path.join(k, r)))]
for d in docs:
    assert d["apiVersion"] and d["kind"] and d["metadata"]["name"], d
by = lambda kind: {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
config = by("ConfigMap")["engram-router-config"]["data"]
groups = [g.split(",") for g in config["FLAGS_shards"].strip().split(";")]
sets, services, budgets = by("StatefulSet"), by("Service"), by("PodDisruptionBudget")
for g, replicas in enumerate(groups):
    name = f"engram-shard-{g}"
    ss = sets[name]
    assert ss["spec"]["replicas"] == len(replicas), name
    assert ss["spec"]["serviceName"] == name and services[name]["spec"]["clusterIP"] == "None"
    env = {e["name"]: e["value"] for e in ss["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FLAGS_role"] == "shard" and env["FLAGS_shard_group"] == str(g), env
    assert env["FLAGS_shard_groups"] == str(len(groups)) and env["FLAGS_cluster"] == config["FLAGS_cluster"]
    assert replicas == [f"{name}-{r}.{name}:50051" for r in range(len(replicas))], replicas
    assert name in budgets and ss["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
router = by("Deployment")["engram-router"]
c0 = router["spec"]["template"]["spec"]["containers"][0]
assert c0["readinessProbe"]["grpc"]["service"] == "engram.v1.Engram"
assert c0["envFrom"][0]["configMapRef"]["name"] == "engram-router-config"
assert "engram-router" in budgets and "engram" in services
cron = by("CronJob")["engram-backup"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
assert "engram --addr=engram:50051 backup create" in cron["containers"][0]["args"][0]
assert cron["volumes"][0]["persistentVolumeClaim"]["claimName"] in by("PersistentVolumeClaim")
print(f"== kubernetes sharded: {len(groups)} groups x {len(groups[0])} replicas, a router Deployment, "
      f"{len(budgets)} disruption budgets")

c = yaml.safe_load(open("deploy/compose/sharded.yaml"))
shards = [n for n in c["services"] if n.startswith("shard-")]
router = c["services"]["router"]["environment"]
assert router["FLAGS_shards"] == ";".join(f"{n}:50051" for n in sorted(shards)), router
for n in shards:
    env = c["services"][n]["environment"]
    assert env["FLAGS_shard_group"] == n.split("-")[1] and env["FLAGS_shard_groups"] == str(len(shards))
prom = yaml.safe_load(open("deploy/compose/prometheus-sharded.yml"))
targets = [t for job in prom["scrape_configs"] for t in job["static_configs"][0]["targets"]]
assert sorted(targets) == sorted(["router:9464"] + [f"{n}:9464" for n in shards]), targets
backup = c["services"]["backup"]
assert "--addr=router:50051 backup create" in backup["command"][0], backup
assert all(v.split(":")[0] in c["volumes"] for v in backup["volumes"]), backup
print(f"== compose sharded: a router over {len(shards)} shards, all scraped, a backup job")

# The alerting rules: the Kubernetes PrometheusRule objects carry the same
# groups as the file compose's Prometheus loads, both compose deployments
# mount it, and every engram metric a rule reads is one engramd exports.
import glob, re
rules = yaml.safe_load(open("deploy/compose/engram-alerts.yml"))
for k in ("deploy/kubernetes", "deploy/kubernetes/sharded"):
    kust = yaml.safe_load(open(f"{k}/kustomization.yaml"))
    pr = [d for r in kust["resources"] for d in yaml.safe_load_all(open(os.path.join(k, r)))
          if d["kind"] == "PrometheusRule"]
    assert len(pr) == 1 and pr[0]["spec"]["groups"] == rules["groups"], f"{k}: rules differ"
for f in ("compose.yaml", "sharded.yaml"):
    c = yaml.safe_load(open(f"deploy/compose/{f}"))
    assert "./engram-alerts.yml:/etc/prometheus/engram-alerts.yml:ro" in c["services"]["prometheus"]["volumes"], f
sources = "".join(open(p).read() for p in glob.glob("server/**/*.cc", recursive=True))
exported = set(re.findall(r'"(engram_[a-z_]+)"', sources))
names = set()
for rule in rules["groups"][0]["rules"]:
    for name in re.findall(r"\b(engram_[a-z_]+)", rule["expr"]):
        base = re.sub(r"_(count|sum|bucket)$", "", name)
        assert name in exported or base in exported, f"{rule['alert']}: {name} is no metric of engramd"
        names.add(name)
print(f"== alerting rules: {len(rules['groups'][0]['rules'])} alerts over {len(names)} engram metrics, "
      "the same in compose and both Kubernetes deployments")
PY
