#!/usr/bin/env bash
# polytun demo: builds polytun, then runs a WireGuard site-to-site tunnel between two network
# namespaces with the configs in configs/ (fixed DEMO keys), pings through it, moves data through
# it (a checksummed transfer, and iperf3 if installed) and prints `polytun show`.
#
#   netns polytun-demo-a                                netns polytun-demo-b
#   polytund  pt-demo-a 198.51.100.1                    polytund  pt-demo-b 198.51.100.2
#     LAN 203.0.113.1 (lo)                                LAN 203.0.113.129 (lo)
#        veth ptdemo-a 192.0.2.1/24  <===============>  veth ptdemo-b 192.0.2.2/24
#
# Usage: scripts/demo.sh        (builds as you, then re-runs itself with sudo for the namespaces)
# Cleans up (processes by PID, namespaces) on any exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
NS_A=polytun-demo-a NS_B=polytun-demo-b VETH_A=ptdemo-a VETH_B=ptdemo-b
BIN=${POLYTUN_BIN_DIR:-$ROOT/target/release}
LOGDIR=$(mktemp -d /tmp/polytun-demo.XXXXXX)

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

if [[ ${1:-} != --no-build ]]; then
  say "cargo build --release"
  cargo build --release --workspace
  cargo build --release -p polytun-e2e --bin pt-xfer
fi
for b in polytund polytun; do [[ -x $BIN/$b ]] || die "$BIN/$b missing: run cargo build --release"; done
if [[ $EUID -ne 0 ]]; then
  say "network namespaces need root: re-running with sudo"
  exec sudo -E env "PATH=$PATH" "$0" --no-build
fi

PIDS=()
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  ip netns del "$NS_A" 2>/dev/null || true
  ip netns del "$NS_B" 2>/dev/null || true
  if ((rc)); then
    echo "demo FAILED (exit $rc); daemon logs:" >&2
    tail -n 30 "$LOGDIR"/*.log >&2 || true
  fi
  echo "demo: cleaned up (logs in $LOGDIR)"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for ns in "$NS_A" "$NS_B"; do
  if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
    [[ -z $(ip netns pids "$ns") ]] || die "leftover netns $ns still has processes; stop them first"
    ip netns del "$ns"
  fi
done

say "two sites: network namespaces $NS_A and $NS_B joined by a veth"
ip netns add "$NS_A"; ip netns add "$NS_B"
ip link add "$VETH_A" netns "$NS_A" type veth peer name "$VETH_B" netns "$NS_B"
for side in "$NS_A $VETH_A 192.0.2.1 203.0.113.1" "$NS_B $VETH_B 192.0.2.2 203.0.113.129"; do
  set -- $side
  ip -n "$1" link set lo up
  ip -n "$1" addr add "$3/24" dev "$2"
  ip -n "$1" link set "$2" up
  ip -n "$1" addr add "$4/32" dev lo          # a host on the site's LAN
done

say "starting polytund on both sides (configs/wireguard-site-{a,b}.toml)"
ip netns exec "$NS_A" "$BIN/polytund" --config configs/wireguard-site-a.toml >"$LOGDIR/site-a.log" 2>&1 </dev/null &
PIDS+=($!)
ip netns exec "$NS_B" "$BIN/polytund" --config configs/wireguard-site-b.toml >"$LOGDIR/site-b.log" 2>&1 </dev/null &
PIDS+=($!)
for i in A B; do
  ifn=pt-demo-${i,,}
  for _ in $(seq 100); do
    "$BIN/polytun" -i "$ifn" show >/dev/null 2>&1 && break
    kill -0 "${PIDS[0]}" 2>/dev/null && kill -0 "${PIDS[1]}" 2>/dev/null || die "polytund exited early"
    sleep 0.1
  done
  "$BIN/polytun" -i "$ifn" show >/dev/null || die "polytund for site $i does not answer"
done

say "ping site B's tunnel address from site A (the first packets make the handshake)"
for _ in $(seq 20); do ip netns exec "$NS_A" ping -c1 -W1 -q 198.51.100.2 >/dev/null 2>&1 && break; done
ip netns exec "$NS_A" ping -c 5 -i 0.2 198.51.100.2

say "ping site B's LAN (203.0.113.129) from site A's LAN (203.0.113.1): routed by allowed_ips"
ip netns exec "$NS_A" ping -c 3 -i 0.2 -I 203.0.113.1 203.0.113.129

say "data transfer: 200 MB site A -> site B, sha256 checked on both ends"
XFER=$BIN/pt-xfer
if [[ -x $XFER ]]; then
  ip netns exec "$NS_B" "$XFER" serve 0.0.0.0:5201 60 >"$LOGDIR/xfer-serve.log" 2>&1 </dev/null &
  PIDS+=($!); SERVE=$!
  ip netns exec "$NS_A" "$XFER" send 198.51.100.2:5201 209715200 42 | sed 's/^/  sent:     /'
  wait "$SERVE" || die "transfer receiver failed"
  sed 's/^/  received: /' <(grep '^bytes=' "$LOGDIR/xfer-serve.log")
  [[ $(grep '^bytes=' "$LOGDIR/xfer-serve.log") == "bytes=209715200 "* ]] || die "transfer incomplete"
fi
if command -v iperf3 >/dev/null; then
  say "iperf3 through the tunnel, 3 seconds"
  ip netns exec "$NS_B" iperf3 -s -1 >"$LOGDIR/iperf3-server.log" 2>&1 </dev/null &
  PIDS+=($!)
  sleep 0.5
  ip netns exec "$NS_A" iperf3 -c 198.51.100.2 -t 3 | tail -n 4
fi

say "polytun show (site A)"
ip netns exec "$NS_A" "$BIN/polytun" -i pt-demo-a show
say "polytun show (site B)"
ip netns exec "$NS_B" "$BIN/polytun" -i pt-demo-b show

say "demo OK"
