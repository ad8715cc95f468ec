#!/usr/bin/env bash
# A real single-node SLURM cluster (with accounting) on this machine, for tests and for trying
# the slurm launcher without a cluster. Debian/Ubuntu, run as root, no systemd needed.
#
#   slurm/cluster.sh install   apt-get install munge, slurmctld, slurmd, slurm-client, slurmdbd,
#                              mariadb-server (skipped when already installed)
#   slurm/cluster.sh start     write the configs, start munged, a private MariaDB, slurmdbd,
#                              slurmctld and slurmd; wait until a trivial job runs
#   slurm/cluster.sh stop      stop every daemon this script started (by its saved PID)
#   slurm/cluster.sh status    say which daemons are up (exit 0 only when all are)
#   slurm/cluster.sh env       print shell exports (e.g. `eval "$(slurm/cluster.sh env)"`)
#
# All state, spool, PID and log files live under one folder: $HARNESS_SLURM_DIR
# (default /tmp/harness-slurm). The configs go to /etc/slurm so that sbatch/sinfo/sacct need no
# SLURM_CONF. Why each setting is there: see slurm/README.md.
set -euo pipefail

BASE=${HARNESS_SLURM_DIR:-/tmp/harness-slurm}
CLUSTER=${HARNESS_SLURM_CLUSTER:-harness}
DB_PORT=${HARNESS_SLURM_DB_PORT:-3307}         # private MariaDB; not the system's 3306
DBD_PORT=${HARNESS_SLURM_DBD_PORT:-6819}
CTLD_PORT=${HARNESS_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${HARNESS_SLURM_SLURMD_PORT:-6818}
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)   # start order

say() { echo "cluster.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

need_root() { [[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts daemons)"; }

pid_of() { cat "$BASE/pid/$1.pid" 2>/dev/null || true; }

is_up() {  # a daemon is up when its saved PID is alive and still that daemon
    local pid; pid=$(pid_of "$1")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
    # after a reboot a stale PID file may name an unrelated process: check its name
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]]
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.2 s until COMMAND succeeds
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# ---------------------------------------------------------------- install
cmd_install() {
    need_root
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then say "already installed: ${PACKAGES[*]}"; return 0; fi
    say "installing ${missing[*]}"
    # Keep the packages' postinst scripts from starting the daemons (we start our own, with our
    # configs). A policy-rc.d that exits 101 forbids invoke-rc.d actions; remove ours afterwards,
    # but leave one that was already there (Docker images ship one).
    local own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    } || rc=$?
    ((own_policy)) && rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || die "apt-get failed (exit $rc)"
    say "installed"
}

# ---------------------------------------------------------------- configs
write_slurm_conf() {
    local host node_line cpus mem
    host=$(hostname -s)
    # `slurmd -C` prints the real hardware as a NodeName line; keep it but lower RealMemory to
    # ~90% so that the OS keeps headroom, and drop its UpTime line.
    node_line=$(slurmd -C | head -n1)
    [[ $node_line == NodeName=* ]] || die "unexpected 'slurmd -C' output: $node_line"
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
    node_line=$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 9 / 10))/" <<<"$node_line")
    cat >/etc/slurm/slurm.conf <<EOF
# Written by slurm/cluster.sh: a one-node cluster for tests. See slurm/README.md.
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/slurmd
SlurmctldPidFile=$BASE/pid/slurmctld.pid
SlurmdPidFile=$BASE/pid/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
# no systemd and no cgroup v2 delegation in a container: track processes by parent PID
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# CPUs are the consumable resource; memory is not, so jobs without --mem don't serialize
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# without this, job-array waves start ~3 s apart
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
ReturnToService=2
# accounting: submitit needs sacct to tell a job that died without a result
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
$node_line State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

write_slurmdbd_conf() {
    cat >/etc/slurm/slurmdbd.conf <<EOF
# Written by slurm/cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$BASE/pid/slurmdbd.pid
LogFile=$BASE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
    chmod 600 /etc/slurm/slurmdbd.conf   # slurmdbd refuses a config others can read
}

