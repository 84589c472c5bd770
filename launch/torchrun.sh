#!/usr/bin/env bash
# Launch the trainer (python -m vffn_pretrain.train) with torchrun on this node.
#
#   launch/torchrun.sh [HYDRA_OVERRIDE ...]          e.g.  launch/torchrun.sh model=tiny train.max_steps=20
#
# Every argument is passed through to the trainer as a Hydra override. Run it once per node: on one
# machine directly, on a cluster once per node (launch/slurm/pretrain.sbatch does that with srun).
#
# Rendezvous (which ranks find each other). Defaults come from SLURM when running under srun:
#   NNODES          number of nodes                         default $SLURM_NNODES, else 1
#   NODE_RANK       this node's index, 0..NNODES-1          default $SLURM_NODEID, else 0
#   NPROC_PER_NODE  worker processes (one per GPU)          default: visible GPUs (nvidia-smi -L,
#                                                           or CUDA_VISIBLE_DEVICES), else 1 on CPU
#   MASTER_ADDR     address of node 0                       default 127.0.0.1
#   MASTER_PORT     TCP port on node 0                      default 29500
#   RDZV_ENDPOINT   host:port of a c10d rendezvous. When set, nodes join dynamically (NODE_RANK and
#                   MASTER_* are not used); all nodes must use the same RDZV_ID.
#   RDZV_ID         rendezvous id                           default $SLURM_JOB_ID, else "vffn"
#   RDZV_TIMEOUT    seconds the nodes wait for each other (node 0 for the others to join, the others to
#                   reach node 0) before torchrun gives up with a non-zero exit; default 600. Once the
#                   workers run, the trainer's own parallel.init_timeout_s bounds process-group set-up.
# With NNODES=1 and neither RDZV_ENDPOINT nor MASTER_PORT set, torchrun runs --standalone (a
# private rendezvous on a free port), so several single-node runs can share a machine.
#
# Process environment. Each default below is applied only when the variable is unset:
#   OMP_NUM_THREADS=<CPUs / NPROC_PER_NODE>   CPU threads per worker for intra-op parallelism; torchrun
#                   would otherwise force 1, which starves the data loader and CPU-side work.
#   CUDA_DEVICE_MAX_CONNECTIONS=1   one hardware work queue per GPU, so kernels launch in issue order;
#                   megatron-core requires it to overlap tensor/sequence-parallel communication with
#                   compute (and checks it when those overlaps are enabled).
#   TORCH_NCCL_ASYNC_ERROR_HANDLING=1   when a collective fails or times out, tear the process down
#                   instead of hanging forever (torch's own default in recent versions; set here so
#                   older torch behaves the same).
#   NCCL_DEBUG=WARN   NCCL prints errors and warnings only (INFO to debug topology/transport issues).
#   PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True   token-sparse recursion gives every layer and
#                   micro-batch different row counts; growable segments keep the caching allocator from
#                   fragmenting over a long run.
#   PYTHONUNBUFFERED=1   log lines reach the job log immediately, not when a buffer fills.
#   PYTHONPATH gets this checkout prepended, so the trainer runs without `pip install`.
# Site-specific, never set here (set them in your environment when your fabric needs them):
#   NCCL_SOCKET_IFNAME (which NIC bootstraps NCCL), NCCL_IB_HCA / NCCL_IB_TIMEOUT (InfiniBand),
#   NCCL_NVLS_ENABLE (NVLink SHARP), TORCH_NCCL_BLOCKING_WAIT, CUDA_VISIBLE_DEVICES.
#
# Launcher knobs:
#   PYTHON            interpreter                         default python
#   TRAIN_MODULE      module to run                       default vffn_pretrain.train
#   SHUTDOWN_TIMEOUT  seconds workers get to save a checkpoint after SIGTERM/SIGUSR1 before
#                     torchrun kills them                 default 300
#
# Signals and exit code. SIGUSR1, SIGTERM and SIGINT sent to this script are forwarded to the worker
# processes (the trainer saves, then exits 3 to ask for a requeue). torchrun itself is started with
# SIGUSR1 ignored, so a USR1 that hits the whole process group (SLURM signals job steps that way) does
# not kill torchrun; the trainer may see a signal twice and must treat repeats as one. torchrun turns
# any worker failure into exit code 1, so each worker's real exit code is recorded by
# launch/record_exit.py and this script exits 2 when any worker on this node exited 2 (bad config or
# data: never requeue those), else 3 when any exited 3, else 130 when any exited 130, else with torchrun's
# own exit code. torchrun runs through launch/torchrun_main.py, which reports the workers that exited non-zero
# in one line instead of torchrun's ChildFailedError traceback. The config itself is checked before torchrun
# starts (exit 2, one line, from node 0). Killed
# outright (kill -9), this script leaves nothing running: torchrun is started through launch/with_parent.py and
# gets SIGTERM when the script dies (it stops its workers, which save and exit), and a worker whose torchrun is
# killed outright saves and exits too (launch/record_exit.py).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

NNODES="${NNODES:-${SLURM_NNODES:-1}}"
NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-0}}"
RDZV_ID="${RDZV_ID:-${SLURM_JOB_ID:-vffn}}"
PYTHON="${PYTHON:-python}"
TRAIN_MODULE="${TRAIN_MODULE:-vffn_pretrain.train}"
SHUTDOWN_TIMEOUT="${SHUTDOWN_TIMEOUT:-300}"
RDZV_TIMEOUT="${RDZV_TIMEOUT:-600}"

