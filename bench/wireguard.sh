#!/usr/bin/env bash
# bench/wireguard.sh — polytun against wireguard-go and boringtun, side by side in ONE run.
#
# For each implementation, two network namespaces joined by a veth (underlay 192.0.2.1/.2), the
# same implementation on both sides, tunnel 198.51.100.1/.2, MTU 1420; then through the tunnel:
#   ping    20 pings (0.2 s apart) after a warm-up: median RTT
#   tcp1    iperf3 TCP, 1 stream, DURATION s   (median of REPEAT runs)
#   tcp4    iperf3 TCP, 4 streams, DURATION s  (median of REPEAT runs)
#   cpu     CPU seconds both daemons spent per GB moved during the tcp1 runs
#   udp     iperf3 UDP flood (1380-byte datagrams, unlimited rate), DURATION s: datagrams/s delivered
#   rss     peak RSS (VmHWM) of the daemons after all runs, the UDP flood included
# and a table with the ratios polytun/wireguard-go and polytun/boringtun.
# Issue 2's bar: polytun tcp1 >= 2x wireguard-go, polytun ping <= wireguard-go.
# Issue 5's bars are printed too (tcp1 >= 8x both peers, ping <= boringtun, RSS < 64 MiB).
#
# Usage: sudo bench/wireguard.sh            (after cargo build --release)
# Env: IMPLS="polytun wireguard-go boringtun" (also: polytun-wg), DURATION=10, REPEAT=3,
#      PING_COUNT=20, OUT_DIR=..., LOCK=/tmp/peers-bench.lock (shared with the reference peer
#      benchmarks so no two benchmarks ever overlap), LOCK_WAIT=3600, POLYTUN_BIN_DIR=...
# Only processes started here are killed (by PID); namespaces are deleted on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
IMPLS=${IMPLS:-"polytun wireguard-go boringtun"}
DURATION=${DURATION:-10}
REPEAT=${REPEAT:-3}
PING_COUNT=${PING_COUNT:-20}
BIN=${POLYTUN_BIN_DIR:-$PWD/target/release}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/polytun-bench.XXXXXX)}
LOCK=${LOCK:-/tmp/peers-bench.lock}
LOCK_WAIT=${LOCK_WAIT:-3600}
NS_A=ptb-a-$$ NS_B=ptb-b-$$ VETH_A=ptbva$$ VETH_B=ptbvb$$
WG_A=ptbwa$$ WG_B=ptbwb$$
PORT=51820 MTU=1420

