#!/usr/bin/env bash
# Start vLLM's OpenAI-compatible server (CPU build, SmolLM2-135M-Instruct) in the background, unless one
# already answers on the port. Waits until /health answers (startup takes about 3.5 minutes on 2 cores).
#
#   CASCADE_VLLM_PORT   port (default 8000)
#   CASCADE_LLM_MODEL   served model name (default SmolLM2-135M-Instruct)
#   CASCADE_VLLM_HOME   where vllm_env.sh keeps the environment (default ~/.cache/cascade)
#   VLLM_WAIT=0         return at once, without waiting for /health
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
port="${CASCADE_VLLM_PORT:-8000}"
name="${CASCADE_LLM_MODEL:-SmolLM2-135M-Instruct}"
home="${CASCADE_VLLM_HOME:-$HOME/.cache/cascade}"
log="$home/vllm-$port.log"
health="http://127.0.0.1:$port/health"

if curl -fsS -m 2 "$health" >/dev/null 2>&1; then
  echo "[vllm_serve] already answering on port $port" >&2
  exit 0
fi

pidfile="$home/vllm-$port.pid"
# The process in the pid file is a live vLLM server: not a zombie (an unreaped server that died), not another
# process that took the pid of one an earlier session left.
server_alive() {
  local pid
  pid="$(cat "$pidfile" 2>/dev/null)" && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "vllm.entrypoints.openai.api_server"
}
if server_alive; then
  echo "[vllm_serve] a server is already starting (pid $(cat "$pidfile")); waiting for it" >&2
else
eval "$("$here/vllm_env.sh")"
echo "[vllm_serve] starting on port $port, log in $log" >&2
VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}" VLLM_USE_V1=1 HF_HUB_OFFLINE=1 \
  nohup "$VLLM_PYTHON" -m vllm.entrypoints.openai.api_server \
  --model "$VLLM_MODEL_DIR" --served-model-name "$name" \
  --host 127.0.0.1 --port "$port" --dtype float32 --max-model-len 2048 \
  >"$log" 2>&1 </dev/null &
echo $! >"$pidfile"
fi

[ "${VLLM_WAIT:-1}" = "0" ] && exit 0
for _ in $(seq 1 180); do
  if curl -fsS -m 2 "$health" >/dev/null 2>&1; then
    echo "[vllm_serve] ready on port $port" >&2
    exit 0
  fi
  if ! server_alive; then
    echo "[vllm_serve] the server exited; last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  sleep 5
done
echo "[vllm_serve] not ready after 15 minutes; see $log" >&2
exit 1
