#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the Slurm launcher test. Needs root.
#   scripts/slurm_local.sh install   apt-get install slurm-wlm and munge (if missing)
#   scripts/slurm_local.sh start     start munged, slurmctld and slurmd; prints `export SLURM_CONF=...`
#   scripts/slurm_local.sh stop      stop the daemons this script started, by PID
# State, logs and PID files live in $SLURM_LOCAL_DIR (default /tmp/dcgan_xai_slurm).
set -euo pipefail
DIR=${SLURM_LOCAL_DIR:-/tmp/dcgan_xai_slurm}
CONF=$DIR/slurm.conf

install() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
}

start() {
  mkdir -p "$DIR"/{state,spool,log,munge}
  chown munge:munge "$DIR/munge" 2>/dev/null || true
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge
  munged --force --pid-file="$DIR/munged.pid" --socket=/run/munge/munge.socket.2
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  cat >"$CONF" <<CONF
ClusterName=dcgan-xai-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF=$CONF
  slurmctld -f "$CONF"
  slurmd -f "$CONF"
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "export SLURM_CONF=$CONF"
      return
    fi
    sleep 1
  done
  echo "slurm did not come up; logs in $DIR/log" >&2
  sinfo >&2 || true
  stop
  return 1
}

stop() {
  for name in slurmd slurmctld munged; do
    local pidfile=$DIR/$name.pid pid
    if [ -s "$pidfile" ]; then
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      rm -f "$pidfile"
    fi
  done
}

case ${1:-} in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