count_gpus() {
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    local ids
    IFS=, read -r -a ids <<<"$CUDA_VISIBLE_DEVICES"
    echo "${#ids[@]}"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
  else
    echo 0
  fi
}
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  NPROC_PER_NODE="$(count_gpus)"
  ((NPROC_PER_NODE > 0)) || NPROC_PER_NODE=1
fi

cpus="$(nproc)"
threads=$((cpus / NPROC_PER_NODE))
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$((threads > 0 ? threads : 1))}"
export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

if [[ -n "${RDZV_ENDPOINT:-}" ]]; then
  rdzv=(--nnodes="$NNODES" --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="$RDZV_ID"
        --rdzv-conf="join_timeout=$RDZV_TIMEOUT")
elif [[ "$NNODES" == 1 && -z "${MASTER_PORT:-}" ]]; then
  rdzv=(--standalone)
else
  rdzv=(--nnodes="$NNODES" --node-rank="$NODE_RANK"
        --master-addr="${MASTER_ADDR:-127.0.0.1}" --master-port="${MASTER_PORT:-29500}"
        --rdzv-conf="timeout=$RDZV_TIMEOUT")
fi

# The config is checked once, here, before torchrun starts any worker: a bad one is one line (from node 0) and
# exit 2, instead of an error per worker and torchrun's report of failed workers (exit 1).
# A stop signal meanwhile is passed on to the check, which then exits 3 (SLURM's USR1: requeue) or 130.
if [[ "$NNODES" =~ ^[0-9]+$ ]]; then
  VFFN_CONFIG_CHECK=1 WORLD_SIZE=$((NNODES * NPROC_PER_NODE)) RANK=$((NODE_RANK * NPROC_PER_NODE)) \
    "$PYTHON" -m "$TRAIN_MODULE" "$@" &
  check_pid=$!
  for sig in USR1 TERM INT; do
    # shellcheck disable=SC2064  # the PID is meant to be expanded now
    trap "kill -$sig $check_pid 2>/dev/null || true" "$sig"
  done
  config_rc=0
  wait "$check_pid" || config_rc=$?
  while kill -0 "$check_pid" 2>/dev/null; do
    config_rc=0
    wait "$check_pid" || config_rc=$?
  done
  trap - USR1 TERM INT
  ((config_rc == 0)) || exit "$config_rc"
fi

# Worker start markers and exit codes land here (per global rank); see launch/record_exit.py.
VFFN_EXIT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/vffn-exit.XXXXXX")"
export VFFN_EXIT_DIR
trap 'rm -rf "$VFFN_EXIT_DIR"' EXIT

echo "[torchrun.sh] $(hostname -s) node ${NODE_RANK}/${NNODES}, ${NPROC_PER_NODE} proc/node, ${rdzv[*]}," \
  "OMP_NUM_THREADS=${OMP_NUM_THREADS}"

# Started with USR1 ignored (the disposition is inherited across exec), see the header; with_parent.py makes
# torchrun's own PID the one waited for below, with a SIGTERM coming when this script dies.
trap '' USR1
"$PYTHON" "$REPO_ROOT/launch/with_parent.py" "$$" "$PYTHON" "$REPO_ROOT/launch/torchrun_main.py" "${rdzv[@]}" \
  --nproc-per-node="$NPROC_PER_NODE" --max-restarts=0 --shutdown-timeout="$SHUTDOWN_TIMEOUT" \
  "$REPO_ROOT/launch/record_exit.py" "$TRAIN_MODULE" "$@" &
torchrun_pid=$!

got_signal=0
# shellcheck disable=SC2317  # called from the traps below
forward() {
  got_signal=1
  echo "[torchrun.sh] got SIG$1, forwarding it to the workers of torchrun (pid $torchrun_pid)" >&2
  pkill "-$1" -P "$torchrun_pid" || true
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward INT' INT

# `wait` returns early (status > 128) whenever a trapped signal arrives: keep waiting until
# torchrun has really exited.
rc=0
wait "$torchrun_pid" || rc=$?
while kill -0 "$torchrun_pid" 2>/dev/null; do
  rc=0
  wait "$torchrun_pid" || rc=$?
done

if grep -qx 2 "$VFFN_EXIT_DIR"/rank-* 2>/dev/null; then
  # Bad config or data (the trainer said which in one line): a requeue would fail the same way.
  exit 2
fi
if grep -qx 3 "$VFFN_EXIT_DIR"/rank-* 2>/dev/null; then
  echo "[torchrun.sh] a worker exited 3: requeue requested" >&2
  exit 3
fi
if grep -qx 130 "$VFFN_EXIT_DIR"/rank-* 2>/dev/null; then
  exit 130  # interrupted (Ctrl-C) before training began
fi
if ((rc != 0 && got_signal == 0)) && ! compgen -G "$VFFN_EXIT_DIR/started-*" >/dev/null; then
  # torchrun started no worker: the rendezvous failed (the nodes never found each other).
  if [[ "${rdzv[0]}" == --standalone ]]; then
    where="a standalone rendezvous on this node"
  elif [[ -n "${RDZV_ENDPOINT:-}" ]]; then
    where="the c10d rendezvous at $RDZV_ENDPOINT (id $RDZV_ID, $NNODES node(s))"
  else
    where="the rendezvous at ${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500} as node $NODE_RANK of $NNODES"
  fi
  echo "[torchrun.sh] ERROR: torchrun exited with $rc before starting any worker: $where failed or timed" \
    "out (RDZV_TIMEOUT=${RDZV_TIMEOUT}s). Check MASTER_ADDR/MASTER_PORT (or RDZV_ENDPOINT), that the" \
    "port is reachable from every node, and that all $NNODES node(s) were started." >&2
fi
exit "$rc"
