#!/usr/bin/env bash
# `make image-test`: build the serving image with podman and smoke-test it, then run docker-compose.yml with
# podman-compose and check that Prometheus scrapes genserve.
#
# No container registry is reachable here, so two images are local STAND-INS, built from Debian bookworm
# (debootstrap, from the mirror apt already uses) and tagged with the names the project's files expect:
#   docker.io/library/python:3.11-slim   bookworm's python3 (3.11) in a venv on PATH
#   docker.io/prom/prometheus:v2.53.0    Debian's prometheus package (another version than the pinned one)
# The Dockerfile and docker-compose.yml themselves are used unchanged.
#
# podman keeps everything (configuration, storage, networks) in one temporary folder of its own, removed on
# exit; nothing in /etc/containers changes. Every step is bounded in time. Needs root, podman, runc and
# debootstrap (.ci/run installs them).
#   IMAGE_TEST_DIR=<dir>     keep podman's folder there and reuse its images on the next run (not removed)
#   IMAGE_TEST_DOCKERFILE=f  build another Dockerfile (e.g. an older one, to compare sizes)
#   IMAGE_TEST_BUILD_ONLY=1  stop after the build (prints the image's size)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PY:-.venv/bin/python}
TAG=localhost/genserve:image-test
CA=/etc/ssl/certs/ca-certificates.crt  # the host's bundle: pip's HTTPS goes through a proxy whose CA is in it
RUN_ID=genserve-image-test-$$
started=$SECONDS

say() { printf '[image-test %4ds] %s\n' $((SECONDS - started)) "$*"; }
fail() { say "FAIL: $*"; exit 1; }
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install podman runc debootstrap)"
done
[[ $(id -u) == 0 ]] || fail "needs root (debootstrap, and podman with runc and cgroupfs)"

# --- podman's own folder and configuration ------------------------------------------------------------------------
if [[ -n ${IMAGE_TEST_DIR:-} ]]; then
    WORK=$(mkdir -p "$IMAGE_TEST_DIR" && cd "$IMAGE_TEST_DIR" && pwd)
else
    WORK=$(mktemp -d /tmp/genserve-image-test.XXXXXX)
fi
mkdir -p "$WORK/networks" "$WORK/tmp"
# runc: crun fails here ("cgroups in hybrid mode not supported"); no systemd: cgroupfs and a file event log;
# the host caps open files at 20000 and root lacks CAP_SYS_RESOURCE, so containers get explicit limits.
cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$WORK/events.log"
tmp_dir = "$WORK/tmp"
[network]
network_backend = "netavark"
network_config_dir = "$WORK/networks"
EOF
cat >"$WORK/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/run"
EOF
export CONTAINERS_CONF=$WORK/containers.conf CONTAINERS_STORAGE_CONF=$WORK/storage.conf

COMPOSE=(timeout 300 "$PY" -m podman_compose -p "$RUN_ID" -f docker-compose.yml)
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    say "cleaning up"
    if [[ -f $WORK/compose-up ]]; then "${COMPOSE[@]}" down -t 2 >/dev/null 2>&1 || true; fi
    timeout 60 podman rm -f --ignore -t 2 "$RUN_ID" "$RUN_ID-tls" >/dev/null 2>&1 || true
    if [[ -z ${IMAGE_TEST_DIR:-} ]]; then
        timeout 120 podman system reset -f >/dev/null 2>&1 || true
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'say "FAIL: line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

have_image() { podman image exists "$1"; }

wait_ready() {  # CONTAINER URL: until URL/readyz answers 200 (model loading), failing at once if the container stops
    local deadline=$((SECONDS + 240))
    until "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' "$2/readyz" 2>/dev/null
    do
        [[ $(podman inspect --format '{{.State.Running}}' "$1") == true ]] \
            || { podman logs --tail 30 "$1"; fail "container $1 stopped (its log above)"; }
        ((SECONDS < deadline)) || fail "$2/readyz did not answer 200 within 240 s"
        sleep 2
    done
    say "ok: $2/readyz answered 200"
}

# --- the stand-in base images ---------------------------------------------------------------------------------------
say "NOTE: the base image python:3.11-slim is a STAND-IN built here from Debian bookworm (no registry is reachable)"
if ! have_image localhost/debian-standin:bookworm; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
        | grep -oE '^(URIs:|deb)[[:space:]]+https?://[^[:space:]]+/debian/?([[:space:]]|$)' | awk '{print $2; exit}' || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    say "debootstrap --variant=minbase bookworm from $mirror"
    timeout 900 debootstrap --variant=minbase bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
    tar -C "$WORK/rootfs" -c . | timeout 300 podman import -q - localhost/debian-standin:bookworm >/dev/null
    rm -rf "$WORK/rootfs"
fi
if ! have_image docker.io/library/python:3.11-slim; then
    say "building the python:3.11-slim stand-in"
    cat >"$WORK/python.Containerfile" <<'EOF'
FROM localhost/debian-standin:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /usr/local/python \
    && printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > /etc/pip.conf
ENV PATH=/usr/local/python/bin:$PATH
EOF
    timeout 600 podman build -q --format docker --pull=never -t docker.io/library/python:3.11-slim \
        -f "$WORK/python.Containerfile" "$WORK" >/dev/null
fi

