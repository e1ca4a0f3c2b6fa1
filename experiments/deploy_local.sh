#!/usr/bin/env bash
# Run the fedistill Flower app on a real Deployment Engine on this machine (127.0.0.1):
# one flower-superlink, NUM_NODES flower-supernode processes (node i serves
# partition-id=i of num-partitions=NUM_NODES), then `flwr run` against them.
#
# Usage (from anywhere; needs the project's venv on PATH or FLWR_BIN set):
#   experiments/deploy_local.sh                         # the app's pyproject defaults
#   experiments/deploy_local.sh -c 'iterations=20 eval-epochs=50'   # quick run
#   TLS=1 experiments/deploy_local.sh                   # TLS with a throwaway CA
#   NUM_NODES=5 WORK=/tmp/mydeploy experiments/deploy_local.sh
#
# Every argument is passed on to `flwr run` (e.g. -c/--run-config overrides).
# Environment: NUM_NODES (3); WORK (default a new /tmp/fedistill-deploy.* folder holding logs,
# FLWR_HOME, the staged app and results/: the SuperLink, hence the ServerApp, runs in WORK);
# TLS (0); FLWR_BIN (folder of flower-superlink etc.; default: found on PATH, else
# ../venvs/dev/bin).
#
# What it does, step by step (each step is printed):
#   1. picks free ports (bind to port 0) for the SuperLink and each SuperNode's runtime API;
#   2. starts the SuperLink (Fleet + Control + ServerAppIo APIs on ONE HTTP port in flwr 1.42)
#      with per-run dependency installation off (the app needs torch, already installed);
#   3. starts the SuperNodes with their own --node-config and waits until each registered;
#   4. writes the connection to $FLWR_HOME/config.toml (Flower 1.42 reads SuperLink
#      connections there, not from pyproject.toml);
#   5. stages a copy of the app (pyproject.toml + packages) without [tool.flwr.federations],
#      because `flwr run` migrates that table and comments it out of the pyproject it reads;
#   6. `flwr run <staged app> local-deployment --stream`, then `flwr ls` for the final status.
# On exit, error or Ctrl-C every started process and every descendant it started is stopped
# by PID (SIGTERM to its process group and to each descendant, SIGKILL after 10 s); PIDs are
# printed as processes start.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NUM_NODES="${NUM_NODES:-3}"
TLS="${TLS:-0}"
if [[ -z "${FLWR_BIN:-}" ]]; then
    if command -v flower-superlink >/dev/null 2>&1; then
        FLWR_BIN="$(dirname "$(command -v flower-superlink)")"
    else
        FLWR_BIN="$(cd "$REPO/../venvs/dev/bin" 2>/dev/null && pwd || true)"
    fi
fi
if [[ ! -x "$FLWR_BIN/flower-superlink" ]]; then
    echo "error: flower-superlink not found (activate the project's venv or set FLWR_BIN)" >&2
    exit 2
fi
PY="$FLWR_BIN/python"
WORK="${WORK:-$(mktemp -d /tmp/fedistill-deploy.XXXXXX)}"
mkdir -p "$WORK/logs"
export PATH="$FLWR_BIN:$PATH"          # Flower starts flower-superexec by name
export FLWR_HOME="$WORK/flwr-home"     # Flower's state and config, private to this run
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_TELEMETRY_ENABLED=0
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

