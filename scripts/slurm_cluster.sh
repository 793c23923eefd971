#!/usr/bin/env bash
# A single-node Slurm 22.05 cluster with accounting on this machine, for the Slurm tests (tests/test_slurm.py)
# and for trying hydra/launcher=slurm by hand. Needs root and apt (Debian/Ubuntu: slurm-wlm, slurmdbd, munge,
# mariadb-server); no systemd, no cgroups.
#
#   scripts/slurm_cluster.sh start    # install if needed, configure, start munged, MariaDB, slurmdbd, slurmctld, slurmd
#   scripts/slurm_cluster.sh status   # exit 0 when every daemon runs and the node takes jobs
#   scripts/slurm_cluster.sh stop     # cancel the cluster's jobs, stop the daemons by the PIDs `start` recorded
#
# State, logs and PID files live in $SEGBENCH_SLURM_DIR (default /var/tmp/segbench-slurm); the configs are
# written to /etc/slurm/, where sbatch, squeue, sacct (and so submitit) find them. What makes it work in a
# container without systemd or cgroups (Slurm 22.05 has no CgroupPlugin=disabled, so no cgroup.conf at all):
# proctrack/linuxproc, task/none, jobacct_gather/none; select/cons_tres with CR_Core (one job per core);
# EnforcePartLimits=ALL (sbatch refuses a request no node can meet instead of queueing it for ever);
# AuthInfo=cred_expire=10 (a requeued job can start again after 10 s, not Slurm's default 120 s); a
# scheduling pass every 5 s (so it does); MailProg=/bin/true; the node line from `slurmd -C`; munged runs
# as the munge user. Accounting (slurmdbd on MariaDB) lets submitit read the final state of a job that
# ended without writing its result (cancelled, out of time) from sacct; without it submitit waits for
# such a job for ever.
set -euo pipefail

STATE=${SEGBENCH_SLURM_DIR:-/var/tmp/segbench-slurm}
DB_PORT=${SEGBENCH_SLURM_DB_PORT:-3306}
CLUSTER=segbench
PARTITION=debug
CONF_DIR=/etc/slurm
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)   # start order; stop runs it backwards

say() { echo "slurm_cluster: $*"; }
die() { echo "slurm_cluster: error: $*" >&2; exit 1; }

