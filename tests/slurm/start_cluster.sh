#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster on this machine for tests/test_slurm.py:
# munge, MariaDB + slurmdbd (accounting, so sacct works), slurmctld and slurmd, all from Debian packages.
#
#   sudo tests/slurm/start_cluster.sh      (as root; CI runs as root)
#
# Idempotent: a cluster that already answers (controller up, node usable, test account present) is left
# as it is; otherwise only what is missing is installed, configured or started. The configs are rendered
# from the *.in templates next to this script with this machine's hostname, CPU count and memory.
# It refuses to overwrite a slurm.conf/slurmdbd.conf it did not write (a real cluster's).
#
# Exit status: 0 = cluster ready; 77 = cannot install packages here (not root, or no apt-get): the test
# skips; anything else = a real failure (see the message and /var/log/slurm/*.log).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLUSTER="${REPURPOSE_SLURM_CLUSTER:-repurpose}"
PARTITION="${REPURPOSE_SLURM_PARTITION:-ci}"
ACCOUNT="${REPURPOSE_SLURM_ACCOUNT:-repurpose}"
JOB_USER="${REPURPOSE_SLURM_USER:-$(id -un)}"
MARK="Written by tests/slurm/start_cluster.sh"
SKIP=77
HOST="$(hostname -s)"
LOGDIR=/var/log/slurm

say() { echo "start_cluster: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq "$seconds"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    die "$what did not come up within ${seconds}s"
}

pid_alive() {  # pid_alive PIDFILE PROGRAM: the pid in PIDFILE is a running PROGRAM
    local pid
    [[ -s $1 ]] || return 1
    pid="$(cat "$1")"
    [[ -r /proc/$pid/comm ]] && [[ "$(cat "/proc/$pid/comm")" == "$2"* ]]
}

association_exists() {
    sacctmgr -n -P list association cluster="$CLUSTER" account="$ACCOUNT" user="$JOB_USER" format=user 2>/dev/null |
        grep -qx "$JOB_USER"
}

node_usable() {
    sinfo -h -N -p "$PARTITION" -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'
}

cluster_ready() {
    command -v scontrol >/dev/null 2>&1 && command -v sacctmgr >/dev/null 2>&1 || return 1
    if grep -qs "$MARK" /etc/slurm/slurm.conf; then  # our cluster: its daemons run on this machine
        for daemon in slurmdbd slurmctld slurmd; do
            pid_alive "/run/slurm/$daemon.pid" "$daemon" || return 1
        done
    fi
    scontrol ping 2>/dev/null | grep -q 'is UP' && node_usable && association_exists
}

if cluster_ready; then
    say "SLURM cluster already running (partition $PARTITION, account $ACCOUNT); nothing to do."
    exit 0
fi

# --- 1. packages -------------------------------------------------------------------------------------
packages=()
for pair in munged:munge slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client slurmdbd:slurmdbd \
    mariadbd:mariadb-server mariadb:mariadb-client; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "${pair%%:*}" >/dev/null 2>&1 ||
        packages+=("${pair#*:}")