PIDS=()
descendants() {  # pid: every live descendant (Flower detaches flower-superexec into its own session)
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}
cleanup() {
    trap - EXIT INT TERM
    [[ ${#PIDS[@]} -eq 0 ]] && return
    local all=("${PIDS[@]}") pid
    for pid in "${PIDS[@]}"; do all+=($(descendants "$pid")); done
    echo "== stopping ${#PIDS[@]} processes and $((${#all[@]} - ${#PIDS[@]})) they started: ${all[*]}"
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for pid in "${all[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        alive=0
        for pid in "${all[@]}"; do
            [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" =~ ^[^Z] ]] && alive=1
        done
        [[ $alive -eq 0 ]] && break
        sleep 0.2
    done
    for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    for pid in "${all[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "== stopped; logs in $WORK/logs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {  # port pid name
    for _ in $(seq 1 300); do
        if ! kill -0 "$2" 2>/dev/null; then
            echo "error: $3 exited; its log:" >&2; tail -20 "$WORK/logs/$3.log" >&2; exit 1
        fi
        (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.2
    done
    echo "error: $3 not listening on 127.0.0.1:$1 after 60 s" >&2; exit 1
}

start() {  # name cwd cmd...  (own session/process group, output to logs/<name>.log)
    local name="$1" dir="$2"; shift 2
    mkdir -p "$dir"
    echo "   \$ $*"
    (cd "$dir" && exec setsid "$@") >"$WORK/logs/$name.log" 2>&1 </dev/null &
    PIDS+=("$!")
    echo "   $name: pid $!, log $WORK/logs/$name.log"
}

echo "== work folder: $WORK"
LINK_PORT="$(free_port)"
if [[ "$TLS" == "1" ]]; then
    echo "== 0. throwaway CA and server certificate for 127.0.0.1/localhost"
    "$PY" - "$WORK/certs" <<'EOF'
import datetime as dt, ipaddress, sys
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
now = dt.datetime.now(dt.timezone.utc); life = (now - dt.timedelta(minutes=5), now + dt.timedelta(days=1))
def build(subject, issuer, pub, ext):
    b = x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
    b = b.serial_number(x509.random_serial_number()).not_valid_before(life[0]).not_valid_after(life[1])
    for e, crit in ext: b = b.add_extension(e, critical=crit)
    return b
ca_key = ec.generate_private_key(ec.SECP256R1())
ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedistill local CA")])
ca = build(ca_name, ca_name, ca_key.public_key(), [(x509.BasicConstraints(ca=True, path_length=0), True)]).sign(ca_key, hashes.SHA256())
key = ec.generate_private_key(ec.SECP256R1())
san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
cert = build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), ca_name, key.public_key(),
             [(san, False), (x509.BasicConstraints(ca=False, path_length=None), True)]).sign(ca_key, hashes.SHA256())
(out / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
(out / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
(out / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
EOF
    LINK_SEC=(--ssl-ca-certfile "$WORK/certs/ca.crt" --ssl-certfile "$WORK/certs/server.pem" --ssl-keyfile "$WORK/certs/server.key")
    NODE_SEC=(--root-certificates "$WORK/certs/ca.crt")
    CONN_SEC="root-certificates = \"$WORK/certs/ca.crt\""
else
    LINK_SEC=(--insecure)
    NODE_SEC=(--insecure)
    CONN_SEC="insecure = true"
fi

echo "== 1-2. SuperLink on 127.0.0.1:$LINK_PORT"
start superlink "$WORK" "$FLWR_BIN/flower-superlink" "${LINK_SEC[@]}" \
    --host 127.0.0.1 --port "$LINK_PORT" --disable-runtime-dependency-installation
wait_port "$LINK_PORT" "${PIDS[-1]}" superlink

echo "== 3. $NUM_NODES SuperNodes"
for ((i = 0; i < NUM_NODES; i++)); do
    port="$(free_port)"
    start "supernode-$i" "$WORK/supernode-$i" "$FLWR_BIN/flower-supernode" "${NODE_SEC[@]}" \
        --superlink "127.0.0.1:$LINK_PORT" --host 127.0.0.1 --port "$port" \
        --node-config "partition-id=$i num-partitions=$NUM_NODES"
done
for ((i = 0; i < NUM_NODES; i++)); do
    for _ in $(seq 1 300); do
        grep -q "SuperNode ID:" "$WORK/logs/supernode-$i.log" 2>/dev/null && break
        sleep 0.2
    done
    grep -o "SuperNode ID: [0-9]*" "$WORK/logs/supernode-$i.log" | sed "s/^/   supernode-$i: /" \
        || { echo "error: supernode-$i did not register" >&2; tail -20 "$WORK/logs/supernode-$i.log" >&2; exit 1; }
done

echo "== 4. SuperLink connection 'local-deployment' in $FLWR_HOME/config.toml"
mkdir -p "$FLWR_HOME"
cat >"$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "local-deployment"

[superlink.local-deployment]
address = "127.0.0.1:$LINK_PORT"
$CONN_SEC
EOF

echo "== 5. staging the app in $WORK/app"
"$PY" - "$REPO" "$WORK/app" <<'EOF'
import shutil, sys, tomllib
from pathlib import Path
import tomli_w
repo, dest = Path(sys.argv[1]), Path(sys.argv[2])
dest.mkdir(parents=True, exist_ok=True)
cfg = tomllib.loads((repo / "pyproject.toml").read_text())
cfg.get("tool", {}).get("flwr", {}).pop("federations", None)
(dest / "pyproject.toml").write_text(tomli_w.dumps(cfg))
for pkg in ("fedistill", "clients", "server"):
    shutil.copytree(repo / pkg, dest / pkg, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
EOF

echo "== 6. flwr run $WORK/app local-deployment --stream $*"
cd "$WORK"
START=$(date +%s)
"$FLWR_BIN/flwr" run "$WORK/app" local-deployment --stream "$@"
echo "== run ended after $(($(date +%s) - START)) s; status:"
COLUMNS=160 "$FLWR_BIN/flwr" ls local-deployment --limit 1
echo "== results written by the ServerApp (its relative results-dir resolves under $WORK):"
find "$WORK" -name 'results.json' -newer "$FLWR_HOME/config.toml" -not -path "$WORK/app/*" -print 2>/dev/null || true
