#!/usr/bin/env bash
# A one-node SLURM on this machine (localhost, all its CPUs, no GPUs) for tests/test_slurm.py and for trying
# slurm/*.sh without a cluster. Idempotent: installs only what is missing, writes the config once, starts only
# the daemons that are not running. Needs root and Debian/Ubuntu apt. Timing seen on a 2-core Debian 12 VM:
# `apt-get install slurm-wlm munge` ~10 s after `apt-get update`; daemons up in ~2 s.
#   sudo scripts/setup_slurm.sh            # then: sinfo; sbatch slurm/pretrain.sh ...
#   SLURM_SETUP_SKIP_INSTALL=1 ...         # only configure and start (packages already there)
set -euo pipefail

if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
  echo "setup_slurm.sh: needs root and apt-get; skipping (tests/test_slurm.py will skip and say why)" >&2
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  if [[ "${SLURM_SETUP_SKIP_INSTALL:-0}" == 1 ]]; then echo "slurmctld/munged missing" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
CONF=/etc/slurm/slurm.conf
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/log/munge /var/lib/munge

if [[ ! -f "$CONF" ]] || ! grep -q "^NodeName=$HOST " "$CONF"; then
  # proctrack/linuxproc and task/none: no cgroups needed (containers rarely let slurmd manage them).
  cat > "$CONF" <<CONF
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
KillWait=30
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
fi

if [[ ! -s /etc/munge/munge.key ]]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key

pgrep -x munged >/dev/null || munged --force 2>/dev/null || runuser -u munge -- munged
# -c: forget jobs saved by an earlier boot (they died with it; kept, one would hold the node as "running")
pgrep -x slurmctld >/dev/null || slurmctld -c
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 30); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    sinfo
    exit 0
  fi
  sleep 1
done
echo "SLURM did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
sinfo >&2 || true
exit 1
