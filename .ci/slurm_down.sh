#!/usr/bin/env bash
# Stop the local test cluster started by .ci/slurm_up.sh: both slurmd, slurmctld and munged.
#
# Processes are found through their pid files only (never by name), so nothing else is touched.
# Idempotent: stopping a cluster that is not running succeeds.
#   --purge   also delete the controller's saved state and the spool/log directories, so the next
#             slurm_up.sh starts with an empty queue (the packages, slurm.conf and /etc/hosts stay).
set -euo pipefail

PURGE=0
case "${1:-}" in
  --purge) PURGE=1 ;;
  "") ;;
  *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

log() { echo "[slurm_down] $*"; }

# Ask the process in a pid file to stop, and wait (bounded) until it has.
stop_pidfile() {
  local name="$1" pidfile="$2" pid
  if [[ ! -s "$pidfile" ]] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    return 0
  fi
  pid="$(cat "$pidfile")"
  log "stopping $name (pid $pid)"
  kill "$pid"
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
    sleep 0.2
  done
  log "$name (pid $pid) ignored SIGTERM for 20 s; sending SIGKILL"
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

# Compute daemons first (they report to the controller), munge last (everyone authenticates with it).
stop_pidfile "slurmd n1" /run/slurmd-n1.pid
stop_pidfile "slurmd n2" /run/slurmd-n2.pid
stop_pidfile slurmctld /run/slurmctld.pid
stop_pidfile munged /run/munge/munged.pid

if ((PURGE)); then
  log "purging saved state"
  rm -rf /var/spool/slurmctld /var/spool/slurmd-n1 /var/spool/slurmd-n2 /var/log/slurm
fi
log "done"
