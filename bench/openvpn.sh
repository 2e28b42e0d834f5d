#!/usr/bin/env bash
# bench/openvpn.sh — polytun ↔ polytun against openvpn 2.6 ↔ openvpn 2.6, side by side in ONE run.
#
# For each implementation and transport (UDP, TCP), two network namespaces joined by a veth
# (underlay 192.0.2.1/.2), a TLS server (polytund `mode = "server"` / `openvpn --server`,
# topology subnet 198.51.100.0/24: server .1, client .2) and a client of the same
# implementation, ECDSA P-256 certificates, tls-crypt, data cipher AES-256-GCM only; then, for
# each direction in DIRS (s2c: the server's side sends to the client, c2s: the client sends):
#   ping    PING_COUNT pings (0.2 s apart) after a warm-up: median RTT
#   tcp1    iperf3 TCP, 1 stream, DURATION s   (median of REPEAT runs)
#   tcp4    iperf3 TCP, 4 streams, DURATION s  (median of REPEAT runs)
#   cpu     CPU seconds both daemons spent per GB moved during the tcp1 runs
#   udp     iperf3 UDP flood (1380-byte datagrams, unlimited rate), DURATION s: datagrams/s delivered
#   rss     peak RSS (VmHWM) of the larger daemon after all runs, the UDP flood included
# and the ratios polytun/openvpn with issue 4's bar: polytun TCP 1 stream >= 2x openvpn's,
# over UDP and over TCP (each direction printed). IMPLS may also name "bare-veth": the same
# traffic over the underlay veth with no tunnel (bench/lib.sh), measured once, not per
# transport and direction. bench/all.sh runs this script (PROTOS=udp DIRS=s2c) for its rows.
#
# Usage: sudo bench/openvpn.sh            (after cargo build --release)
# Env: IMPLS="polytun openvpn" (also bare-veth, and the mixed pairs SERVER+CLIENT: "polytun+openvpn" is a
#      polytund server with an openvpn client, "openvpn+polytun" the other way round), PROTOS="udp tcp", DIRS="s2c c2s", DURATION=10, REPEAT=3,
#      PING_COUNT=20, OUT_DIR=..., LOCK=/tmp/peers-bench.lock (shared with the other
#      benchmarks), LOCK_WAIT=3600, POLYTUN_BIN_DIR=..., CIPHER=AES-256-GCM
# Only processes started here are killed (by PID); namespaces are deleted on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
IMPLS=${IMPLS:-"polytun openvpn"}
PROTOS=${PROTOS:-"udp tcp"}
DIRS=${DIRS:-"s2c c2s"}
CIPHER=${CIPHER:-AES-256-GCM}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/polytun-bench-openvpn.XXXXXX)}
NS_A=ptbo-a-$$ NS_B=ptbo-b-$$ VETH_A=ptboa$$ VETH_B=ptbob$$
PT_A=ptbopa$$ PT_B=ptbopb$$
SRV_TUN=198.51.100.1 CLI_TUN=198.51.100.2
PORT=1194
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_init openvpn openssl

teardown() {
  stop_pids
  netns_del
  rm -f "/run/polytun/$PT_A.sock" "/run/polytun/$PT_B.sock"
}
# shellcheck disable=SC2154  # rc is assigned inside the trap string
trap 'rc=$?; trap - EXIT; teardown; log "results in $OUT_DIR"; exit $rc' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ PKI (as tests/src/openvpn.rs)
PKI=$OUT_DIR/pki
make_pki() {
  local n eku ec=(-algorithm EC -pkeyopt ec_paramgen_curve:P-256)
  mkdir -p "$PKI"; chmod 700 "$PKI"
  (
    cd "$PKI"
    openssl genpkey "${ec[@]}" -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -subj /CN=ptb-ca -days 2 -out ca.crt \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    for n in server client; do
      [[ $n == server ]] && eku=serverAuth || eku=clientAuth
      openssl genpkey "${ec[@]}" -out $n.key 2>/dev/null
      openssl req -new -key $n.key -subj "/CN=$n" -out $n.csr
      printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n' "$eku" >$n.ext
      openssl x509 -req -in $n.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile $n.ext -out $n.crt 2>/dev/null
    done
    openvpn --genkey secret ta.key >/dev/null
  ) || die "could not make the PKI"
}

