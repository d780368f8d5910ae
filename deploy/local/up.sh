#!/usr/bin/env bash
# Start the whole local stack: the project's venv, Redis, the vLLM CPU server, and one worker serving both
# queues. Each part is reused when it already runs. Stop it with deploy/local/down.sh.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ensure_venv
ensure_redis
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
