#!/usr/bin/env bash
# bench/wireguard.sh — polytun against wireguard-go and boringtun, side by side in ONE run.
#
# For each implementation, two network namespaces joined by a veth (underlay 192.0.2.1/.2), the
# same implementation on both sides, tunnel 198.51.100.1/.2, MTU 1420; then through the tunnel:
#   ping    20 pings (0.2 s apart) after a warm-up: median RTT; then PING_ROUNDS - 1 more such rounds,
#           every tunnel brought up in turn per round: the median of the rounds' medians
#   tcp1    iperf3 TCP, 1 stream, DURATION s   (median of REPEAT runs)
#   tcp4    iperf3 TCP, 4 streams, DURATION s  (median of REPEAT runs)
#   cpu     CPU seconds both daemons spent per GB moved during the tcp1 runs
#   udp     iperf3 UDP flood (1380-byte datagrams, unlimited rate), DURATION s: datagrams/s delivered
#   rss     peak RSS (VmHWM) of the daemons after all runs, the UDP flood included
# the same over the bare underlay veth with no tunnel ("bare-veth", bench/lib.sh), and a table
# with the ratios polytun/wireguard-go, polytun/boringtun and polytun/bare-veth.
# Issue 2's bar: polytun tcp1 >= 2x wireguard-go, polytun ping <= wireguard-go.
# Issue 5's bars are printed too (tcp1 >= 8x both peers and >= 30% of the bare veth, ping <=
# boringtun, RSS < 64 MiB). bench/all.sh runs this script for its WireGuard rows.
#
# Usage: sudo bench/wireguard.sh            (after cargo build --release)
# Env: IMPLS="bare-veth polytun wireguard-go boringtun" (also: polytun-wg; and A:B for a mixed pair,
#      A pinging B, e.g. "polytun:boringtun boringtun:polytun": see fast-path.md "Mixed pairs"),
#      DURATION=10, REPEAT=3,
#      PING_COUNT=20, PING_ROUNDS=5 (interleaved rounds of the ping measurement: ping_ms is the median
#      of their medians), FOOTPRINT=1 (instead of the traffic: what one ping's path through B
#      touches, B under valgrind's lackey: bench/lib.sh measure_footprint), HOPS=1 (also time each hop of a ping: bench/lib.sh measure_hops), TURNS=1 (also
#      time the daemons' turns that start from idle, syscall by syscall: bench/lib.sh measure_turns), OUT_DIR=..., LOCK=/tmp/peers-bench.lock (shared with the reference peer
#      benchmarks so no two benchmarks ever overlap), LOCK_WAIT=3600, POLYTUN_BIN_DIR=...
# Only processes started here are killed (by PID); namespaces are deleted on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
IMPLS=${IMPLS:-"bare-veth polytun wireguard-go boringtun"}
PING_ROUNDS=${PING_ROUNDS:-5}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/polytun-bench.XXXXXX)}
NS_A=ptb-a-$$ NS_B=ptb-b-$$ VETH_A=ptbva$$ VETH_B=ptbvb$$
WG_A=ptbwa$$ WG_B=ptbwb$$
TUN_A=$WG_A TUN_B=$WG_B
PORT=51820 MTU=1420
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_init wg

teardown() {
  stop_pids
  netns_del
  rm -f "/var/run/wireguard/$WG_A.sock" "/var/run/wireguard/$WG_B.sock"
}
# shellcheck disable=SC2154  # rc is assigned inside the trap string
trap 'rc=$?; trap - EXIT; teardown; log "results in $OUT_DIR"; exit $rc' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

KEYDIR=$OUT_DIR/keys; mkdir -p "$KEYDIR"; chmod 700 "$KEYDIR"
(umask 077; wg genkey >"$KEYDIR/a"; wg genkey >"$KEYDIR/b")
PUB_A=$(wg pubkey <"$KEYDIR/a"); PUB_B=$(wg pubkey <"$KEYDIR/b")