pid_of() { cat "$STATE/pids/$1.pid" 2>/dev/null || true; }
alive() { local pid; pid=$(pid_of "$1"); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

# wait_for SECONDS WHAT COMMAND...: run COMMAND every 0.5 s until it succeeds
wait_for() {
  local seconds=$1 what=$2; shift 2
  local end=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "$what did not come up within ${seconds} s (logs: $STATE/log/)"
    sleep 0.5
  done
}

install_packages() {
  local missing=()
  for exe in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/slurmdbd /usr/sbin/munged /usr/sbin/mariadbd; do
    [ -x "$exe" ] || missing+=("$exe")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "${missing[*]} missing and no apt-get to install ${PACKAGES[*]}"
  say "installing ${PACKAGES[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # a fresh machine has no package lists: update once, then install
  if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >"$STATE/log/apt.log" 2>&1; then
    apt-get update -q >>"$STATE/log/apt.log" 2>&1 || die "apt-get update failed (see $STATE/log/apt.log)"
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$STATE/log/apt.log" 2>&1 \
      || die "apt-get install ${PACKAGES[*]} failed: $(tail -n 1 "$STATE/log/apt.log")"
  fi
}

write_configs() {
  local host node
  host=$(hostname -s)
  # e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
  node=$(slurmd -C | head -n 1)
  [[ $node == NodeName=* ]] || die "slurmd -C printed no node line: $node"
  mkdir -p "$CONF_DIR"
  cat >"$CONF_DIR/slurm.conf" <<EOF
# written by segbench's scripts/slurm_cluster.sh: a single-node test cluster
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
EnforcePartLimits=ALL
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
ReturnToService=2
KillWait=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/pids/slurmctld.pid
SlurmdPidFile=$STATE/pids/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$host
JobCompType=jobcomp/none
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$CONF_DIR/slurmdbd.conf" <<EOF
# written by segbench's scripts/slurm_cluster.sh
AuthType=auth/munge
DbdHost=$host
SlurmUser=root
PidFile=$STATE/pids/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=segbench
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$CONF_DIR/slurmdbd.conf"
  rm -f "$CONF_DIR/cgroup.conf"  # any cgroup.conf makes 22.05 load a cgroup plugin, which fails here
}

start_munged() {
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 2>/dev/null; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  touch "$STATE/log/munged.log" && chown munge:munge "$STATE/log/munged.log"
  runuser -u munge -- /usr/sbin/munged --force --pid-file=/run/munge/munged.pid --log-file="$STATE/log/munged.log"
  wait_for 10 munged test -s /run/munge/munged.pid
  cp /run/munge/munged.pid "$STATE/pids/munged.pid"
  wait_for 10 munged bash -c 'munge -n | unmunge'
}

start_mariadbd() {
  # mariadbd runs as the mysql user: its data, socket, PID file and log live in directories that user owns
  local datadir="$STATE/mysql" run="$STATE/mysqld"
  mkdir -p "$run" && chown mysql:mysql "$run"
  if [ ! -d "$datadir/mysql" ]; then
    mkdir -p "$datadir" && chown mysql:mysql "$datadir"
    mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db --auth-root-authentication-method=socket \
      >"$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $STATE/log/mariadb-install.log)"
  fi
  rm -f "$run/mariadbd.pid"
  /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$datadir" --socket="$run/mysql.sock" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --pid-file="$run/mariadbd.pid" --log-error="$run/mariadb.log" \
    >/dev/null 2>&1 </dev/null &
  wait_for 30 "MariaDB (log: $run/mariadb.log)" mariadb-admin --no-defaults --socket="$run/mysql.sock" ping
  cp "$run/mariadbd.pid" "$STATE/pids/mariadbd.pid"
  mariadb --no-defaults --socket="$run/mysql.sock" -e "
    CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'segbench';
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'segbench';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || die "could not create Slurm's accounting database"
}

start_slurm() {
  /usr/sbin/slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
  /usr/sbin/slurmctld
  wait_for 30 slurmctld scontrol ping
  /usr/sbin/slurmd
  # the node takes jobs once slurmd has registered (idle, or mixed/allocated when state was recovered)
  wait_for 30 "slurmd (node state)" bash -c "sinfo -h -p $PARTITION -o %t | grep -Eq '^(idle|mix|alloc)'"
}

cmd_status() {
  local ok=0
  for d in "${DAEMONS[@]}"; do
    if alive "$d"; then say "$d running (pid $(pid_of "$d"))"; else say "$d not running"; ok=1; fi
  done
  [ $ok -eq 0 ] && sinfo -h -o "partition %P: %D node(s) %t, %c CPUs, %m MB" 2>/dev/null | sed 's/^/slurm_cluster: /'
  return $ok
}

cmd_stop() {
  if alive slurmctld; then
    scancel --cluster="$CLUSTER" --user="$(id -un)" 2>/dev/null || true  # jobs first: their steps end with them
    sleep 1
  fi
  local i d pid
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    d=${DAEMONS[$i]}
    pid=$(pid_of "$d")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
      say "stopped $d (pid $pid)"
    fi
    rm -f "$STATE/pids/$d.pid"
  done
}

cmd_start() {
  [ "$(id -u)" -eq 0 ] || die "starting the test cluster needs root (it installs packages and runs the daemons)"
  if cmd_status >/dev/null 2>&1; then
    say "already running"; cmd_status; return 0
  fi
  cmd_stop >/dev/null 2>&1 || true  # a half-started cluster: stop what runs, start everything afresh
  local t0=$SECONDS
  mkdir -p "$STATE"/{pids,log,ctld,slurmd}
  chmod 755 "$STATE"
  install_packages
  local t1=$SECONDS
  write_configs
  start_munged
  start_mariadbd
  start_slurm
  say "started in $((SECONDS - t1)) s (install: $((t1 - t0)) s); state and logs in $STATE"
  cmd_status
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