# ------------------------------------------------------------------ polytun
polytun_server_conf() {   # ifname listen proto
  cat <<TOML
[interface]
name = "$1"

[[tunnel]]
name = "bench"
protocol = "openvpn"
mode = "server"
proto = "$3"
local = "$2"
listen_port = $PORT
server = "198.51.100.0/24"
ca = "$PKI/ca.crt"
cert = "$PKI/server.crt"
key = "$PKI/server.key"
tls_crypt = "$PKI/ta.key"
data_ciphers = ["$CIPHER"]
keepalive = [10, 60]
TOML
}
polytun_client_conf() {   # ifname remote proto
  cat <<TOML
[interface]
name = "$1"

[[tunnel]]
name = "bench"
protocol = "openvpn"
remote = "$2:$PORT"
proto = "$3"
ca = "$PKI/ca.crt"
cert = "$PKI/client.crt"
key = "$PKI/client.key"
tls_crypt = "$PKI/ta.key"
data_ciphers = ["$CIPHER"]
TOML
}

start_polytund() {   # ns ifname conf-name
  start_bg "$1" "$OUT_DIR/$3.log" env RUST_LOG=info "$BIN/polytund" --config "$OUT_DIR/$3.toml"
  DAEMON_PIDS+=("$LAST")
  for _ in $(seq 100); do "$BIN/polytun" -i "$2" show >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "polytund did not come up (see $OUT_DIR/$3.log)"
}

# ------------------------------------------------------------------ openvpn
openvpn_server_conf() {   # dev listen proto
  cat <<EOF
dev $1
dev-type tun
proto $([[ $3 == tcp ]] && echo tcp-server || echo udp)
local $2
port $PORT
topology subnet
server 198.51.100.0 255.255.255.0
ca $PKI/ca.crt
cert $PKI/server.crt
key $PKI/server.key
dh none
tls-crypt $PKI/ta.key
data-ciphers $CIPHER
keepalive 10 60
verb 3
EOF
}
openvpn_client_conf() {   # dev remote proto
  cat <<EOF
client
dev $1
dev-type tun
proto $([[ $3 == tcp ]] && echo tcp-client || echo udp)
remote $2 $PORT
nobind
ca $PKI/ca.crt
cert $PKI/client.crt
key $PKI/client.key
tls-crypt $PKI/ta.key
remote-cert-tls server
data-ciphers $CIPHER
verb 3
EOF
}

start_openvpn() {   # ns conf-name
  start_bg "$1" "$OUT_DIR/$2.log" openvpn --config "$OUT_DIR/$2.conf"
  DAEMON_PIDS+=("$LAST")
}

# ------------------------------------------------------------------ one measurement
# measure IMPL PROTO DIR: s2c puts the server in NS_A (iperf3 -c there, to the client's .2 in
# NS_B); c2s puts the client in NS_A (to the server's .1 in NS_B). measure_traffic always sends
# from NS_A to NS_B.
measure() {
  local impl=$1 proto=$2 dir=$3 key=$1-$2-$3 s_ns c_ns s_if c_if s_ul dst ok=0
  teardown
  netns_pair
  if [[ $dir == s2c ]]; then
    s_ns=$NS_A c_ns=$NS_B s_if=$PT_A c_if=$PT_B s_ul=192.0.2.1 dst=$CLI_TUN
  else
    s_ns=$NS_B c_ns=$NS_A s_if=$PT_B c_if=$PT_A s_ul=192.0.2.2 dst=$SRV_TUN
  fi
  TUN_A=$PT_A TUN_B=$PT_B
  local srv=${impl%%+*} cli=${impl##*+}
  [[ $impl == *+* ]] || srv=$impl cli=$impl
  case $srv in
    polytun|openvpn) ;;
    *) die "unknown implementation $impl" ;;
  esac
  case $cli in
    polytun|openvpn) ;;
    *) die "unknown implementation $impl" ;;
  esac
  if [[ $srv == polytun || $cli == polytun ]]; then
    [[ -x $BIN/polytund && -x $BIN/polytun ]] || die "$BIN/polytund missing: cargo build --release"
  fi
  if [[ $srv == polytun ]]; then
    polytun_server_conf "$s_if" "$s_ul" "$proto" >"$OUT_DIR/$key-server.toml"
    start_polytund "$s_ns" "$s_if" "$key-server"
  else
    openvpn_server_conf "$s_if" "$s_ul" "$proto" >"$OUT_DIR/$key-server.conf"
    start_openvpn "$s_ns" "$key-server"
    for _ in $(seq 200); do grep -q "Initialization Sequence Completed" "$OUT_DIR/$key-server.log" && break; sleep 0.1; done
  fi
  if [[ $cli == polytun ]]; then
    polytun_client_conf "$c_if" "$s_ul" "$proto" >"$OUT_DIR/$key-client.toml"
    start_polytund "$c_ns" "$c_if" "$key-client"
  else
    openvpn_client_conf "$c_if" "$s_ul" "$proto" >"$OUT_DIR/$key-client.conf"
    start_openvpn "$c_ns" "$key-client"
    for _ in $(seq 400); do grep -q "Initialization Sequence Completed" "$OUT_DIR/$key-client.log" && break; sleep 0.1; done
    grep -q "Initialization Sequence Completed" "$OUT_DIR/$key-client.log" || die "openvpn client did not connect (see $OUT_DIR/$key-client.log)"
  fi
  # the client has its pushed address once the tunnel is up; wait for traffic (up to ~60 s)
  for _ in $(seq 60); do
    ip netns exec "$NS_A" ping -c1 -W1 -q "$dst" >/dev/null 2>&1 9>&- && { ok=1; break; }
    sleep 0.5
  done
  (( ok )) || die "$key: tunnel does not pass traffic (logs in $OUT_DIR)"
  if [[ $cli == openvpn ]]; then
    grep -h "Data Channel: cipher\|Outgoing Data Channel" "$OUT_DIR/$key-client.log" | head -2 >&2 || true
  else
    "$BIN/polytun" -i "$c_if" show >"$OUT_DIR/$key-client-show.txt" 2>&1 || true
  fi
  start_bg "$NS_B" "$OUT_DIR/$key-iperf3-server.log" iperf3 -s -B "$dst"
  sleep 0.5
  measure_traffic "$key" "$dst"
  if [[ $cli == polytun ]]; then
    "$BIN/polytun" -i "$c_if" show >"$OUT_DIR/$key-client-show-end.txt" 2>&1 || true
  fi
  teardown
}