DAEMON_PIDS=()
setup_impl() {   # impl, or A:B for a mixed pair (A pings, B answers)
  local impl side ns ifn ol key peer peer_ul peer_ol cmd wrap tries=100
  teardown
  netns_pair
  for side in a b; do
    if [[ $side == a ]]; then ns=$NS_A ifn=$WG_A ol=198.51.100.1 key=$KEYDIR/a peer=$PUB_B peer_ul=192.0.2.2 peer_ol=198.51.100.2 impl=${1%%:*}
    else ns=$NS_B ifn=$WG_B ol=198.51.100.2 key=$KEYDIR/b peer=$PUB_A peer_ul=192.0.2.1 peer_ol=198.51.100.1 impl=${1##*:}; fi
    wrap=()
    if [[ ${FOOTPRINT:-0} == 1 && $side == b ]]; then   # B under lackey: ~100x slower to start
      wrap=(valgrind --tool=lackey --trace-mem=yes --trace-syscalls=yes "--log-file=$OUT_DIR/$1-lackey.log")
      tries=1200
    fi
    case $impl in
      polytun)
        [[ -x $BIN/polytund ]] || die "$BIN/polytund missing: cargo build --release"
        cat >"$OUT_DIR/$1-$side.toml" <<TOML
[interface]
name = "$ifn"
address = ["$ol/24"]
mtu = $MTU

[[tunnel]]
name = "wg"
protocol = "wireguard"
listen_port = $PORT
private_key_file = "$key"

[[tunnel.peer]]
public_key = "$peer"
endpoint = "$peer_ul:$PORT"
allowed_ips = ["$peer_ol/32"]
TOML
        start_bg "$ns" "$OUT_DIR/$1-$side.log" "${wrap[@]}" "$BIN/polytund" --config "$OUT_DIR/$1-$side.toml"
        DAEMON_PIDS+=("$LAST")
        for _ in $(seq $tries); do "$BIN/polytun" -i "$ifn" show >/dev/null 2>&1 && break; sleep 0.1; done
        "$BIN/polytun" -i "$ifn" show >/dev/null || die "polytund did not come up (see $OUT_DIR/$1-$side.log)"
        continue ;;
      polytun-wg)   cmd=("$BIN/polytun-wg" -f "$ifn") ;;
      wireguard-go) cmd=("$(command -v wireguard-go)" -f "$ifn") ;;
      boringtun)    cmd=("$(command -v boringtun-cli)" -f --disable-drop-privileges --threads 4 "$ifn") ;;
      *) die "unknown implementation $impl" ;;
    esac
    [[ -x ${cmd[0]} ]] || die "$impl not installed (sudo scripts/install-test-deps.sh / cargo build --release)"
    start_bg "$ns" "$OUT_DIR/$1-$side.log" "${wrap[@]}" "${cmd[@]}"
    DAEMON_PIDS+=("$LAST")
    for _ in $(seq $tries); do [[ -S /var/run/wireguard/$ifn.sock ]] && break; sleep 0.1; done
    [[ -S /var/run/wireguard/$ifn.sock ]] || die "$impl: no UAPI socket"
    ip netns exec "$ns" wg set "$ifn" private-key "$key" listen-port $PORT \
      peer "$peer" endpoint "$peer_ul:$PORT" allowed-ips "$peer_ol/32"
    ip -n "$ns" addr add "$ol/24" dev "$ifn"
    ip -n "$ns" link set "$ifn" mtu $MTU up
  done
  start_bg "$NS_B" "$OUT_DIR/$1-iperf3-server.log" iperf3 -s
  sleep 0.5
  for _ in $(seq $((tries / 5))); do ip netns exec "$NS_A" ping -c1 -W1 -q 198.51.100.2 >/dev/null 2>&1 && return 0; done
  die "$1: tunnel does not pass traffic"
}

