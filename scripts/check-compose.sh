#!/usr/bin/env bash
# Validates docker-compose.yml with a real compose tool and checks that
# every file it references exists. Needs no Docker engine: `docker-compose
# config` (Debian's docker-compose 1.29 package) only parses, validates and
# normalizes the file. .ci/run installs docker-compose when it is missing.
#
# Checked: the compose schema and cross-references (services, named volumes,
# depends_on), every build context and its Dockerfile, every bind-mounted
# file or directory and every env_file; the monitoring files (Prometheus
# config, Grafana provisioning and dashboards) parse, the scrape reads the
# admin token from a file, and every metric a dashboard queries is one the
# node describes. Not checked: anything an engine
# would do (pulling images, building, starting containers).
set -euo pipefail
cd "$(dirname "$0")/.."

file=docker-compose.yml
if command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  echo "check-compose: neither docker-compose nor 'docker compose' is installed" >&2
  echo "  (Debian: apt-get install --no-install-recommends docker-compose)" >&2
  exit 1
fi

echo "check-compose: ${compose[*]} -f $file config -q"
"${compose[@]}" -f "$file" config -q

# The normalized file has absolute paths (build contexts, bind mounts) and
# long-form entries, so the check below needs no YAML subtleties. PyYAML
# comes with Debian's docker-compose.
"${compose[@]}" -f "$file" config | python3 -c '
import os, sys, yaml

doc = yaml.safe_load(sys.stdin)
missing, checked = [], 0

def need(path, what, isdir=False):
    global checked
    checked += 1
    ok = os.path.isdir(path) if isdir else os.path.exists(path)
    if not ok:
        missing.append(f"{what}: {path}")

for name, svc in (doc.get("services") or {}).items():
    build = svc.get("build")
    if build is not None:
        if isinstance(build, str):
            build = {"context": build}
        ctx = build.get("context", ".")
        need(ctx, f"{name}: build context", isdir=True)
        dockerfile = build.get("dockerfile", "Dockerfile")
        need(os.path.join(ctx, dockerfile), f"{name}: Dockerfile")
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            src = v.get("source") if v.get("type") == "bind" else None
        else:
            src = v.split(":", 1)[0]
        # Named volumes have no slash; bind mounts are absolute here.
        if src and os.path.isabs(src):
            need(src, f"{name}: bind mount")
    env_files = svc.get("env_file") or []
    for e in [env_files] if isinstance(env_files, str) else env_files:
        need(e if isinstance(e, str) else e["path"], f"{name}: env_file")

if missing:
    print("check-compose: files referenced by docker-compose.yml are missing:", file=sys.stderr)
    for m in missing:
        print("  " + m, file=sys.stderr)
    sys.exit(1)
services = len(doc.get("services") or {})
print(f"check-compose: ok ({services} services, {checked} referenced paths exist)")
'

# Monitoring: the Prometheus and Grafana files parse, the scrape sends the
# admin token from a file (never inline), and every metric a dashboard
# queries is one the node describes (crates/hush-node/src/telemetry.rs, the
# one list of every family it exports).
python3 - <<'PY'
import glob, json, re, sys, yaml

problems = []
prom = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))
jobs = {j["job_name"]: j for j in prom.get("scrape_configs") or []}
node_job = jobs.get("hush-node")
if node_job is None:
    problems.append("prometheus.yml: no hush-node scrape job")
else:
    auth = node_job.get("authorization") or {}
    if "credentials" in auth or "bearer_token" in node_job:
        problems.append("prometheus.yml: the admin token must come from a file (credentials_file)")
    if not auth.get("credentials_file"):
        problems.append("prometheus.yml: hush-node job has no authorization.credentials_file")
for f in glob.glob("deploy/grafana/provisioning/**/*.yml", recursive=True):
    yaml.safe_load(open(f))

telemetry = open("crates/hush-node/src/telemetry.rs").read()
described = set(re.findall(r'"((?:hush|process)_[a-z0-9_]+)"', telemetry))
consts = dict(re.findall(r'pub const ([A-Z_]+): &str = "([a-z0-9_]+)"', telemetry))
described |= set(consts.values())

def family(name):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in described:
            return name[: -len(suffix)]
    return name

dashboards = glob.glob("deploy/grafana/dashboards/*.json")
if not dashboards:
    problems.append("no dashboard in deploy/grafana/dashboards")
queried = set()
for f in dashboards:
    try:
        dash = json.load(open(f))
    except ValueError as e:
        problems.append(f"{f}: not JSON: {e}")
        continue
    def walk(panels):
        for p in panels:
            for t in p.get("targets") or []:
                for m in re.findall(r'\b((?:hush|process)_[a-z0-9_]+)', t.get("expr", "")):
                    queried.add(m)
                    if family(m) not in described:
                        problems.append(f"{f}: panel {p.get('title')!r} queries {m}, which the node does not describe")
            walk(p.get("panels") or [])
    walk(dash.get("panels") or [])
if problems:
    print("check-compose: monitoring files:", file=sys.stderr)
    for p in problems:
        print("  " + p, file=sys.stderr)
    sys.exit(1)
print(f"check-compose: monitoring ok ({len(dashboards)} dashboard(s), {len(queried)} metrics queried, all described)")
PY
