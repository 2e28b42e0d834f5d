# bench/lib.sh — shell helpers shared by the benchmark scripts (bench/wireguard.sh,
# bench/ipsec.sh, bench/openvpn.sh, bench/all.sh). Source it after setting OUT_DIR, NS_A, NS_B,
# VETH_A, VETH_B.
#
# What it gives:
#   log/die, bench_init (root check, tools, OUT_DIR, the lock shared with the reference peer
#   benchmarks so that no two benchmarks overlap), start_bg/stop_pids (only processes started
#   here, by PID), netns_pair/netns_del (two namespaces joined by a veth, underlay
#   192.0.2.1/.2), cpu_ticks/peak_rss_kb over DAEMON_PIDS, median, measure_traffic: ping,
#   iperf3 TCP 1 and 4 streams, CPU seconds per GB, UDP flood, peak RSS, appended to
#   $OUT_DIR/results.txt as "impl key value" lines; and measure_bare_veth: the same over the
#   underlay veth with no tunnel (implementation name "bare-veth", accepted in IMPLS by every
#   script), the ceiling the tunnels are compared with.
# shellcheck shell=bash

DURATION=${DURATION:-10}
REPEAT=${REPEAT:-3}
PING_COUNT=${PING_COUNT:-20}
LOCK=${LOCK:-/tmp/peers-bench.lock}
LOCK_WAIT=${LOCK_WAIT:-3600}
# shellcheck disable=SC2034  # BIN and LAST are for the scripts that source this file
BIN=${POLYTUN_BIN_DIR:-$PWD/target/release}
CLK_TCK=$(getconf CLK_TCK)