measure() {   # impl
  if [[ ${FOOTPRINT:-0} == 1 ]]; then
    [[ $1 == bare-veth ]] && return
    setup_impl "$1"
    local exe
    case ${1##*:} in   # B's
      polytun) exe=$BIN/polytund ;; polytun-wg) exe=$BIN/polytun-wg ;;
      wireguard-go) exe=$(command -v wireguard-go) ;; boringtun) exe=$(command -v boringtun-cli) ;;
    esac
    measure_footprint "$1" 198.51.100.2 "$(readlink -f "$exe")" "${DAEMON_PIDS[1]}"
    teardown
    return
  fi
  if [[ $1 == bare-veth ]]; then teardown; measure_bare_veth; return; fi
  setup_impl "$1"
  [[ ${HOPS:-0} == 1 ]] && measure_hops "$1" 198.51.100.2
  [[ ${TURNS:-0} == 1 ]] && measure_turns "$1" 198.51.100.2 "${DAEMON_PIDS[0]}" "${DAEMON_PIDS[1]}"
  measure_traffic "$1" 198.51.100.2
  teardown
}

{
  echo "date=$(date -Is) kernel=$(uname -r) cpus=$(nproc) duration=${DURATION}s repeat=$REPEAT"
  command -v wireguard-go >/dev/null && echo "wireguard-go: $(wireguard-go --version 2>&1 | head -1)"
  command -v boringtun-cli >/dev/null && echo "boringtun: $(boringtun-cli --version 2>&1 | head -1)"
  if [[ -x $BIN/polytund ]]; then echo "polytund: $BIN/polytund"; fi
} | tee "$OUT_DIR/versions.txt" >&2
for impl in $IMPLS; do log "measuring $impl"; measure "$impl"; done
if [[ ${FOOTPRINT:-0} == 1 ]]; then
  python3 - "$OUT_DIR/results.txt" "$IMPLS" <<'PY'
import sys
res = {}
for line in open(sys.argv[1]):
    impl, key, val = line.split()
    res.setdefault(impl, {})[key] = float(val)
impls = [i for i in sys.argv[2].split() if "footprint_instr" in res.get(i, {})]
print()
print("B's path of one ping (request received -> reply sent), median of 25 pings (valgrind lackey)")
print("%-12s" % "" + "".join("%14s" % i for i in impls))
for k in ["instr", "code_lines", "code_pages", "data_lines", "data_pages"]:
    print("%-12s" % k + "".join("%14.0f" % res[i]["footprint_" + k] for i in impls))
PY
  exit 0
fi
# The ping bar compares medians a few hundredths of a millisecond apart, and on this shared machine
# a tunnel's round trip drifts by more than their difference over the minutes between two
# implementations' turns. So ping again, PING_ROUNDS rounds in all, each round bringing every
# tunnel up in turn; ping_ms is the median of the rounds' medians.
for r in $(seq 2 "$PING_ROUNDS"); do
  for impl in $IMPLS; do
    [[ $impl == bare-veth ]] && continue
    log "ping round $r: $impl"
    setup_impl "$impl"
    measure_ping "$impl" 198.51.100.2
    teardown
  done
done
# shellcheck disable=SC2086
ping_rounds_summary $IMPLS

python3 - "$OUT_DIR/results.txt" "$IMPLS" <<'PY'
import sys
res = {}
for line in open(sys.argv[1]):
    impl, key, val = line.split()
    res.setdefault(impl, {})[key] = float(val)
impls = sys.argv[2].split()
keys = [("tcp1_gbps", "TCP 1 stream Gbit/s"), ("tcp4_gbps", "TCP 4 streams Gbit/s"), ("ping_ms", "ping median ms"),
        ("udp_kpps", "UDP k datagrams/s"), ("cpu_s_per_gb", "CPU s per GB (tcp1)"), ("rss_mb", "peak RSS MB")]
print()
w = max([16] + [len(i) + 2 for i in impls])
print("%-22s" % "" + "".join("%*s" % (w, i) for i in impls))
for k, name in keys:
    print("%-22s" % name + "".join("%*.3f" % (w, res.get(i, {}).get(k, float("nan"))) for i in impls))
