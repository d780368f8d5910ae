#!/usr/bin/env bash
# Start the whole local stack: the project's venv, Redis, an S3 object store (SeaweedFS on 127.0.0.1:8333), the
# vLLM CPU server, Prometheus, one worker serving both queues, and Flower (http://127.0.0.1:5555). Each part is
# reused when it already runs. Stop it with deploy/local/down.sh.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ensure_venv
ensure_redis
use_local_redis  # every process below logs in to Redis (ACL user `cascade`), unless CASCADE_REDIS_URL is set
ensure_seaweedfs
bash "$root/deploy/local/vllm_serve.sh"

ensure_prometheus
prom_pid="$state/prometheus.pid"
if [ -f "$prom_pid" ] && kill -0 "$(cat "$prom_pid")" 2>/dev/null; then
  echo "[cascade] prometheus already running (pid $(cat "$prom_pid"))" >&2
else
  echo "[cascade] starting prometheus on 127.0.0.1:9090 (rules from monitoring/rules), log in $state/prometheus.log" >&2
  nohup prometheus --config.file="$root/monitoring/prometheus/prometheus.yml" \
    --storage.tsdb.path="$state/prometheus-data" --web.listen-address=127.0.0.1:9090 \
    >"$state/prometheus.log" 2>&1 </dev/null &
  echo $! >"$prom_pid"
fi

# The API's uploads are read by this worker (the intake task): both must use the same folder. `cascade api` run
# from the repository's root uses var/files there by default, as this worker does.
export CASCADE_FILES_DIR="${CASCADE_FILES_DIR:-$root/var/files}"
pidfile="$state/worker.pid"
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "[cascade] worker already running (pid $(cat "$pidfile"))" >&2
else
  echo "[cascade] starting a worker (queues specialist,llm), log in $state/worker.log" >&2
  nohup "$root/.venv/bin/cascade" worker --queues specialist,llm --concurrency 2 \
    >"$state/worker.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  sleep 3
  kill -0 "$(cat "$pidfile")" 2>/dev/null || { tail -n 20 "$state/worker.log" >&2; exit 1; }
fi

# Flower, Celery's web monitor, on the workers' task events (the dev extra installs it; the app is configured from
# CASCADE_REDIS_URL alone). It has no login of its own, so it listens on 127.0.0.1 only; FLOWER_BASIC_AUTH=user:pass
# in the environment asks for one, and also opens its HTTP API (/api/...), which Flower serves only behind a login.
# Optional: the stack runs on without it.
flower_port="${FLOWER_PORT:-5555}"
flower_pid="$state/flower.pid"
flower_answers() { curl -s -m 1 "http://127.0.0.1:$flower_port/healthcheck" 2>/dev/null | grep -q OK; }
if [ -f "$flower_pid" ] && kill -0 "$(cat "$flower_pid")" 2>/dev/null; then
  echo "[cascade] flower already running (pid $(cat "$flower_pid"))" >&2
elif (exec 3<>"/dev/tcp/127.0.0.1/$flower_port") 2>/dev/null; then
  echo "[cascade] 127.0.0.1:$flower_port is taken (another Flower?): not starting flower; FLOWER_PORT sets another" >&2
else
  echo "[cascade] starting flower on http://127.0.0.1:$flower_port, log in $state/flower.log" >&2
  nohup "$root/.venv/bin/celery" -A cascade.broker.celery_cli flower --address=127.0.0.1 --port="$flower_port" \
    >"$state/flower.log" 2>&1 </dev/null &
  echo $! >"$flower_pid"
  for _ in $(seq 1 120); do
    if flower_answers || ! kill -0 "$(cat "$flower_pid")" 2>/dev/null; then break; fi
    sleep 0.5
  done
  if ! flower_answers; then
    echo "[cascade] flower did not answer on 127.0.0.1:$flower_port (it exited, or 60 s passed); the stack" \
      "runs without it:" >&2
    tail -n 5 "$state/flower.log" >&2
    kill -TERM "$(cat "$flower_pid")" 2>/dev/null || true
    rm -f "$flower_pid"
  fi
fi