done
export PATH="$PATH:/usr/sbin:/sbin"
if ((${#packages[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        say "SKIP: SLURM is not installed and this user is not root, so ${packages[*]} cannot be installed."
        exit $SKIP
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "SKIP: SLURM is not installed and there is no apt-get to install ${packages[*]}."
        exit $SKIP
    fi
    say "installing ${packages[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${packages[@]}" >&2
fi
[[ $(id -u) -eq 0 ]] || {
    say "SKIP: SLURM is installed but not running, and only root can start it."
    exit $SKIP
}

# --- 2. directories, munge key, configs ---------------------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge
install -d -o munge -g munge -m 0755 /run/munge /var/lib/munge /var/log/munge
install -d -o slurm -g slurm -m 0755 /run/slurm "$LOGDIR" /var/lib/slurm /var/lib/slurm/slurmctld
install -d -o root -g root -m 0755 /etc/slurm /var/lib/slurm/slurmd
install -d -o mysql -g mysql -m 0755 /run/mysqld
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

cpus="$(nproc)"
((cpus >= 2)) || cpus=2  # the rules ask for 2 threads; config_overrides lets slurmd accept this
mem_total_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
memory_mb=$((mem_total_mb * 3 / 4))  # leave a quarter to the OS, the daemons and the submitting Snakemake
if [[ -s /etc/slurm/slurmdbd.conf ]] && grep -q "$MARK" /etc/slurm/slurmdbd.conf; then
    db_password="$(sed -n 's/^StoragePass=//p' /etc/slurm/slurmdbd.conf)"
else
    db_password="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
fi

config_changed=0
render() {  # render TEMPLATE DESTINATION MODE OWNER
    local rendered
    rendered="$(mktemp)"
    sed -e "s/@HOST@/$HOST/g" -e "s/@CLUSTER@/$CLUSTER/g" -e "s/@PARTITION@/$PARTITION/g" \
        -e "s/@CPUS@/$cpus/g" -e "s/@MEMORY_MB@/$memory_mb/g" -e "s/@DB_PASSWORD@/$db_password/g" \
        "$HERE/$1" >"$rendered"
    if [[ -e $2 ]] && ! grep -q "$MARK" "$2"; then
        rm -f "$rendered"
        die "$2 exists and was not written by this script (a real cluster?); refusing to overwrite it"
    fi
    if [[ -e $2 ]] && cmp -s "$rendered" "$2"; then
        rm -f "$rendered"
    else
        say "writing $2"
        install -m "$3" -o "${4%:*}" -g "${4#*:}" "$rendered" "$2"
        rm -f "$rendered"
        config_changed=1
    fi
}
render slurm.conf.in /etc/slurm/slurm.conf 0644 root:root
render cgroup.conf.in /etc/slurm/cgroup.conf 0644 root:root
render slurmdbd.conf.in /etc/slurm/slurmdbd.conf 0600 slurm:slurm

# --- 3. daemons ----------------------------------------------------------------------------------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
    wait_for 20 munged sh -c 'munge -n | unmunge'
fi

if ! mariadb-admin ping >/dev/null 2>&1; then
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        say "initialising the MariaDB data directory"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >&2
    fi
    say "starting MariaDB"
    setsid -f /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql >>"$LOGDIR/mariadb.log" 2>&1 </dev/null
    wait_for 60 MariaDB mariadb-admin ping
fi
mariadb <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$db_password';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$db_password';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

if ! pid_alive /run/slurm/slurmdbd.pid slurmdbd; then
    say "starting slurmdbd"
    slurmdbd
elif ((config_changed)); then
    say "restarting slurmdbd (configuration changed)"
    kill "$(cat /run/slurm/slurmdbd.pid)"
    sleep 2
    slurmdbd
fi
wait_for 60 slurmdbd sacctmgr -n list cluster

# The cluster, the test account and the job user's association, before slurmctld registers.
sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >&2
sacctmgr -n -P list account "$ACCOUNT" format=account | grep -qx "$ACCOUNT" ||
    sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="repurpose CI" organization=repurpose >&2
association_exists || sacctmgr -i add user "$JOB_USER" account="$ACCOUNT" cluster="$CLUSTER" >&2

if ! pid_alive /run/slurm/slurmctld.pid slurmctld; then
    say "starting slurmctld"
    slurmctld
elif ((config_changed)); then
    say "reconfiguring slurmctld"
    scontrol reconfigure
fi
wait_for 60 slurmctld sh -c 'scontrol ping | grep -q "is UP"'

if ! pid_alive /run/slurm/slurmd.pid slurmd; then
    say "starting slurmd"
    slurmd
fi
for _ in $(seq 60); do
    node_usable && break
    # A node that was down (e.g. after a crash of a previous test machine state) is put back in service.
    if sinfo -h -N -o '%T' 2>/dev/null | grep -Eq '^(down|drained|draining)'; then
        scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    fi
    sleep 1
done
node_usable || die "node $HOST did not become usable: $(sinfo -N -l 2>&1 | tail -n +2)"
cluster_ready || die "cluster is up but the association $JOB_USER/$ACCOUNT is missing"
say "SLURM cluster ready: $(sinfo -h -N -o '%N %P %T %c CPUs %m MB')"
