#!/usr/bin/env bash
# Builds the engram image, runs it, and uses it from the host: health, a
# store, adds and retrievals with the host's engram CLI, the image's own
# HEALTHCHECK, and /metrics. Uses docker where a Docker engine answers,
# podman otherwise.
#
#   deploy/container-test.sh [HOST_CLI]   (HOST_CLI defaults to build/bin/engram)
set -euo pipefail
cd "$(dirname "$0")/.."
cli=${1:-build/bin/engram}
image=engram:test
name=engram-test-$$

if docker info >/dev/null 2>&1; then
  engine=docker
  build=(docker build -t "$image" .)
else
  engine=podman
  export CONTAINERS_CONF=${CONTAINERS_CONF:-/etc/containers/containers.conf.d/local.conf}
  build=(podman build --format docker --pull=never --isolation=chroot --network=host -t "$image" .)
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc_port=$(free_port)
metrics_port=$(free_port)

start=$(date +%s)
echo "== building $image with $engine"
"${build[@]}"
echo "== image built in $(($(date +%s) - start))s; size: $($engine image inspect "$image" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"

cleanup() { $engine rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
if [[ $engine == podman ]]; then
  # Host networking here (no registry, no CNI); the flags move the ports.
  $engine run -d --name "$name" --network=host \
    -e FLAGS_listen=127.0.0.1:$grpc_port -e FLAGS_metrics_listen=127.0.0.1:$metrics_port \
    "$image" >/dev/null
else
  $engine run -d --name "$name" -p 127.0.0.1:$grpc_port:50051 -p 127.0.0.1:$metrics_port:9464 \
    "$image" >/dev/null
fi
engram() { "$cli" --addr=127.0.0.1:$grpc_port --timeout_s=10 "$@"; }

for _ in $(seq 1 100); do
  if [[ $(engram health engram.v1.Engram 2>/dev/null) == SERVING ]]; then break; fi
  sleep 0.2
done
[[ $(engram health engram.v1.Engram) == SERVING ]] || { $engine logs "$name"; exit 1; }
echo "== engramd in the container is ready on 127.0.0.1:$grpc_port"
# The image carries jemalloc, which gives freed memory back to the system.
# (grep reads all of it: with -q it would stop at the match and, under
# pipefail, the writer's SIGPIPE would fail the check.)
$engine logs "$name" 2>&1 | grep "allocator jemalloc" >/dev/null ||
  { echo "engramd in the container does not allocate with jemalloc"; $engine logs "$name"; exit 1; }

tmp=$(mktemp -d)
trap 'cleanup; rm -rf "$tmp"' EXIT
printf '1,0,0,0\n0,1,0,0\n0,0,1,0\n' > "$tmp/rows.csv"
engram store create boxed --dim=4 --similarity=l2 --beta=20 --top_k=1
engram add boxed "$tmp/rows.csv"
out=$(engram retrieve boxed "$tmp/rows.csv" --json)
python3 - "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
ids = [int(q["matches"][0]["id"]) for q in r["results"]]
assert ids == [1, 2, 3], ids
print("== retrieval through the container: ids", ids)
PY

if [[ $engine == podman ]]; then
  # Errors about systemd timers are podman's, on hosts without systemd.
  podman healthcheck run "$name" 2>/dev/null || { echo "HEALTHCHECK failed" >&2; exit 1; }
  echo "== HEALTHCHECK passes"
else
  for _ in $(seq 1 60); do
    [[ $(docker inspect -f '{{.State.Health.Status}}' "$name") == healthy ]] && break
    sleep 1
  done
  [[ $(docker inspect -f '{{.State.Health.Status}}' "$name") == healthy ]] ||
    { echo "HEALTHCHECK failed" >&2; exit 1; }
  echo "== HEALTHCHECK passes"
fi
[[ $($engine exec "$name" id -u) == 10001 ]] || { echo "container runs as root" >&2; exit 1; }
echo "== runs as uid 10001, not root"

# The image's own CLI backs up into its volume, as the CronJob does.
inner=127.0.0.1:50051
[[ $engine == podman ]] && inner=127.0.0.1:$grpc_port
$engine exec "$name" engram --addr=$inner backup create /data/backup-test >/dev/null
$engine exec "$name" engram backup verify /data/backup-test | grep "every file matches" >/dev/null
$engine exec "$name" engram --addr=$inner backup restore /data/backup-test --as=boxed-copy >/dev/null
[[ $(engram store get boxed-copy --json | python3 -c "import json,sys; print(json.load(sys.stdin)['pattern_count'])") == 3 ]]
echo "== backup create, verify and restore inside the container"

metrics=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$metrics_port/metrics', timeout=5).read().decode())")
grep -q 'engram_patterns{store="boxed"} 3' <<<"$metrics"
grep -q 'engram_requests_total{code="OK",method="Retrieve"} 1' <<<"$metrics"
grep -q 'engram_requests_total{code="OK",method="CreateBackup"} 1' <<<"$metrics"
echo "== /metrics reports the store and the calls"

$engine stop -t 20 "$name" >/dev/null

# A router and two shards from the same image.
shard_ports=("$(free_port)" "$(free_port)")
router_port=$(free_port)
cluster_names=("$name-shard-0" "$name-shard-1" "$name-router")
cleanup_cluster() { for n in "${cluster_names[@]}"; do $engine rm -f "$n" >/dev/null 2>&1 || true; done; }
trap 'cleanup; cleanup_cluster; rm -rf "$tmp"' EXIT
for g in 0 1; do
  # Host networking on both engines: the flags keep every port on loopback.
  $engine run -d --name "${cluster_names[$g]}" --network=host \
    -e FLAGS_listen=127.0.0.1:${shard_ports[$g]} -e FLAGS_metrics_listen= \
    -e FLAGS_role=shard -e FLAGS_cluster=ct -e FLAGS_shard_group=$g -e FLAGS_shard_groups=2 \
    "$image" >/dev/null
done
$engine run -d --name "${cluster_names[2]}" --network=host \
  -e FLAGS_listen=127.0.0.1:$router_port -e FLAGS_metrics_listen= -e FLAGS_role=router \
  -e FLAGS_cluster=ct -e "FLAGS_shards=127.0.0.1:${shard_ports[0]};127.0.0.1:${shard_ports[1]}" \
  "$image" >/dev/null
routed() { "$cli" --addr=127.0.0.1:$router_port --timeout_s=10 "$@"; }
for _ in $(seq 1 100); do
  if [[ $(routed health engram.v1.Engram 2>/dev/null) == SERVING ]]; then break; fi
  sleep 0.2
done
[[ $(routed health engram.v1.Engram) == SERVING ]] ||
  { for n in "${cluster_names[@]}"; do $engine logs "$n"; done; exit 1; }
routed store create spread --dim=4 --similarity=l2 --beta=20 --top_k=1
routed add spread "$tmp/rows.csv"
out=$(routed retrieve spread "$tmp/rows.csv" --json)
python3 - "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
ids = [int(q["matches"][0]["id"]) for q in r["results"]]
assert len(set(ids)) == 3 and all(i >= 1 << 48 for i in ids), ids
print("== retrieval through a router over two shard containers: ids", ids)
PY
routed cluster status
for n in "${cluster_names[@]}"; do $engine stop -t 20 "$n" >/dev/null; done
echo "== container test passed in $(($(date +%s) - start))s"
