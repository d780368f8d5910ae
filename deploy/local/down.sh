#!/usr/bin/env bash
# Stop the worker, Flower, Prometheus and the vLLM server that up.sh started (Redis is the machine's and stays, and
# so does SeaweedFS, the tests' S3 server: `kill "$(cat ~/.cache/cascade/seaweedfs.pid)"` stops it).
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
for name in worker flower prometheus "vllm-${CASCADE_VLLM_PORT:-8000}"; do
  pidfile="$state/$name.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill -TERM "$(cat "$pidfile")" && echo "[cascade] stopped $name" >&2
  fi
  rm -f "$pidfile"
done
