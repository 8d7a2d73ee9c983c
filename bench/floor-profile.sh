#!/usr/bin/env bash
# Profiles one node of ours and of the floor (perf record -g, 5 s) while rtbench sends to 1000
# receivers direct: overload (1000/s, 2-thread rtbench) and 50/s. D = a bench/floor.sh results
# folder (it holds the binaries); output in $D/profile/. Fixed port 3001 (and 9001): run it under
# the lock:  D=<folder> flock /tmp/rt-bench.lock bench/floor-profile.sh
# Then e.g.: perf report -i $D/profile/ours-over.perf.data --no-children --sort dso,sym -g none
# Over the same 5 s it counts the node's write syscalls and futex calls (perf stat, printed and in
# $D/profile/<sys>-<mode>.syscalls.txt): deliveries per write is what decides the cost under load.
set -euo pipefail
D=${D:?}; OUTP=$D/profile; mkdir -p $OUTP
ulimit -n "$(ulimit -Hn)"
BIND=127.0.1.1-127.0.20.1:256
for sys in ours floor; do
  if [[ $sys == ours ]]; then CMD="$D/realtime-server --bind 127.0.0.1 --admin-port 9001"; else CMD="$D/rt-floor"; fi
  (cd $OUTP && PORT=3001 NAME=n1 exec $CMD > $OUTP/$sys-node.log 2>&1) & NP=$!
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/3001) 2>/dev/null && break; sleep 0.1; done; sleep 1
  for mode in over rate50; do
    if [[ $mode == over ]]; then RATE=20@2,1000@6; TH=2; else RATE=20@2,50@8; TH=1; fi
    $D/rtbench --threads $TH fanout --url ws://127.0.0.1:3001 --bind-ips $BIND --clients 1000 --payload 100 --rate $RATE --drain-max-secs 30 --drain-idle-secs 5 --pids n1=$NP > $OUTP/$sys-$mode-rtbench.txt 2>&1 &
    RBP=$!
    sleep 4.5
    perf stat -e 'syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_futex' \
      -p $NP -o $OUTP/$sys-$mode.syscalls.txt -- sleep 5 > /dev/null 2>&1 & SP=$!
    perf record -F 999 -g -p $NP -o $OUTP/$sys-$mode.perf.data -- sleep 5 > /dev/null 2>&1
    wait $SP || true
    wait $RBP || true
    grep -E '^rate ' $OUTP/$sys-$mode-rtbench.txt
    echo "$sys $mode, syscalls in 5 s: $(grep -oE '[0-9,]+ +syscalls:sys_enter_[a-z]+' $OUTP/$sys-$mode.syscalls.txt | sed 's/syscalls:sys_enter_//' | tr -s ' ' | paste -sd ' ')"
  done
  kill $NP; wait $NP 2>/dev/null || true
done