log() { echo "[bench $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# bench_init TOOL...: root, the tools, OUT_DIR, then the lock (fd 9; children get 9>&-).
# With BENCH_LOCK_HELD=1 (set by bench/all.sh, which runs the other scripts one after another
# under one lock) and fd 9 inherited open on $LOCK, the caller's lock is used as it is: flock on
# the same open file description succeeds at once, and a new open of $LOCK would wait for it.
bench_init() {
  local t
  [[ $EUID -eq 0 ]] || die "must run as root: sudo $0"
  for t in ip iperf3 ping python3 flock timeout "$@"; do
    command -v "$t" >/dev/null || die "missing $t: sudo scripts/install-test-deps.sh"
  done
  mkdir -p "$OUT_DIR"
  : >"$OUT_DIR/results.txt"
  if [[ ${BENCH_LOCK_HELD:-} == 1 && "$(readlink -f "/proc/$$/fd/9" 2>/dev/null)" == "$(readlink -f "$LOCK")" ]] &&
    flock -n 9; then
    return 0
  fi
  exec 9>>"$LOCK"
  if ! flock -n 9; then
    log "waiting for $LOCK (another benchmark is running; up to ${LOCK_WAIT}s)"
    flock -w "$LOCK_WAIT" 9 || die "could not get $LOCK"
  fi
}

PIDS=()
DAEMON_PIDS=()
stop_pids() {
  local pid
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
  DAEMON_PIDS=()
}

# start_bg NS LOGFILE CMD...: runs CMD in NS in the background; its PID in LAST.
start_bg() {
  local ns=$1 logf=$2; shift 2
  ip netns exec "$ns" "$@" >"$logf" 2>&1 9>&- </dev/null &
  PIDS+=($!)
  # shellcheck disable=SC2034
  LAST=$!
}

netns_del() {
  ip netns del "$NS_A" 2>/dev/null || true
  ip netns del "$NS_B" 2>/dev/null || true
}

# Two namespaces joined by a veth: underlay 192.0.2.1/24 (A) and 192.0.2.2/24 (B).
netns_pair() {
  netns_del
  ip netns add "$NS_A"; ip netns add "$NS_B"
  ip link add "$VETH_A" netns "$NS_A" type veth peer name "$VETH_B" netns "$NS_B"
  ip -n "$NS_A" link set lo up; ip -n "$NS_B" link set lo up
  ip -n "$NS_A" addr add 192.0.2.1/24 dev "$VETH_A"; ip -n "$NS_A" link set "$VETH_A" up
  ip -n "$NS_B" addr add 192.0.2.2/24 dev "$VETH_B"; ip -n "$NS_B" link set "$VETH_B" up
}

# CPU clock ticks (user + system) of DAEMON_PIDS, all their threads included.
cpu_ticks() {
  local pid total=0 f
  for pid in "${DAEMON_PIDS[@]}"; do
    f=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + f))
  done
  echo "$total"
}
# The largest peak RSS (VmHWM, kB) among DAEMON_PIDS.
peak_rss_kb() {
  local pid max=0 v
  for pid in "${DAEMON_PIDS[@]}"; do
    v=$(awk '/VmHWM/{print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    (( v > max )) && max=$v
  done
  echo "$max"
}

median() { python3 -c 'import sys,statistics as s; v=[float(x) for x in sys.argv[1:] if x!="nan"]; print("%.3f"%s.median(v) if v else "nan")' "$@"; }

result() { echo "$1 $2 $3" >>"$OUT_DIR/results.txt"; }

iperf_gbps() { python3 -c 'import json,sys
try: print("%.3f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9))
except Exception: print("nan")' "$1"; }
iperf_bytes() { python3 -c 'import json,sys
try: print(int(json.load(open(sys.argv[1]))["end"]["sum_received"]["bytes"]))
except Exception: print(0)' "$1"; }

# Counters that tell where a flood loses packets: UDP of both namespaces (/proc/net/snmp) and,
# when TUN_A/TUN_B name the tunnel devices, their tx (routed into the daemon) and rx counters.
drop_counters() {
  local s ns dev c
  for s in a b; do
    if [[ $s == a ]]; then ns=$NS_A dev=${TUN_A:-}; else ns=$NS_B dev=${TUN_B:-}; fi
    # shellcheck disable=SC2016  # awk's $0 and $i
    ip netns exec "$ns" awk -v s=$s '/^Udp:/ { if (!h) { split($0, k); h = 1 } else
      for (i = 2; i <= NF; i++) print s "_udp_" k[i], $i }' /proc/net/snmp
    [[ -n $dev ]] || continue
    for c in tx_packets tx_dropped rx_packets rx_dropped; do
      echo "${s}_tun_$c $(ip netns exec "$ns" cat "/sys/class/net/$dev/statistics/$c" 2>/dev/null || echo 0)"
    done
  done
}
drop_delta() {   # before after -> the counters that changed
  awk 'NR == FNR { a[$1] = $2; next } $2 - a[$1] { printf "%s=%d ", $1, $2 - a[$1] }' "$1" "$2"
}

# measure_footprint IMPL DST EXE PID: side B's daemon (PID, running EXE) was started under
# valgrind's lackey (FOOTPRINT=1 in the scripts that support it); A pings DST 40 times at 5/s,
# the daemons are stopped, and bench/footprint.py counts the distinct code and data lines that
# each ping's path through B touched: "footprint_*" results, the per-function list in
# OUT_DIR/IMPL-footprint.txt. Repeatable to a line or two, so it shows the few-microsecond
# changes to a cold turn (docs/fast-path.md, "What a cold turn waits on") that ping medians
# cannot separate.
measure_footprint() {
  local impl=$1 dst=$2 exe=$3 pid=$4 base
  command -v valgrind >/dev/null || die "missing valgrind: sudo apt-get install valgrind"
  base=$(awk -v e="$exe" '$6 == e && $3 == "00000000" { split($1, r, "-"); print r[1]; exit }' "/proc/$pid/maps")
  [[ -n $base ]] || die "footprint: $exe is not mapped in process $pid"
  ip netns exec "$NS_A" ping -c 10 -i 0.2 -q "$dst" >/dev/null 9>&- || true
  ip netns exec "$NS_A" ping -c 40 -i 0.2 -q "$dst" >/dev/null 9>&- || true
  stop_pids
  python3 bench/footprint.py "$OUT_DIR/$impl-lackey.log" "$exe" "$base" "$impl" \
    >>"$OUT_DIR/results.txt" 2>"$OUT_DIR/$impl-footprint.txt" || die "footprint: see $OUT_DIR/$impl-footprint.txt"
  head -25 "$OUT_DIR/$impl-footprint.txt" >&2
  rm -f "$OUT_DIR/$impl-lackey.log"
}

# measure_ping IMPL DST [SRC]: the median of PING_COUNT pings at 5/s after a warm-up, as ping_ms
# and as one more ping_round_ms (see ping_rounds_summary).
measure_ping() {
  local impl=$1 dst=$2 src=${3:-} out rtts m
  local pbind=(); [[ -n $src ]] && pbind=(-I "$src")
  ip netns exec "$NS_A" ping -c 3 -i 0.2 -q "${pbind[@]}" "$dst" >/dev/null 9>&- || true   # warm-up
  out=$(ip netns exec "$NS_A" ping -c "$PING_COUNT" -i 0.2 "${pbind[@]}" "$dst" 9>&- || true)
  rtts=$(sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' <<<"$out" | tr '\n' ' ')
  # shellcheck disable=SC2086
  m=$(median $rtts)
  result "$impl" ping_ms "$m"
  result "$impl" ping_round_ms "$m"
}

# ping_rounds_summary IMPL...: where a script pinged in several interleaved rounds (one tunnel
# after the other, round after round, so the machine's drift over minutes hits every
# implementation alike), ping_ms becomes the median of the rounds' medians; the rounds are logged.
ping_rounds_summary() {
  local impl rounds
  for impl in "$@"; do
    rounds=$(awk -v i="$impl" '$1 == i && $2 == "ping_round_ms" { print $3 }' "$OUT_DIR/results.txt" | tr '\n' ' ')
    [[ -n $rounds ]] || continue
    log "$impl ping rounds, medians ms: $rounds"
    # shellcheck disable=SC2086
    result "$impl" ping_ms "$(median $rounds)"
  done
}

# measure_traffic IMPL DST [SRC]: everything after the tunnel is up, from NS_A to DST in NS_B
# (iperf3 -s must run in NS_B). DAEMON_PIDS are the processes whose CPU and RSS count.
measure_traffic() {
  local impl=$1 dst=$2 src=${3:-} r v u t par ticks=0 bytes=0 t0
  local bind=(); [[ -n $src ]] && bind=(-B "$src")
  local pbind=(); [[ -n $src ]] && pbind=(-I "$src")
  measure_ping "$impl" "$dst" "$src"
  for t in tcp1 tcp4; do
    v=()
    par=1; [[ $t == tcp4 ]] && par=4
    for r in $(seq "$REPEAT"); do
      t0=$(cpu_ticks)
      ip netns exec "$NS_A" timeout $((DURATION + 30)) iperf3 -c "$dst" "${bind[@]}" -t "$DURATION" -P $par -J \
        >"$OUT_DIR/$impl-$t-$r.json" 9>&- </dev/null || true
      if [[ $t == tcp1 ]]; then
        ticks=$((ticks + $(cpu_ticks) - t0))
        bytes=$((bytes + $(iperf_bytes "$OUT_DIR/$impl-$t-$r.json")))
      fi
      v+=("$(iperf_gbps "$OUT_DIR/$impl-$t-$r.json")")
      log "$impl $t run $r: ${v[-1]} Gbit/s"
      [[ -n ${SETTLE:-} ]] && $SETTLE
      sleep 1
    done
    result "$impl" "${t}_gbps" "$(median "${v[@]}")"
  done
  # no daemon (bare-veth): no CPU or RSS of its own to count
  if (( ${#DAEMON_PIDS[@]} == 0 )); then
    result "$impl" cpu_s_per_gb nan
  else
    result "$impl" cpu_s_per_gb "$(python3 -c 'import sys; t,b,hz=map(float,sys.argv[1:]); print("%.3f" % ((t/hz)/(b/1e9)) if b else "nan")' "$ticks" "$bytes" "$CLK_TCK")"
  fi
  drop_counters >"$OUT_DIR/$impl-udp-counters.before"
  ip netns exec "$NS_A" timeout $((DURATION + 30)) iperf3 -c "$dst" "${bind[@]}" -u -b 0 -l 1380 -t "$DURATION" -J \
    >"$OUT_DIR/$impl-udp.json" 9>&- </dev/null || true
  drop_counters >"$OUT_DIR/$impl-udp-counters.after"
  log "$impl udp flood counter deltas: $(drop_delta "$OUT_DIR/$impl-udp-counters.before" "$OUT_DIR/$impl-udp-counters.after")"
  u=$(python3 -c 'import json,sys
try:
    e = json.load(open(sys.argv[1]))["end"]["sum"]
    print("%.1f" % ((e["packets"] - e["lost_packets"]) / e["seconds"] / 1000))
except Exception: print("nan")' "$OUT_DIR/$impl-udp.json")
  log "$impl udp flood: $u k datagrams/s delivered"
  result "$impl" udp_kpps "$u"
  [[ -n ${SETTLE:-} ]] && $SETTLE
  if (( ${#DAEMON_PIDS[@]} == 0 )); then
    result "$impl" rss_mb nan
  else
    result "$impl" rss_mb "$(python3 -c 'import sys; print("%.1f" % (int(sys.argv[1])/1024))' "$(peak_rss_kb)")"
  fi
  if ip netns exec "$NS_A" ping -c 3 -i 0.2 -q "${pbind[@]}" "$dst" >/dev/null 9>&-; then
    result "$impl" alive_after_flood 1
  else
    log "$impl: tunnel did not answer pings after the UDP flood"
    result "$impl" alive_after_flood 0
  fi
}

# measure_bare_veth: a fresh namespace pair and measure_traffic straight over the underlay veth
# (192.0.2.1 -> 192.0.2.2, MTU 1500, no tunnel, no daemon: CPU/GB and RSS are nan), recorded as
# implementation "bare-veth". Call it with no namespaces or processes of the caller's left;
# it leaves none either.
measure_bare_veth() {
  local TUN_A='' TUN_B='' SETTLE=''   # no tunnel devices to count; nothing to settle
  stop_pids
  netns_pair
  start_bg "$NS_B" "$OUT_DIR/bare-veth-iperf3-server.log" iperf3 -s -B 192.0.2.2
  sleep 0.5
  ip netns exec "$NS_A" ping -c1 -W1 -q 192.0.2.2 >/dev/null 2>&1 9>&- || die "bare-veth: the veth does not pass traffic"
  measure_traffic bare-veth 192.0.2.2
  stop_pids
  netns_del
}

# measure_turns IMPL DST PID_A PID_B: what the daemons' turns that start from idle cost (TURNS=1
# in the scripts that call it). `perf record` of scheduler, network and syscall tracepoints on the
# whole machine while A pings DST 60 times at 5/s; per ping: A's turn from the request reaching
# A's tunnel device (net_dev_queue) to A's datagram leaving A's veth, and B's from that datagram
# reaching B's veth to B's write of the request to its tunnel device, each cut at its wake-up,
# the end of epoll_wait, its first read and its send or write. Medians in µs as "turn_<name>"
# results; "user" parts are the daemon's own code between two syscalls. Works for any daemon
# that waits in epoll and reads and writes with plain syscalls (polytund, boringtun).
measure_turns() {
  local impl=$1 dst=$2 pa=$3 pb=$4 tids t filter
  command -v perf >/dev/null || die "missing perf: sudo apt-get install linux-perf"
  [[ -e /sys/kernel/tracing/events ]] || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
  [[ -e /sys/kernel/tracing/events/syscalls ]] || die "no syscall tracepoints (tracefs not mounted?)"
  tids=$(ls "/proc/$pa/task" "/proc/$pb/task" 2>/dev/null | grep -E '^[0-9]+$' | sort -u)
  [[ -n $tids ]] || die "measure_turns: no threads for pids $pa $pb"
  filter=$(for t in $tids; do printf 'common_pid == %s || ' "$t"; done); filter=${filter% || }
  local sc=() e
  for e in sys_exit_epoll_wait sys_exit_epoll_pwait sys_enter_read sys_exit_read sys_enter_recvmmsg \
    sys_exit_recvmmsg sys_enter_recvfrom sys_exit_recvfrom sys_enter_recvmsg sys_exit_recvmsg \
    sys_enter_write sys_enter_writev sys_enter_sendmsg sys_enter_sendto sys_enter_sendmmsg; do
    sc+=(-e "syscalls:$e" --filter "$filter")
  done
  ip netns exec "$NS_A" ping -c 5 -i 0.2 -q "$dst" >/dev/null 9>&- || true
  perf record -q -a -o "$OUT_DIR/$impl-turns.data" -e sched:sched_wakeup -e sched:sched_switch \
    -e net:net_dev_queue -e net:net_dev_xmit -e net:netif_receive_skb "${sc[@]}" -- \
    ip netns exec "$NS_A" ping -c 60 -i 0.2 -q "$dst" >/dev/null 2>&1 9>&- </dev/null || true
  perf script -i "$OUT_DIR/$impl-turns.data" -F pid,tid,cpu,time,event,trace >"$OUT_DIR/$impl-turns.txt" 2>/dev/null
  rm -f "$OUT_DIR/$impl-turns.data"
  python3 - "$OUT_DIR/$impl-turns.txt" "$impl" "$pa" "$pb" "$TUN_A" "$VETH_A" "$VETH_B" \
    >>"$OUT_DIR/results.txt" <<'PY'
import bisect, re, statistics, sys
path, impl, pa, pb, tun_a, veth_a, veth_b = sys.argv[1:]
line = re.compile(r"^\s*(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
ev = []
for l in open(path):
    m = line.match(l)
    if m:
        pid, tid, _, t, e, rest = m.groups()
        ev.append((float(t) * 1e6, int(pid), int(tid), e, rest))
tids = {side: {x[2] for x in ev if x[1] == int(p)} for side, p in (("a", pa), ("b", pb))}
kind = {"sys_exit_epoll_wait": "ew", "sys_exit_epoll_pwait": "ew",
        "sys_enter_read": "r0", "sys_enter_recvmmsg": "r0", "sys_enter_recvfrom": "r0", "sys_enter_recvmsg": "r0",
        "sys_exit_read": "r1", "sys_exit_recvmmsg": "r1", "sys_exit_recvfrom": "r1", "sys_exit_recvmsg": "r1",
        "sys_enter_write": "w", "sys_enter_writev": "w", "sys_enter_sendmsg": "w", "sys_enter_sendto": "w",
        "sys_enter_sendmmsg": "w"}
starts, last = [], -1e12
for t, _, _, e, rest in ev:
    if e == "net:net_dev_queue" and f"dev={tun_a} " in rest + " ":
        if t - last > 50000:
            starts.append(t)
        last = t
times = [x[0] for x in ev]
parts = {}
def add(k, v):
    parts.setdefault(k, []).append(v)
for s in starts:
    i = bisect.bisect_left(times, s)
    d, th = {}, {"a": None, "b": None}
    while i < len(ev) and ev[i][0] <= s + 1000:
        t, _, tid, e, rest = ev[i]
        i += 1
        if e == "net:net_dev_xmit" and f"dev={veth_a} " in rest + " " and "a.out" not in d:
            d["a.out"] = t
        elif e == "net:netif_receive_skb" and f"dev={veth_b} " in rest + " " and "a.out" in d and "b.in" not in d:
            d["b.in"] = t
        elif e == "sched:sched_wakeup":
            m = re.search(r"pid=(\d+)", rest)
            w = int(m.group(1)) if m else -1
            if th["a"] is None and w in tids["a"]:
                th["a"], d["a.wake"] = w, t
            elif th["b"] is None and "b.in" in d and w in tids["b"]:
                th["b"], d["b.wake"] = w, t
        elif e == "sched:sched_switch":
            for side in "ab":
                if th[side] is not None and re.search(rf"next_pid={th[side]}\b", rest) and side + ".run" not in d:
                    d[side + ".run"] = t
        elif e.startswith("syscalls:"):
            for side in "ab":
                k = kind.get(e.split(":")[1])
                if k and tid == th[side] and side + ".run" in d and side + "." + k not in d:
                    if k in ("r0", "r1", "w") and side + ".ew" not in d:
                        continue
                    if k == "r1" and side + ".r0" not in d:
                        continue
                    d[side + "." + k] = t
    cuts = [("a_wake", "start", "a.wake"), ("a_sched", "a.wake", "a.run"), ("a_epoll", "a.run", "a.ew"),
            ("a_user_to_read", "a.ew", "a.r0"), ("a_read", "a.r0", "a.r1"), ("a_user_seal", "a.r1", "a.w"),
            ("a_send", "a.w", "a.out"), ("a_turn", "start", "a.out"),
            ("b_rx_to_wake", "b.in", "b.wake"), ("b_sched", "b.wake", "b.run"), ("b_epoll", "b.run", "b.ew"),
            ("b_user_to_recv", "b.ew", "b.r0"), ("b_recv", "b.r0", "b.r1"), ("b_user_open", "b.r1", "b.w"),
            ("b_turn", "b.in", "b.w")]
    d["start"] = s
    for name, x, y in cuts:
        if x in d and y in d:
            add(name, d[y] - d[x])
for name, v in parts.items():
    if len(v) >= 10:
        print(impl, "turn_" + name, "%.1f" % statistics.median(v))
PY
}

# measure_hops IMPL DST: where a ping's round trip goes (HOPS=1 in the scripts that call it).
# tcpdump with nanosecond stamps on the four interfaces ($TUN_A, $VETH_A in A; $VETH_B, $TUN_B
# in B) while A pings DST 60 times at 10/s; per ping, the time from the request on A's tunnel
# interface to its datagram on A's veth (a_seal: A's turn), veth to veth (wire), B's veth to the
# request on B's tunnel interface (b_open), the kernel's echo reply (b_reply), then b_seal,
# wire, a_open, and the whole round trip: medians in µs as "hop_<name>" results. A turn that
# starts from an idle daemon (a_seal, b_open, a_open) includes its wake-up; b_seal does not
# (the reply is queued by the very TUN write that delivered the request).
measure_hops() {
  local impl=$1 dst=$2 pid pids=() x
  command -v tcpdump >/dev/null || die "missing tcpdump: sudo scripts/install-test-deps.sh"
  for x in "$NS_A:$TUN_A" "$NS_A:$VETH_A" "$NS_B:$VETH_B" "$NS_B:$TUN_B"; do
    ip netns exec "${x%%:*}" tcpdump -i "${x##*:}" -n -U --time-stamp-precision=nano \
      -w "$OUT_DIR/$impl-hops-${x##*:}.pcap" >/dev/null 2>&1 9>&- </dev/null &
    pids+=($!)
  done
  sleep 1
  ip netns exec "$NS_A" ping -c 60 -i 0.1 -q "$dst" >/dev/null 9>&- || true
  sleep 0.5
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  for x in "$TUN_A" "$VETH_A" "$VETH_B" "$TUN_B"; do
    tcpdump -n -tt --time-stamp-precision=nano -r "$OUT_DIR/$impl-hops-$x.pcap" \
      >"$OUT_DIR/$impl-hops-$x.txt" 2>/dev/null || true
  done
  python3 - "$OUT_DIR" "$impl" "$TUN_A" "$VETH_A" "$VETH_B" "$TUN_B" >>"$OUT_DIR/results.txt" <<'PY'
import re, statistics, sys
out, impl, ta, va, vb, tb = sys.argv[1:]
def lines(i):
    return [l.split() for l in open(f"{out}/{impl}-hops-{i}.txt")]
def echo(i, kind):   # icmp seq -> time
    d = {}
    for f in lines(i):
        m = re.search(r"echo %s, id \d+, seq (\d+)" % kind, " ".join(f))
        if m:
            d[int(m.group(1))] = float(f[0])
    return d
def udp(i, src):     # times of datagrams from the underlay address src
    return [float(f[0]) for f in lines(i) if len(f) > 3 and f[2].startswith(src + ".") and "UDP" in " ".join(f)]
def first_after(ts, t):
    return next((x for x in ts if x >= t), None)
rq_a, rq_b, rp_b, rp_a = echo(ta, "request"), echo(tb, "request"), echo(tb, "reply"), echo(ta, "reply")
a_out, b_in, b_out, a_in = udp(va, "192.0.2.1"), udp(vb, "192.0.2.1"), udp(vb, "192.0.2.2"), udp(va, "192.0.2.2")
names = ["a_seal", "wire1", "b_open", "b_reply", "b_seal", "wire2", "a_open", "rtt"]
hops = {k: [] for k in names}
for s, t1 in rq_a.items():
    if s not in rq_b or s not in rp_b or s not in rp_a:
        continue
    t2 = first_after(a_out, t1); t4, t5, t8 = rq_b[s], rp_b[s], rp_a[s]
    t3 = t2 and first_after(b_in, t2 - 1e-3); t6 = first_after(b_out, t5); t7 = t6 and first_after(a_in, t6 - 1e-3)
    if None in (t2, t3, t6, t7):
        continue
    for k, v in zip(names, [t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6, t8 - t7, t8 - t1]):
        hops[k].append(v * 1e6)
for k in names:
    if hops[k]:
        print(impl, "hop_" + k, "%.1f" % statistics.median(hops[k]))
PY
}
