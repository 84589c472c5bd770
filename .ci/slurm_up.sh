#!/usr/bin/env bash
# Bring up a real two-node SLURM cluster on this one machine, for tests of the sbatch scripts.
#
# What it does (Debian bookworm: slurm 22.05, munge 0.5.15):
#   1. installs slurmctld slurmd slurm-client munge with apt if any of them is missing;
#   2. writes /etc/slurm/slurm.conf: nodes n1, n2 (1 CPU each) on 127.0.0.1, partition `debug`, tuned for
#      tests: a requeued job may start again after SLURM_REQUEUE_DELAY s (SLURM's default is 120 s, the
#      credential lifetime `cred_expire`), and the schedulers look at the queue every second;
#   3. adds "127.0.0.1 n1 n2" to /etc/hosts so the node names resolve (MASTER_ADDR in sbatch scripts);
#   4. starts munged, slurmctld and one slurmd per node (there is no init system in CI containers);
#   5. waits until `sinfo` reports both nodes idle, or fails after SLURM_UP_TIMEOUT seconds.
#
# Idempotent: running it again with the cluster up changes nothing and returns once the nodes are idle.
# If the config file had to change while daemons were running, they are restarted.
# Must run as root. Stop everything with .ci/slurm_down.sh.
#
# Environment:
#   SLURM_UP_TIMEOUT   seconds to wait for 2 idle nodes (default 90)
#   SLURM_NODE_MEM_MB  RealMemory per node in MB (default 8000; must not exceed what slurmd sees)
#   SLURM_REQUEUE_DELAY  seconds before a requeued job is eligible again (default 10; also the lifetime of
#                      job-step credentials, so keep it above a few seconds)
set -euo pipefail

TIMEOUT="${SLURM_UP_TIMEOUT:-90}"
NODE_MEM_MB="${SLURM_NODE_MEM_MB:-8000}"
REQUEUE_DELAY="${SLURM_REQUEUE_DELAY:-10}"
CONF=/etc/slurm/slurm.conf
HOST="$(hostname -s)"
NODES=(n1 n2)

log() { echo "[slurm_up] $*"; }
die() { echo "[slurm_up] ERROR: $*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "must run as root (it installs packages and starts system daemons)"

# --- 1. packages ---------------------------------------------------------------------------------
missing=()
for pkg in slurmctld slurmd slurm-client munge; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- 2. config -----------------------------------------------------------------------------------
new_conf="$(mktemp)"
trap 'rm -f "$new_conf"' EXIT
cat >"$new_conf" <<EOF
# Written by .ci/slurm_up.sh: a local two-node test cluster. Do not edit; rerun the script.
ClusterName=localcluster
SlurmctldHost=${HOST}
AuthType=auth/munge
AuthInfo=cred_expire=${REQUEUE_DELAY}
SlurmUser=slurm
StateSaveLocation=/var/spool/slurmctld
SlurmctldPidFile=/run/slurmctld.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdSpoolDir=/var/spool/slurmd-%n
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
NodeName=n[1-2] NodeHostname=${HOST} NodeAddr=127.0.0.1 Port=17001-17002 CPUs=1 RealMemory=${NODE_MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
conf_changed=0
if ! cmp -s "$new_conf" "$CONF"; then
  mkdir -p /etc/slurm
  install -m 0644 "$new_conf" "$CONF"
  conf_changed=1
  log "wrote $CONF"
fi

# --- 3. node names -------------------------------------------------------------------------------
if ! grep -qE '^127\.0\.0\.1([[:space:]].*)?[[:space:]]n1([[:space:]]|$)' /etc/hosts \
  || ! grep -qE '^127\.0\.0\.1([[:space:]].*)?[[:space:]]n2([[:space:]]|$)' /etc/hosts; then
  echo "127.0.0.1 n1 n2" >>/etc/hosts
  log "added n1 n2 to /etc/hosts"
fi

# --- 4. daemons ----------------------------------------------------------------------------------
# A daemon counts as running when its pid file names a live process.
running() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() {
  local pidfile="$1" pid
  running "$pidfile" || return 0
  pid="$(cat "$pidfile")"
  kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  die "process $pid from $pidfile did not stop"
}

if ((conf_changed)); then
  # Daemons started with an older config would disagree with the new one: restart them.
  for n in "${NODES[@]}"; do stop_pidfile "/run/slurmd-$n.pid"; done
  stop_pidfile /run/slurmctld.pid
fi

MUNGE_PID=/run/munge/munged.pid
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  # The package normally creates the key; recreate it if someone removed it.
  /usr/sbin/mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
if ! running "$MUNGE_PID"; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
fi
munge -n | unmunge >/dev/null || die "munge round trip failed; see /var/log/munge/munged.log"

mkdir -p /var/spool/slurmctld /var/log/slurm
chown slurm:slurm /var/spool/slurmctld /var/log/slurm
if ! running /run/slurmctld.pid; then
  log "starting slurmctld"
  /usr/sbin/slurmctld
fi
for n in "${NODES[@]}"; do
  if ! running "/run/slurmd-$n.pid"; then
    log "starting slurmd -N $n"
    /usr/sbin/slurmd -N "$n"
  fi
done

# --- 5. wait for the nodes -----------------------------------------------------------------------
deadline=$((SECONDS + TIMEOUT))
while :; do
  idle="$(sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l)"
  if [[ "$idle" == "${#NODES[@]}" ]]; then
    log "cluster up: $(sinfo -h -o '%P %a %D %t %N' | tr '\n' ' ')"
    exit 0
  fi
  if ((SECONDS >= deadline)); then
    sinfo -N -l >&2 || true
    die "only $idle of ${#NODES[@]} nodes idle after ${TIMEOUT}s; logs in /var/log/slurm/"
  fi
  sleep 1
done