# ---------------------------------------------------------------- daemons
start_munged() {
    if is_up munged; then return 0; fi
    mkdir -p /etc/munge
    [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    rm -f "$BASE/pid/munged.pid"
    # munged runs as the munge user: its PID and log files go to folders that user owns
    chown munge:munge "$BASE/pid/munge" "$BASE/log/munge"
    runuser -u munge -- /usr/sbin/munged --pid-file="$BASE/pid/munge/munged.pid" \
        --log-file="$BASE/log/munge/munged.log" --force
    wait_for 10 munged test -s "$BASE/pid/munge/munged.pid" || die "munged did not start (see $BASE/log/munge/munged.log)"
    cp "$BASE/pid/munge/munged.pid" "$BASE/pid/munged.pid"
    wait_for 10 munge munge -n || die "munge does not answer (see $BASE/log/munge/munged.log)"
}

sql() { mariadb --no-defaults --protocol=socket --socket="$BASE/db/mysqld.sock" -uroot "$@"; }

start_mariadb() {
    if is_up mariadbd; then return 0; fi
    if [[ ! -d $BASE/db/data/mysql ]]; then
        say "initializing a private MariaDB in $BASE/db/data"
        mkdir -p "$BASE/db/data"
        mariadb-install-db --no-defaults --datadir="$BASE/db/data" --user=root \
            --auth-root-authentication-method=socket --skip-test-db >"$BASE/log/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed (see $BASE/log/mariadb-install.log)"
    fi
    # --no-defaults: ignore /etc/mysql (the system server's config); listen on 127.0.0.1 only
    setsid /usr/sbin/mariadbd --no-defaults --user=root --datadir="$BASE/db/data" \
        --socket="$BASE/db/mysqld.sock" --port="$DB_PORT" --bind-address=127.0.0.1 \
        --pid-file="$BASE/pid/mariadbd.pid" --log-error="$BASE/log/mariadb.log" \
        --innodb-buffer-pool-size=64M --skip-name-resolve </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadb sql -e "SELECT 1" || die "MariaDB did not start (see $BASE/log/mariadb.log)"
    sql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
            FLUSH PRIVILEGES;"
}

start_slurmdbd() {
    if is_up slurmdbd; then return 0; fi
    rm -f "$BASE/pid/slurmdbd.pid"
    /usr/sbin/slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster || die "slurmdbd does not answer (see $BASE/log/slurmdbd.log)"
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

start_slurmctld() {
    if is_up slurmctld; then return 0; fi
    rm -f "$BASE/pid/slurmctld.pid"
    /usr/sbin/slurmctld
    wait_for 30 slurmctld scontrol ping || die "slurmctld does not answer (see $BASE/log/slurmctld.log)"
}

start_slurmd() {
    if is_up slurmd; then return 0; fi
    rm -f "$BASE/pid/slurmd.pid"
    /usr/sbin/slurmd
    wait_for 30 slurmd test -s "$BASE/pid/slurmd.pid" || die "slurmd did not start (see $BASE/log/slurmd.log)"
}

node_idle() { sinfo -h -N -o '%T' | grep -qE '^idle'; }

cmd_start() {
    need_root
    command -v slurmctld >/dev/null || die "SLURM is not installed: run '$0 install' first"
    local t0=$SECONDS
    mkdir -p "$BASE"/{state,spool/slurmd,pid/munge,log/munge,db} /etc/slurm
    # A config change needs every daemon restarted; refuse to half-restart.
    if is_up slurmctld || is_up slurmd || is_up slurmdbd; then
        say "already running (use '$0 stop' first to restart)"
        cmd_status; return 0
    fi
    write_slurm_conf            # before slurmdbd: it reads slurm.conf too
    write_slurmdbd_conf
    start_munged
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    # a node that was down when slurmctld last saved state may come back "down": resume it
    wait_for 20 node sinfo -h -N -o '%T' || true
    if sinfo -h -N -o '%T' | grep -qE '^(down|drain)'; then
        scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true
    fi
    wait_for 30 "idle node" node_idle || die "the node is not idle: $(sinfo -N 2>&1)"
    local out
    out=$(timeout 60 srun -N1 -n1 -t 1 echo ok 2>&1) || die "a trivial srun failed: $out"
    [[ $out == ok ]] || die "a trivial srun printed '$out'"
    say "up in $((SECONDS - t0)) s: cluster '$CLUSTER', state in $BASE"
}

stop_group() {  # SIGTERM each named daemon by its saved PID, then wait (30 s) for all to exit
    local name pid pids=() names=()
    for name in "$@"; do
        if is_up "$name"; then
            pid=$(pid_of "$name")
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid"); names+=("$name")
        fi
    done
    local i deadline=$((SECONDS + 30))
    for i in "${!pids[@]}"; do
        while kill -0 "${pids[i]}" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        if kill -0 "${pids[i]}" 2>/dev/null; then
            say "${names[i]} (pid ${pids[i]}) ignored SIGTERM for 30 s: SIGKILL"
            kill -KILL "${pids[i]}" 2>/dev/null || true
        fi
        say "stopped ${names[i]} (pid ${pids[i]})"
    done
    for name in "$@"; do rm -f "$BASE/pid/$name.pid"; done
}

cmd_stop() {
    need_root
    # slurmctld and slurmd first (together), then the accounting daemon they report to, then
    # its database and munge (which every other daemon authenticates with)
    stop_group slurmctld slurmd
    stop_group slurmdbd
    stop_group mariadbd munged
    rm -f "$BASE/pid/munge/munged.pid"
}

cmd_status() {
    local all=0 d
    for d in "${DAEMONS[@]}"; do
        if is_up "$d"; then echo "$d: up (pid $(pid_of "$d"))"; else echo "$d: down"; all=1; fi
    done
    if ((all == 0)); then sinfo -N 2>/dev/null || true; fi
    return $all
}

cmd_env() {
    # Clients read /etc/slurm/slurm.conf; these are for scripts that want to know where things are.
    echo "export HARNESS_SLURM_DIR=$BASE"
    echo "export SLURM_CONF=/etc/slurm/slurm.conf"
}

case ${1:-} in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) echo "usage: $0 install|start|stop|status|env" >&2; exit 2 ;;
esac