log() { echo "[bench $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[[ $EUID -eq 0 ]] || die "must run as root: sudo $0"
for t in ip wg iperf3 ping python3 flock; do command -v $t >/dev/null || die "missing $t: sudo scripts/install-test-deps.sh"; done
mkdir -p "$OUT_DIR"

exec 9>>"$LOCK"
if ! flock -n 9; then
  log "waiting for $LOCK (another benchmark is running; up to ${LOCK_WAIT}s)"
  flock -w "$LOCK_WAIT" 9 || die "could not get $LOCK"
fi

PIDS=()
stop_pids() {
  local pid
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
teardown() {
  stop_pids
  ip netns del "$NS_A" 2>/dev/null || true
  ip netns del "$NS_B" 2>/dev/null || true
  rm -f "/var/run/wireguard/$WG_A.sock" "/var/run/wireguard/$WG_B.sock"
}
trap 'rc=$?; trap - EXIT; teardown; log "results in $OUT_DIR"; exit $rc' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_bg() {   # ns log cmd...
  local ns=$1 logf=$2; shift 2
  ip netns exec "$ns" "$@" >"$logf" 2>&1 9>&- </dev/null &
  PIDS+=($!)
  LAST=$!
}

KEYDIR=$OUT_DIR/keys; mkdir -p "$KEYDIR"; chmod 700 "$KEYDIR"
(umask 077; wg genkey >"$KEYDIR/a"; wg genkey >"$KEYDIR/b")
PUB_A=$(wg pubkey <"$KEYDIR/a"); PUB_B=$(wg pubkey <"$KEYDIR/b")

DAEMON_PIDS=()
setup_impl() {   # impl
  local impl=$1 side ns ifn ul ol key peer peer_ul peer_ol cmd
  teardown
  DAEMON_PIDS=()
  ip netns add "$NS_A"; ip netns add "$NS_B"
  ip link add "$VETH_A" netns "$NS_A" type veth peer name "$VETH_B" netns "$NS_B"
  ip -n "$NS_A" link set lo up; ip -n "$NS_B" link set lo up
  ip -n "$NS_A" addr add 192.0.2.1/24 dev "$VETH_A"; ip -n "$NS_A" link set "$VETH_A" up
  ip -n "$NS_B" addr add 192.0.2.2/24 dev "$VETH_B"; ip -n "$NS_B" link set "$VETH_B" up
  for side in a b; do
    if [[ $side == a ]]; then ns=$NS_A ifn=$WG_A ol=198.51.100.1 key=$KEYDIR/a peer=$PUB_B peer_ul=192.0.2.2 peer_ol=198.51.100.2
    else ns=$NS_B ifn=$WG_B ol=198.51.100.2 key=$KEYDIR/b peer=$PUB_A peer_ul=192.0.2.1 peer_ol=198.51.100.1; fi
    case $impl in
      polytun)
        [[ -x $BIN/polytund ]] || die "$BIN/polytund missing: cargo build --release"
        cat >"$OUT_DIR/$impl-$side.toml" <<TOML
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
        start_bg "$ns" "$OUT_DIR/$impl-$side.log" "$BIN/polytund" --config "$OUT_DIR/$impl-$side.toml"
        DAEMON_PIDS+=("$LAST")
        for _ in $(seq 100); do "$BIN/polytun" -i "$ifn" show >/dev/null 2>&1 && break; sleep 0.1; done
        "$BIN/polytun" -i "$ifn" show >/dev/null || die "polytund did not come up (see $OUT_DIR/$impl-$side.log)"
        continue ;;
      polytun-wg)   cmd=("$BIN/polytun-wg" -f "$ifn") ;;
      wireguard-go) cmd=("$(command -v wireguard-go)" -f "$ifn") ;;
      boringtun)    cmd=("$(command -v boringtun-cli)" -f --disable-drop-privileges --threads 4 "$ifn") ;;
      *) die "unknown implementation $impl" ;;
    esac
    [[ -x ${cmd[0]} ]] || die "$impl not installed (sudo scripts/install-test-deps.sh / cargo build --release)"
    start_bg "$ns" "$OUT_DIR/$impl-$side.log" "${cmd[@]}"
    DAEMON_PIDS+=("$LAST")
    for _ in $(seq 100); do [[ -S /var/run/wireguard/$ifn.sock ]] && break; sleep 0.1; done
    [[ -S /var/run/wireguard/$ifn.sock ]] || die "$impl: no UAPI socket"
    ip netns exec "$ns" wg set "$ifn" private-key "$key" listen-port $PORT \
      peer "$peer" endpoint "$peer_ul:$PORT" allowed-ips "$peer_ol/32"
    ip -n "$ns" addr add "$ol/24" dev "$ifn"
    ip -n "$ns" link set "$ifn" mtu $MTU up
  done
  start_bg "$NS_B" "$OUT_DIR/$impl-iperf3-server.log" iperf3 -s
  sleep 0.5
  for _ in $(seq 20); do ip netns exec "$NS_A" ping -c1 -W1 -q 198.51.100.2 >/dev/null 2>&1 && return 0; done
  die "$impl: tunnel does not pass traffic"
}

