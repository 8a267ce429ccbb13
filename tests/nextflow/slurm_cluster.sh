#!/usr/bin/env bash
# Single-node SLURM test cluster on localhost (Debian slurm-wlm 22.05 + munge),
# for the Nextflow SLURM executor tests. Needs root and:
#   apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
#
#   bash tests/nextflow/slurm_cluster.sh start DIR   # last line: export SLURM_CONF=DIR/slurm.conf
#   bash tests/nextflow/slurm_cluster.sh stop  DIR
#
# Node "localhost" (slurmd -N localhost, so the machine's hostname does not matter),
# partitions cpu (default) and gpu, a fake GRES gpu:2 (no real GPU needed), no
# accounting DB; DIR/jobcomp.log gets one line per finished (or rejected) job.
# Env: SLURM_TEST_PORT (slurmctld port, slurmd uses +1; default 6817) to run two
# clusters side by side, SLURM_TEST_TIMEOUT (seconds to wait for the node, default 60).
set -euo pipefail

cmd=${1:?usage: $0 start|stop DIR}
dir=${2:?usage: $0 start|stop DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
export SLURM_CONF=$dir/slurm.conf
port=${SLURM_TEST_PORT:-6817}
timeout=${SLURM_TEST_TIMEOUT:-60}

# PID FILE names a live (not zombie, not recycled) process called NAME.
alive() {
  local pid stat
  pid=$(cat "$1" 2>/dev/null) && stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $stat == "$pid ($2) "[^Z]* ]]
}

die() {
  echo "slurm_cluster.sh: $*" >&2
  for f in "$dir"/log/*.log; do echo "---- $f"; tail -n 30 "$f" || true; done >&2
  exit 1
}

start_munge() {
  # Reuse any munged already answering on the default socket (system or another run).
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    install -d -o munge -g munge -m 0700 /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  fi
  # munged refuses root-owned keys/dirs when run as root; run it as its own user.
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  runuser -u munge -- munged
  for _ in $(seq 50); do
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
      cp /run/munge/munged.pid "$dir/munged.pid"   # marks "we started it" for stop
      return
    fi
    sleep 0.1
  done
  die "munged did not come up"
}

write_conf() {
  # Real CPUs/memory, but no socket/core/thread topology: with CR_CPU_Memory each
  # logical CPU is then one schedulable unit (no whole-core allocation on SMT hosts).
  local cpus mem
  cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  cat >"$dir/slurm.conf" <<EOF
ClusterName=virnucpro-test
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# cgroups are unavailable in containers/sandboxes: track processes by /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.log
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# Without a default, a job with no --mem takes the whole node and jobs serialise.
DefMemPerCPU=512
GresTypes=gpu
# A DOWN node (e.g. after an unclean stop) comes back as soon as slurmd registers.
ReturnToService=2
# Finished jobs stay in squeue this long (Nextflow polls squeue -t all).
MinJobAge=120
SlurmdTimeout=30
MessageTimeout=10
KillWait=5
InactiveLimit=0
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
EOF
  # Fake GPUs: slurmd 22.05 drops file-less gpu GRES ("Count=2" alone registers 0
  # GPUs and the node goes INVAL) and wants character devices, so point two paths at
  # /dev/null. Jobs with --gres=gpu:N get CUDA_VISIBLE_DEVICES=0[,1] as on a real node.
  ln -sfn /dev/null "$dir/fakegpu0"
  ln -sfn /dev/null "$dir/fakegpu1"
  echo "NodeName=localhost Name=gpu File=$dir/fakegpu[0-1]" >"$dir/gres.conf"
}

case $cmd in
start)
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  start_munge
  # Keep the existing config while the daemons run (idempotent start).
  if ! alive "$dir/slurmctld.pid" slurmctld && ! alive "$dir/slurmd.pid" slurmd; then
    # Another cluster on these ports would answer our sinfo and fake a success.
    for p in "$port" $((port + 1)); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        die "port $p in use (another cluster?); set SLURM_TEST_PORT"
      fi
    done
    write_conf
  fi
  alive "$dir/slurmctld.pid" slurmctld || slurmctld -f "$SLURM_CONF" || die "slurmctld failed"
  alive "$dir/slurmd.pid" slurmd || slurmd -f "$SLURM_CONF" -N localhost || die "slurmd failed"
  end=$((SECONDS + timeout)) t0=$SECONDS
  while :; do
    state=$(sinfo -h -N -n localhost -o %t 2>/dev/null | head -n1 || true)
    case $state in
      idle | mix | alloc)
        alive "$dir/slurmctld.pid" slurmctld && alive "$dir/slurmd.pid" slurmd && break ;;
      inval) why="node config rejected" ;;   # e.g. CPUs/memory/GRES mismatch: won't heal
      drain* | drng* | down*)                   # stale state from an earlier run
        scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
    esac
    ((SECONDS - t0 > 5)) && ! { alive "$dir/slurmctld.pid" slurmctld && alive "$dir/slurmd.pid" slurmd; } &&
      why="a daemon exited"
    ((SECONDS >= end)) && why="node not idle after ${timeout}s"
    [[ -z ${why:-} ]] || die "$why; sinfo: $(sinfo -h -N -o '%N %t %E' 2>&1 | head -n1)"
    sleep 1
  done
  echo "export SLURM_CONF=$SLURM_CONF"
  ;;
stop)
  # Cancel leftover jobs first: with proctrack/linuxproc their processes would
  # outlive slurmd.
  if alive "$dir/slurmctld.pid" slurmctld; then
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      # shellcheck disable=SC2086  # one job id per word
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 20); do
        [[ -z $(squeue -h -t R,CG -o %i 2>/dev/null) ]] && break
        sleep 0.5
      done
    fi
  fi
  for d in slurmd slurmctld munged; do
    pidf=$dir/$d.pid
    if alive "$pidf" "$d"; then
      pid=$(cat "$pidf")
      kill "$pid"
      for _ in $(seq 50); do alive "$pidf" "$d" || break; sleep 0.2; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidf"
  done
  ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
