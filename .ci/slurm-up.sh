#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for CI and tests/test_slurm.py:
# installs Debian's slurm-wlm and munge when they are missing, writes a
# slurm.conf for this host, starts munged, slurmctld and slurmd, and waits
# until the node is idle. No containers, no cgroups (proctrack/linuxproc,
# task/none), so it starts in seconds. Re-running it against a cluster it
# already started only checks that cluster.
#
#   .ci/slurm-up.sh          # install if needed, start, wait for the node
#   .ci/slurm-up.sh --down   # stop the daemons this script started
#
# Exit 0: the cluster answers and its node takes jobs. Exit 77: Slurm cannot
# be installed here (not root, or missing with no apt-get, or apt-get failed);
# the test skips on this code alone. Anything else: broken.
#
# CI only: every daemon and every job runs as root (SlurmUser=root), which is
# fine on a throw-away CI machine and wrong anywhere else.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by zimage-batch-runner .ci/slurm-up.sh (single-node CI cluster)"
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
NODE=$(hostname -s)

say() { echo "slurm-up: $*" >&2; }

# pid from FILE if that process is alive and is NAME (a stale pid file after a
# crash or a reboot must not count as running)
alive() {
    local file=$1 name=$2 pid
    [[ -r $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]
}

stop() {
    local file=$1 name=$2
    if alive "$file" "$name"; then
        local pid
        pid=$(<"$file")
        kill "$pid"
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.1
        done
        say "$name (pid $pid) did not stop on SIGTERM"
        return 1
    fi
}

down() {
    stop "$SLURMD_PID" slurmd
    stop "$CTLD_PID" slurmctld
    stop "$MUNGE_PID" munged
}

install_slurm() {
    local missing=()
    for cmd in sbatch sinfo scontrol slurmctld slurmd munged; do
        command -v "$cmd" >/dev/null || PATH=$PATH:/usr/sbin command -v "$cmd" >/dev/null ||
            missing+=("$cmd")
    done
    if ((EUID != 0)); then
        # writing /etc/slurm and starting daemons need root as much as apt does
        say "installing and starting a CI Slurm cluster needs root${missing:+ (missing: ${missing[*]})}"
        exit 77
    fi
    ((${#missing[@]} == 0)) && return 0
    if ! command -v apt-get >/dev/null; then
        say "Slurm is not installed (${missing[*]} missing) and there is no apt-get to install it"
        exit 77
    fi
    say "installing slurm-wlm and munge (missing: ${missing[*]})"
    local log
    log=$(mktemp)
    if ! { apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } >"$log" 2>&1; then
        tail -n 5 "$log" >&2
        rm -f "$log"
        say "apt-get could not install slurm-wlm and munge"
        exit 77
    fi
    rm -f "$log"
}

# The node claims what this machine has: slurmd drains a node whose config
# promises more CPUs or memory than it finds. Memory is not a consumable
# resource (CR_Core), so RealMemory only has to cover one task's --mem.
write_conf() {
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) * 9 / 10 / 1024))
    cat <<EOF
$MARK
ClusterName=zimage-ci
SlurmctldHost=$NODE(127.0.0.1)
# root is acceptable only because this is a throw-away CI cluster
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
InactiveLimit=0
KillWait=10
# sbatch --wait polls after 2 s and multiplies its sleep by 4 (up to 32 s)
# while the sleep is under MinJobAge/2: with 300 (the default) a 10 s array
# is seen done after 42 s, with 4 every 2 s. A finished job is forgotten 4 s
# later, which a CI cluster without accounting can afford.
MinJobAge=4
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=ci Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

# prints "changed" when slurm.conf had to be (re)written
ensure_conf() {
    local want
    want=$(write_conf)
    if [[ -e $CONF ]] && ! grep -qxF "$MARK" "$CONF"; then
        say "$CONF exists and was not written by this script: refusing to replace it"
        exit 1
    fi
    if [[ ! -e $CONF ]] || [[ "$(<"$CONF")" != "$want" ]]; then
        mkdir -p "$(dirname "$CONF")"
        printf '%s\n' "$want" >"$CONF"
        echo changed
    fi
}

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    alive "$MUNGE_PID" munged || runuser -u munge -- /usr/sbin/munged 9>&-
    # a credential that round-trips is the proof munged serves requests
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    say "munged does not answer (munge -n | unmunge fails)"
    exit 1
}

show_logs() {
    for f in "$LOGS/slurmctld.log" "$LOGS/slurmd.log"; do
        [[ -r $f ]] && { say "last lines of $f:"; tail -n 15 "$f" >&2; }
    done
}

# wait until the node takes jobs; a node left down or drained by an earlier
# run (a crash, a config change) is resumed once
wait_idle() {
    local state resumed=0
    for _ in $(seq 300); do
        state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1 || true)
        case $state in
            idle | mixed | allocated | completing) return 0 ;;
            down* | drain* | fail*)
                if ((!resumed)); then
                    say "node $NODE is $state: resuming it"
                    scontrol update nodename="$NODE" state=resume || true
                    resumed=1
                fi
                ;;
        esac
        sleep 0.1
    done
    say "node $NODE is not idle after 30 s (state: ${state:-no answer})"
    sinfo -N -l >&2 || true
    show_logs
    exit 1
}

main() {
    if [[ ${1:-} == --down ]]; then
        down
        return
    fi
    install_slurm
    export PATH=$PATH:/usr/sbin

    # two test sessions (or CI and a developer) may start it at once
    # (the daemons are started with the lock's descriptor closed, or the first
    # one to inherit it would hold the lock for as long as it runs)
    exec 9>/run/zimage-slurm-up.lock
    flock 9

    local changed
    changed=$(ensure_conf)
    if [[ $changed == changed ]]; then
        # daemons still running with the previous config would disagree with it
        stop "$SLURMD_PID" slurmd
        stop "$CTLD_PID" slurmctld
    fi
    install -d -m 0755 "$STATE" "$SPOOL" "$LOGS"

    start_munge
    if ! alive "$CTLD_PID" slurmctld; then
        slurmctld 9>&- || { show_logs; exit 1; }
    fi
    if ! alive "$SLURMD_PID" slurmd; then
        slurmd 9>&- || { show_logs; exit 1; }
    fi
    wait_idle
    say "cluster up: node $NODE ($(sinfo -h -N -n "$NODE" -o '%c CPUs, %m MB, %T'))"
}

main "$@"