# CPU clock ticks (user + system) of the daemons, children's threads included.
cpu_ticks() {
  local pid total=0 f
  for pid in "${DAEMON_PIDS[@]}"; do
    f=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + f))
  done
  echo "$total"
}
peak_rss_kb() {
  local pid max=0 v
  for pid in "${DAEMON_PIDS[@]}"; do
    v=$(awk '/VmHWM/{print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    (( v > max )) && max=$v
  done
  echo "$max"
}
CLK_TCK=$(getconf CLK_TCK)

median() { python3 -c 'import sys,statistics as s; v=[float(x) for x in sys.argv[1:] if x!="nan"]; print("%.3f"%s.median(v) if v else "nan")' "$@"; }

measure() {   # impl
  local impl=$1 r out rtts v t
  setup_impl "$impl"
  out=$(ip netns exec "$NS_A" ping -c "$PING_COUNT" -i 0.2 198.51.100.2 9>&- || true)
  rtts=$(sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' <<<"$out" | tr '\n' ' ')
  # shellcheck disable=SC2086
  echo "$impl ping_ms $(median $rtts)" >>"$OUT_DIR/results.txt"
  local ticks=0 bytes=0 t0
  for t in tcp1 tcp4; do
    v=()
    for r in $(seq "$REPEAT"); do
      local par=1; [[ $t == tcp4 ]] && par=4
      t0=$(cpu_ticks)
      ip netns exec "$NS_A" timeout $((DURATION + 30)) iperf3 -c 198.51.100.2 -t "$DURATION" -P $par -J \
        >"$OUT_DIR/$impl-$t-$r.json" 9>&- </dev/null || true
      if [[ $t == tcp1 ]]; then
        ticks=$((ticks + $(cpu_ticks) - t0))
        bytes=$((bytes + $(python3 -c 'import json,sys
try: print(int(json.load(open(sys.argv[1]))["end"]["sum_received"]["bytes"]))
except Exception: print(0)' "$OUT_DIR/$impl-$t-$r.json")))
      fi
      v+=("$(python3 -c 'import json,sys
try: print("%.3f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9))
except Exception: print("nan")' "$OUT_DIR/$impl-$t-$r.json")")
      log "$impl $t run $r: ${v[-1]} Gbit/s"
      sleep 1
    done
    echo "$impl ${t}_gbps $(median "${v[@]}")" >>"$OUT_DIR/results.txt"
  done
  echo "$impl cpu_s_per_gb $(python3 -c 'import sys; t,b,hz=map(float,sys.argv[1:]); print("%.3f" % ((t/hz)/(b/1e9)) if b else "nan")' "$ticks" "$bytes" "$CLK_TCK")" >>"$OUT_DIR/results.txt"
  ip netns exec "$NS_A" timeout $((DURATION + 30)) iperf3 -c 198.51.100.2 -u -b 0 -l 1380 -t "$DURATION" -J \
    >"$OUT_DIR/$impl-udp.json" 9>&- </dev/null || true
  v=$(python3 -c 'import json,sys
try:
    e = json.load(open(sys.argv[1]))["end"]["sum"]
    print("%.1f" % ((e["packets"] - e["lost_packets"]) / e["seconds"] / 1000))
except Exception: print("nan")' "$OUT_DIR/$impl-udp.json")
  log "$impl udp flood: $v k datagrams/s delivered"
  echo "$impl udp_kpps $v" >>"$OUT_DIR/results.txt"
  echo "$impl rss_mb $(python3 -c 'import sys; print("%.1f" % (int(sys.argv[1])/1024))' "$(peak_rss_kb)")" >>"$OUT_DIR/results.txt"
  ip netns exec "$NS_A" ping -c 3 -i 0.2 -q 198.51.100.2 >/dev/null 9>&- || log "$impl: tunnel did not answer pings after the UDP flood"
  teardown
}

: >"$OUT_DIR/results.txt"
{
  echo "date=$(date -Is) kernel=$(uname -r) cpus=$(nproc) duration=${DURATION}s repeat=$REPEAT"
  command -v wireguard-go >/dev/null && echo "wireguard-go: $(wireguard-go --version 2>&1 | head -1)"
  command -v boringtun-cli >/dev/null && echo "boringtun: $(boringtun-cli --version 2>&1 | head -1)"
  if [[ -x $BIN/polytund ]]; then echo "polytund: $BIN/polytund"; fi
} | tee "$OUT_DIR/versions.txt" >&2
for impl in $IMPLS; do log "measuring $impl"; measure "$impl"; done

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
print("%-22s" % "" + "".join("%16s" % i for i in impls))
for k, name in keys:
    print("%-22s" % name + "".join("%16.3f" % res.get(i, {}).get(k, float("nan")) for i in impls))
me = next((i for i in impls if i.startswith("polytun")), None)
if me:
    print()
    for other in (i for i in impls if not i.startswith("polytun")):
        cells = []
        for k, name in keys:
            a, b = res.get(me, {}).get(k), res.get(other, {}).get(k)
            cells.append("%s %s" % (name.split(" Gbit")[0].split(" median")[0].split(" k ")[0].split(" (")[0], "%.2fx" % (a / b) if a and b else "n/a"))
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
PY
