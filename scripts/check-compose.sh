#!/usr/bin/env bash
# Validates docker-compose.yml with a real compose tool and checks that
# every file it references exists. Needs no Docker engine: `docker-compose
# config` (Debian's docker-compose 1.29 package) only parses, validates and
# normalizes the file. .ci/run installs docker-compose when it is missing.
#
# Checked: the compose schema and cross-references (services, named volumes,
# depends_on), every build context and its Dockerfile, every bind-mounted
# file or directory and every env_file. Not checked: anything an engine
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