# ratios and bars between whole pairs only (a mixed pair A:B is shown, not compared)
me = next((i for i in impls if i.startswith("polytun") and ":" not in i), None)
if me:
    print()
    for other in (i for i in impls if not i.startswith("polytun") and ":" not in i):
        cells = []
        for k, name in keys:
            a, b = res.get(me, {}).get(k), res.get(other, {}).get(k)
            ok = a and b and a == a and b == b   # neither missing, zero nor nan
            cells.append("%s %s" % (name.split(" Gbit")[0].split(" median")[0].split(" k ")[0].split(" (")[0], "%.2fx" % (a / b) if ok else "n/a"))
        print("%s/%s: %s" % (me, other, ", ".join(cells)))
    w = res.get("wireguard-go", {}); p = res.get(me, {})
    if w and p:
        ok1 = p.get("tcp1_gbps", 0) >= 2 * w.get("tcp1_gbps", 1e9)
        ok2 = p.get("ping_ms", 1e9) <= w.get("ping_ms", 0)
        print("issue-2 bar: tcp1 >= 2x wireguard-go: %s; ping <= wireguard-go: %s" % ("PASS" if ok1 else "FAIL", "PASS" if ok2 else "FAIL"))
    bt = res.get("boringtun", {})
    if w and bt and p:
        t1 = p.get("tcp1_gbps", 0)
        print("issue-5 bars: tcp1 >= 8x wireguard-go: %s; tcp1 >= 8x boringtun: %s; ping <= boringtun: %s; RSS < 64 MiB: %s" % (
            "PASS" if t1 >= 8 * w.get("tcp1_gbps", 1e9) else "FAIL",
            "PASS" if t1 >= 8 * bt.get("tcp1_gbps", 1e9) else "FAIL",
            "PASS" if p.get("ping_ms", 1e9) <= bt.get("ping_ms", 0) else "FAIL",
            "PASS" if p.get("rss_mb", 1e9) < 64 else "FAIL"))
    bare = res.get("bare-veth", {}).get("tcp1_gbps")
    if p and bare:
        t1 = p.get("tcp1_gbps", 0)
        print("issue-5 bar: tcp1 >= 30%% of the bare veth: %s (%.1f%% of %.3f Gbit/s)" % (
            "PASS" if t1 >= 0.3 * bare else "FAIL", 100 * t1 / bare, bare))
PY
if [[ ${TURNS:-0} == 1 ]]; then
  python3 - "$OUT_DIR/results.txt" "$IMPLS" <<'PY'
import sys
res = {}
for line in open(sys.argv[1]):
    impl, key, val = line.split()
    res.setdefault(impl, {})[key] = float(val)
impls = [i for i in sys.argv[2].split() if any(k.startswith("turn_") for k in res.get(i, {}))]
cuts = ["a_wake", "a_sched", "a_epoll", "a_user_to_read", "a_read", "a_user_seal", "a_send", "a_turn",
        "b_rx_to_wake", "b_sched", "b_epoll", "b_user_to_recv", "b_recv", "b_user_open", "b_turn"]
print()
print("turns from idle, median µs (perf tracepoints; a_*: A's outbound turn, b_*: B's inbound turn)")
print("%-16s" % "" + "".join("%10s" % i for i in impls))
for c in cuts:
    print("%-16s" % c + "".join("%10.1f" % res[i].get("turn_" + c, float("nan")) for i in impls))
PY
fi
if [[ ${HOPS:-0} == 1 ]]; then
  python3 - "$OUT_DIR/results.txt" "$IMPLS" <<'PY'
import sys
res = {}
for line in open(sys.argv[1]):
    impl, key, val = line.split()
    res.setdefault(impl, {})[key] = float(val)
impls = [i for i in sys.argv[2].split() if "hop_rtt" in res.get(i, {})]
hops = ["a_seal", "wire1", "b_open", "b_reply", "b_seal", "wire2", "a_open", "rtt"]
print()
print("ping hops, median µs (tcpdump on both tunnel interfaces and both veth ends)")
w = max([14] + [len(i) + 1 for i in impls])
print("%-*s" % (w, "") + "".join("%9s" % h for h in hops))
for i in impls:
    print("%-*s" % (w, i) + "".join("%9.0f" % res[i].get("hop_" + h, float("nan")) for h in hops))
PY
fi
