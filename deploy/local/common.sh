# Sourced by the scripts in deploy/local: the project's virtual environment and a Redis that answers.
# shellcheck shell=bash

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
state="${CASCADE_VLLM_HOME:-$HOME/.cache/cascade}"
mkdir -p "$state"

ensure_venv() {
  local python="${PYTHON:-python3.11}"
  command -v "$python" >/dev/null || python=python3
  if [ ! -x "$root/.venv/bin/cascade" ] || [ "$root/pyproject.toml" -nt "$root/.venv/.installed" ]; then
    echo "[cascade] installing the project into $root/.venv" >&2
    [ -x "$root/.venv/bin/python" ] || "$python" -m venv "$root/.venv"
    "$root/.venv/bin/pip" install --quiet --upgrade pip 2>&1 | { grep -v "is ignored" || true; }
    # The embeddings extra needs torch: its CPU build first (this machine's find-links), else the resolver
    # takes the CUDA build. Skipped when 2.13.0 is there already.
    if ! "$root/.venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("torch").split("+")[0] != "2.13.0")' 2>/dev/null; then
      "$root/.venv/bin/pip" install --quiet torch==2.13.0 2>&1 | { grep -v "is ignored" || true; }
    fi
    "$root/.venv/bin/pip" install --quiet -e "$root[dev,embeddings]" 2>&1 | { grep -v "is ignored" || true; }
    "$root/.venv/bin/cascade" --help >/dev/null
    touch "$root/.venv/.installed"
  fi
}

ensure_prometheus() {
  # Prometheus and promtool (Debian package), for the monitoring tests and the local stack.
  if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    echo "[cascade] installing prometheus (Debian package)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  fi
}

redis_answers() {
  (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null
}

ensure_redis() {
  if redis_answers; then return 0; fi
  echo "[cascade] Redis does not answer on 127.0.0.1:6379; starting it" >&2
  if ! command -v redis-server >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/cascade.log
  for _ in $(seq 1 50); do redis_answers && return 0; sleep 0.2; done
  echo "[cascade] Redis did not start" >&2
  return 1
}
