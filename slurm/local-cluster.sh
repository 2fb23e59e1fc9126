#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for zoo's tests and for
# trying zoo on a workstation: Debian's slurmctld, slurmd and munge.
#
#   slurm/local-cluster.sh start    # installs the packages if missing (needs root)
#   slurm/local-cluster.sh status
#   slurm/local-cluster.sh stop     # cancels jobs, waits for them, stops the daemons
#   export SLURM_CONF=$(slurm/local-cluster.sh conf)   # for sbatch, squeue, ...
#
# Everything lives under $ZOO_SLURM_DIR (default /tmp/zoo-slurm). Settings:
# ZOO_SLURM_MAX_ARRAY_SIZE (default 1001), ZOO_SLURM_CPUS (default: nproc).
# Only the daemons whose pid files this script wrote are ever stopped.
set -euo pipefail

DIR=${ZOO_SLURM_DIR:-/tmp/zoo-slurm}
CONF=$DIR/slurm.conf
MAX_ARRAY_SIZE=${ZOO_SLURM_MAX_ARRAY_SIZE:-1001}
CPUS=${ZOO_SLURM_CPUS:-$(nproc)}
export SLURM_CONF=$CONF

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null && return
    echo "installing slurmctld slurmd slurm-client munge" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
    mkdir -p "$DIR"/{state,spool,munge,log}
    chmod 755 "$DIR/munge"
    if [ ! -f "$DIR/munge.key" ]; then
        dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 status=none
    fi
    chmod 400 "$DIR/munge.key"
    local memory
    memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    cat >"$CONF" <<EOF
ClusterName=zoo-local
SlurmctldHost=localhost
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket.2,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=sched_interval=1
DependencyParameters=kill_invalid_depend
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
MinJobAge=3600
MaxArraySize=$MAX_ARRAY_SIZE
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    install_packages
    if alive "$DIR/slurmctld.pid"; then
        echo "already running ($DIR)" >&2
        return 0
    fi
    write_config
    munged --force --key-file="$DIR/munge.key" --socket="$DIR/munge/munge.socket.2" \
        --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed"
    slurmctld -f "$CONF"
    slurmd -f "$CONF" -N localhost
    for _ in $(seq 1 60); do
        if sinfo -h -o '%t' 2>/dev/null | grep -q idle; then
            echo "$CONF"
            return 0
        fi
        sleep 0.5
    done
    echo "the local cluster did not become idle; see $DIR/log" >&2
    return 1
}

stop() {
    if alive "$DIR/slurmctld.pid"; then
        scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 1 60); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    for daemon in slurmd slurmctld munged; do
        if alive "$DIR/$daemon.pid"; then
            kill "$(cat "$DIR/$daemon.pid")"
        fi
    done
    for daemon in slurmd slurmctld munged; do
        for _ in $(seq 1 20); do
            alive "$DIR/$daemon.pid" || break
            sleep 0.25
        done
        rm -f "$DIR/$daemon.pid"
    done
}

status() {
    if alive "$DIR/slurmctld.pid"; then
        sinfo
        squeue
    else
        echo "not running ($DIR)"
        return 3
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    conf) echo "$CONF" ;;
    *) echo "usage: $0 start|stop|status|conf" >&2; exit 2 ;;
esac
