#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the tests of `--executor slurm` (`make slurm` runs
# `start`). As root, with Debian's slurmctld, slurmd, slurm-client, munge, slurmdbd and mariadb-server installed:
# slurmdbd (job accounting) is what lets submitit see a cancelled or killed task end (`sacct`).
#   scripts/slurm.sh start    write the configuration for this machine, start the daemons, wait until the node is idle
#   scripts/slurm.sh stop     cancel every job, stop the daemons, wait until they are gone
#   scripts/slurm.sh status   exit 0 where the node answers and is usable
set -euo pipefail

node=$(hostname -s)
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf

usable() { sinfo -h -n "$node" -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; }

wait_gone() {  # the pid files' processes (exited daemons linger a few seconds here)
  local i pid
  for i in $(seq 100); do
    local alive=0
    for pid in "$@"; do
      if [ -n "$pid" ] && [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then alive=1; fi
    done
    [ "$alive" = 0 ] && return 0
    sleep 0.2
  done
  echo "slurm.sh: daemons $* still alive after 20 s" >&2
  return 1
}

pid_of() { cat "$1" 2>/dev/null || true; }

start() {
  if usable; then echo "Slurm: node $node already up"; return 0; fi
  [ "$(id -u)" = 0 ] || { echo "slurm.sh: starting a Slurm cluster needs root" >&2; exit 2; }
  for tool in slurmctld slurmd slurmdbd munged mariadbd sinfo; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "slurm.sh: $tool missing: make slurm installs it" >&2; exit 2; }
  done
  if [ -e "$CONF" ] && ! grep -q "^# Written by scripts/slurm.sh" "$CONF"; then
    echo "slurm.sh: $CONF was not written by this script (a real cluster's?): not touching it; the cluster tests need a machine without one" >&2
    exit 2
  fi
  stop >/dev/null 2>&1 || true  # a half-started cluster from before
  local cpus sockets cores threads memory
  eval "$(slurmd -C | head -1 | tr ' ' '\n' | sed -n 's/^CPUs=/cpus=/p; s/^SocketsPerBoard=/sockets=/p; s/^CoresPerSocket=/cores=/p; s/^ThreadsPerCore=/threads=/p; s/^RealMemory=/memory=/p')"
  install -d -m 0755 /etc/slurm /var/log/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
  cat > "$CONF" <<EOF
# Written by scripts/slurm.sh for the tests: one node, this machine.
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=5
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus Boards=1 SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$DBD_CONF" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DBD_CONF"
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  install -d -o mysql -g root -m 0755 /run/mysqld
  setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid --skip-networking \
    --innodb-buffer-pool-size=64M </dev/null >>/var/log/slurm/mariadb.log 2>&1 &
  for i in $(seq 100); do [ -S /run/mysqld/mysqld.sock ] && break; sleep 0.2; done
  /usr/sbin/slurmdbd
  sleep 1
  /usr/sbin/slurmctld
  /usr/sbin/slurmd
  for i in $(seq 150); do
    if usable; then echo "Slurm: node $node up ($cpus CPUs, ${memory} MB), partition debug"; return 0; fi
    sleep 0.2
  done
  echo "slurm.sh: node $node did not become idle in 30 s; see /var/log/slurm/" >&2
  exit 1
}

stop() {
  scancel --full --quiet -u root 2>/dev/null || true
  local pids=("$(pid_of /run/slurmctld.pid)" "$(pid_of /run/slurmd.pid)" "$(pid_of /run/slurmdbd.pid)"
              "$(pid_of /run/mysqld/mysqld.pid)" "$(pid_of /run/munge/munged.pid)")
  scontrol shutdown 2>/dev/null || true
  [ -n "${pids[2]}" ] && kill "${pids[2]}" 2>/dev/null || true
  wait_gone "${pids[0]}" "${pids[1]}" "${pids[2]}" || true
  [ -n "${pids[3]}" ] && kill "${pids[3]}" 2>/dev/null || true
  [ -n "${pids[4]}" ] && kill "${pids[4]}" 2>/dev/null || true
  wait_gone "${pids[@]}"
  echo "Slurm: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) usable ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