{
  echo "date=$(date -Is) kernel=$(uname -r) cpus=$(nproc) loadavg=$(cut -d' ' -f1-3 /proc/loadavg) duration=${DURATION}s repeat=$REPEAT cipher=$CIPHER tls-crypt dirs=$DIRS"
  echo "openvpn: $(openvpn --version 2>&1 | head -1)"
  if [[ -x $BIN/polytund ]]; then echo "polytund: $BIN/polytund ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"; fi
} | tee "$OUT_DIR/versions.txt" >&2
make_pki
KEYS=()
if [[ " $IMPLS " == *" bare-veth "* ]]; then
  log "measuring bare-veth"
  teardown
  measure_bare_veth
  KEYS+=(bare-veth)
fi
for proto in $PROTOS; do
  for dir in $DIRS; do
    for impl in $IMPLS; do
      [[ $impl == bare-veth ]] && continue
      log "measuring $impl over $proto, $dir"
      measure "$impl" "$proto" "$dir"
      KEYS+=("$impl-$proto-$dir")
    done
  done
done

python3 - "$OUT_DIR/results.txt" "${KEYS[*]}" <<'PY'
import sys
res = {}
for line in open(sys.argv[1]):
    impl, key, val = line.split()
    res.setdefault(impl, {})[key] = float(val)
cols = sys.argv[2].split()
keys = [("tcp1_gbps", "TCP 1 stream Gbit/s"), ("tcp4_gbps", "TCP 4 streams Gbit/s"), ("ping_ms", "ping median ms"),
        ("udp_kpps", "UDP k datagrams/s"), ("cpu_s_per_gb", "CPU s per GB (tcp1)"), ("rss_mb", "peak RSS MB (flood)"),
        ("alive_after_flood", "answers after flood")]
print()
w = max([18] + [len(c) + 2 for c in cols])
print("%-22s" % "" + "".join("%*s" % (w, c) for c in cols))
for k, name in keys:
    print("%-22s" % name + "".join("%*.3f" % (w, res.get(c, {}).get(k, float("nan"))) for c in cols))
print()
for c in cols:
    if not c.startswith("polytun-"):
        continue
    o = "openvpn-" + c[len("polytun-"):]
    p, s = res.get(c), res.get(o)
    if not p or not s:
        continue
    proto, d = c.split("-")[1:]
    r = lambda k: p[k] / s[k] if p.get(k) and s.get(k) else float("nan")
    t1 = r("tcp1_gbps")
    print("over %s, %s: polytun/openvpn tcp1 %.2fx, tcp4 %.2fx, ping %.2fx, CPU/GB %.2fx; issue-4 bar tcp1 >= 2x openvpn: %s" % (
        proto.upper(), d, t1, r("tcp4_gbps"), r("ping_ms"), r("cpu_s_per_gb"), "PASS" if t1 >= 2 else "FAIL"))
PY
