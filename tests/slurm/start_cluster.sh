#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine, for tests/e2e/test_slurm.py:
# munged + slurmctld + slurmd, all on localhost, configured in $DSERVE_SLURM_DIR
# (default /tmp/dserve-slurm). Installs Debian's slurm-wlm and munge when they are missing
# (needs root and apt). Prints `export SLURM_CONF=...` as its last line; exits 3 when
# SLURM cannot be installed or started here (the test then skips, with the reason).
#
#   tests/slurm/start_cluster.sh          # start (idempotent: a running cluster is reused)
#   tests/slurm/start_cluster.sh stop     # stop the daemons this script started
set -euo pipefail

DIR=${DSERVE_SLURM_DIR:-/tmp/dserve-slurm}
CONF=$DIR/slurm.conf
CTLD_PORT=${DSERVE_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${DSERVE_SLURMD_PORT:-6818}
export SLURM_CONF=$CONF

die() { echo "start_cluster: $*" >&2; exit 3; }

stop() {
  for name in slurmd slurmctld munged; do
    pidfile=$DIR/$name.pid
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      kill "$(cat "$pidfile")" || true
    fi
    rm -f "$pidfile"
  done
}

if [ "${1:-}" = "stop" ]; then stop; exit 0; fi

# ---------------------------------------------------------------- install
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  [ "$(id -u)" = 0 ] || die "slurm-wlm is not installed and this is not root (apt-get install slurm-wlm munge)"
  command -v apt-get >/dev/null || die "slurm-wlm is not installed and there is no apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null 2>&1 || die "apt-get install slurm-wlm munge failed"
fi
[ "$(id -u)" = 0 ] || die "the test cluster's daemons need root"

mkdir -p "$DIR"/{state,spool,log}
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

# ---------------------------------------------------------------- munge
MUNGE_SOCKET=$DIR/munge.socket
if [ ! -f "$DIR/munge.key" ]; then
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile="$DIR/munge.key" >/dev/null 2>&1 || dd if=/dev/urandom of="$DIR/munge.key" bs=1 count=1024 status=none
  else
    dd if=/dev/urandom of="$DIR/munge.key" bs=1 count=1024 status=none
  fi
  chmod 600 "$DIR/munge.key"
fi
if ! { [ -f "$DIR/munged.pid" ] && kill -0 "$(cat "$DIR/munged.pid")" 2>/dev/null; }; then
  rm -f "$MUNGE_SOCKET"*
  mkdir -p "$DIR/munge-state"
  munged --force --key-file="$DIR/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge-state/munged.seed" \
    || die "munged did not start: $(tail -3 "$DIR/log/munged.log" 2>/dev/null)"
fi

# ---------------------------------------------------------------- slurm.conf
cat > "$CONF" <<EOF
# single-node test cluster written by tests/slurm/start_cluster.sh
ClusterName=dserve-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=30
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# ---------------------------------------------------------------- daemons
running() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }
if ! running slurmctld; then
  slurmctld -f "$CONF" || die "slurmctld did not start: $(tail -5 "$DIR/log/slurmctld.log" 2>/dev/null)"
fi
if ! running slurmd; then
  slurmd -f "$CONF" || die "slurmd did not start: $(tail -5 "$DIR/log/slurmd.log" 2>/dev/null)"
fi

# wait until the node is idle (or mixed/allocated from an earlier run)
for _ in $(seq 1 60); do
  state=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
  case "$state" in
    idle*|mixed*|allocated*) echo "start_cluster: node $HOST is $state" >&2; echo "export SLURM_CONF=$CONF"; exit 0 ;;
    down*|drain*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
die "node $HOST did not become idle (state: ${state:-unknown}); logs in $DIR/log"