# --- the image ------------------------------------------------------------------------------------------------------
say "building the image (podman build --format docker --pull=never)"
build_started=$SECONDS
timeout 1200 podman build --format docker --pull=never -v "$CA:$CA:ro" -t "$TAG" \
    -f "${IMAGE_TEST_DOCKERFILE:-Dockerfile}" . >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log"; fail "podman build (log above)"; }
size=$(podman image inspect --format '{{.Size}}' "$TAG")
say "built $TAG in $((SECONDS - build_started)) s: $((size / 1000000)) MB ($size bytes, podman image inspect .Size)"
[[ -z ${IMAGE_TEST_BUILD_ONLY:-} ]] || exit 0

# --- the container --------------------------------------------------------------------------------------------------
http_port=$(free_port)
grpc_port=$(free_port)
# (podman cannot schedule the HEALTHCHECK without systemd and says so on stderr: `podman healthcheck run` below)
podman run -d --name "$RUN_ID" -p "127.0.0.1:$http_port:8000" -p "127.0.0.1:$grpc_port:8001" "$TAG" \
    >/dev/null 2>"$WORK/run.log" || { cat "$WORK/run.log"; fail "podman run"; }
say "container $RUN_ID: REST 127.0.0.1:$http_port, gRPC 127.0.0.1:$grpc_port"
wait_ready "$RUN_ID" "http://127.0.0.1:$http_port"

user=$(podman exec "$RUN_ID" id -u)
[[ $user == 10001 ]] || fail "the server runs as uid $user, not the image's non-root 10001"
say "ok: the server runs as uid $user (non-root)"

timeout 300 "$PY" scripts/image_smoke.py --http "http://127.0.0.1:$http_port" --grpc "127.0.0.1:$grpc_port" \
    || { podman logs --tail 30 "$RUN_ID"; fail "smoke checks (server log above)"; }

timeout 30 podman healthcheck run "$RUN_ID" >/dev/null || fail "podman healthcheck run (the image's HEALTHCHECK)"
say "ok: podman healthcheck run: the image's HEALTHCHECK passes"
podman rm -f -t 2 "$RUN_ID" >/dev/null 2>&1

# The HEALTHCHECK with TLS on: the same image, a self-signed certificate mounted read-only.
mkdir -p "$WORK/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=localhost \
    -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" 2>/dev/null
chmod 0644 "$WORK/tls/key.pem"  # readable by the image's uid 10001; a throwaway key
podman run -d --name "$RUN_ID-tls" -v "$WORK/tls:/tls:ro" \
    -e GENSERVE_TLS_CERT=/tls/cert.pem -e GENSERVE_TLS_KEY=/tls/key.pem "$TAG" >/dev/null 2>"$WORK/run.log" \
    || { cat "$WORK/run.log"; fail "podman run (TLS)"; }
healthy=no
for _ in $(seq 30); do  # /healthz answers within seconds of the start, before the models are loaded
    if timeout 30 podman healthcheck run "$RUN_ID-tls" >/dev/null 2>&1; then healthy=yes; break; fi
    sleep 2
done
[[ $healthy == yes ]] || { podman logs --tail 30 "$RUN_ID-tls"; fail "the HEALTHCHECK with GENSERVE_TLS_* set"; }
say "ok: podman healthcheck run with TLS on (https, self-signed certificate)"
podman rm -f -t 2 "$RUN_ID-tls" >/dev/null 2>&1

# --- docker-compose.yml with podman-compose and a Prometheus stand-in -----------------------------------------------
say "NOTE: the Prometheus image is a STAND-IN built here from Debian's prometheus package, tagged prom/prometheus:v2.53.0"
if ! have_image docker.io/prom/prometheus:v2.53.0; then
    cat >"$WORK/prometheus.Containerfile" <<'EOF'
FROM localhost/debian-standin:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* && install -d -o nobody /prometheus
USER nobody
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
EOF
    timeout 600 podman build -q --format docker --pull=never -t docker.io/prom/prometheus:v2.53.0 \
        -f "$WORK/prometheus.Containerfile" "$WORK" >/dev/null
fi
podman tag "$TAG" localhost/genserve:0.1.0  # the compose file's image name: compose uses it instead of building
export HTTP_PORT GRPC_PORT PROMETHEUS_PORT  # the compose file's host ports
HTTP_PORT=$(free_port) GRPC_PORT=$(free_port) PROMETHEUS_PORT=$(free_port)
touch "$WORK/compose-up"
"${COMPOSE[@]}" up -d >"$WORK/compose.log" 2>&1 || { tail -30 "$WORK/compose.log"; fail "podman-compose up"; }
say "podman-compose up: genserve 127.0.0.1:$HTTP_PORT, Prometheus 127.0.0.1:$PROMETHEUS_PORT"
wait_ready "${RUN_ID}_genserve_1" "http://127.0.0.1:$HTTP_PORT"
timeout 300 "$PY" scripts/image_smoke.py --http "http://127.0.0.1:$HTTP_PORT" \
    --prometheus "http://127.0.0.1:$PROMETHEUS_PORT" \
    || { "${COMPOSE[@]}" logs >"$WORK/compose-logs.txt" 2>&1; tail -40 "$WORK/compose-logs.txt"; fail "compose checks"; }

say "PASSED in $((SECONDS - started)) s (base images: local stand-ins, see the NOTEs above)"
