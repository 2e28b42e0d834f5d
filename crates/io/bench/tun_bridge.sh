#!/bin/sh
# Compare TUN back ends: TCP (iperf3) between two namespaces through a userspace
# TUN<->TUN bridge (examples/tunbridge.rs). Run as root from the workspace root.
#   sh crates/io/bench/tun_bridge.sh [SECONDS]
set -eu
T=${1:-5}
cargo build -q --release -p polytun-io --example tunbridge
BIN=target/release/examples/tunbridge
A=pt-io-bench-$$-a; B=pt-io-bench-$$-b
cleanup() { if [ -n "${PID:-}" ]; then kill "$PID" 2>/dev/null || true; fi; ip netns del "$A" 2>/dev/null || true; ip netns del "$B" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
printf '| back end | 1 stream Gbit/s | 4 streams Gbit/s |\n|---|---|---|\n'
for mode in tuntap tunrs-plain tunrs-offload; do
  cleanup; PID=
  ip netns add "$A"; ip netns add "$B"
  ip -n "$A" link set lo up; ip -n "$B" link set lo up
  "$BIN" "$mode" "$A" "$B" 2>/dev/null & PID=$!
  sleep 1
  ip netns exec "$B" iperf3 -s -D -1 -B 198.51.100.2 >/dev/null
  sleep 0.3
  g1=$(ip netns exec "$A" iperf3 -c 198.51.100.2 -t "$T" -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
  ip netns exec "$B" iperf3 -s -D -1 -B 198.51.100.2 >/dev/null
  sleep 0.3
  g4=$(ip netns exec "$A" iperf3 -c 198.51.100.2 -t "$T" -P 4 -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
  printf '| %s | %s | %s |\n' "$mode" "$g1" "$g4"
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
done
