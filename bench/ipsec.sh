#!/usr/bin/env bash
# bench/ipsec.sh — polytun ESP against strongSwan 5.9 (kernel-libipsec), side by side in ONE run.
#
# For each implementation, two network namespaces joined by a veth (underlay 192.0.2.1/.2), the
# same implementation on both sides, IKEv2 with PSK (aes256gcm16-prfsha256-x25519) and one
# CHILD SA with ESP AES-GCM-256 (UDP-encapsulated on 4500: libipsec always does that, polytun
# too) between 198.51.100.1/32 and 198.51.100.2/32; then:
#   setup   time to establish the IKE SA and the first CHILD SA, median of SETUP_REPEAT:
#           polytun: the initiator's log, from "initiating IKE SA" to "CHILD SA installed"
#             (first connect at start, then `polytun rekey`, which reauthenticates: a new
#             IKE SA + CHILD SA from scratch);
#           strongSwan: the initiator charon's log (time_add_ms), from "initiating IKE_SA" to
#             "CHILD_SA net{n} established", after `swanctl --terminate --ike pt` and
#             `swanctl --initiate --child net`; the wall time of that `swanctl --initiate`
#             (swanctl's own start included, as a strongSwan user sees it) is printed too.
#   ping    PING_COUNT pings (0.2 s apart) after a warm-up: median RTT
#   tcp1    iperf3 TCP, 1 stream, DURATION s   (median of REPEAT runs)
#   tcp4    iperf3 TCP, 4 streams, DURATION s  (median of REPEAT runs)
#   cpu     CPU seconds both daemons spent per GB moved during the tcp1 runs
#   udp     iperf3 UDP flood (1380-byte datagrams, unlimited rate), DURATION s: datagrams/s delivered
#   rss     peak RSS (VmHWM) of the larger daemon after all runs, the UDP flood included
# and the ratios polytun/strongSwan with issue 3's bars: TCP 1 stream >= 2x strongSwan, setup
# faster than strongSwan, RSS < 64 MiB (and issue 5's: TCP 1 stream >= 8x strongSwan).
# IMPLS may also name "bare-veth": the same traffic over the underlay veth, no tunnel (bench/lib.sh).
# bench/all.sh runs this script for its ESP rows.
#
# Usage: sudo bench/ipsec.sh            (after cargo build --release)
# Env: IMPLS="polytun strongswan" (also: bare-veth), DURATION=10, REPEAT=3, SETUP_REPEAT=5, PING_COUNT=20,
#      OUT_DIR=..., LOCK=/tmp/peers-bench.lock (shared with the other benchmarks), LOCK_WAIT=3600,
#      POLYTUN_BIN_DIR=..., ESP=aes256gcm16
# Only processes started here are killed (by PID); namespaces are deleted on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
IMPLS=${IMPLS:-"polytun strongswan"}
SETUP_REPEAT=${SETUP_REPEAT:-5}
ESP=${ESP:-aes256gcm16}
IKE=aes256gcm16-prfsha256-x25519
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/polytun-bench-ipsec.XXXXXX)}
NS_A=ptbi-a-$$ NS_B=ptbi-b-$$ VETH_A=ptbia$$ VETH_B=ptbib$$
PT_A=ptbipa$$ PT_B=ptbipb$$
IN_A=198.51.100.1 IN_B=198.51.100.2
CHARON=/usr/lib/ipsec/charon
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_init swanctl

teardown() {
  stop_pids
  netns_del
  rm -f "/run/polytun/$PT_A.sock" "/run/polytun/$PT_B.sock"
}
# shellcheck disable=SC2154  # rc is assigned inside the trap string
trap 'rc=$?; trap - EXIT; teardown; log "results in $OUT_DIR"; exit $rc' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PSK=$(head -c 32 /dev/urandom | base64)

setup_pair() {
  teardown
  netns_pair
  # IPv4 only (as the reference strongSwan benchmark): no MOBIKE address churn, same for both.
  local ns
  for ns in "$NS_A" "$NS_B"; do
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  done
}

# ------------------------------------------------------------------ polytun
polytun_conf() {   # side
  local side=$1 ifn la ra lts rts init remote
  if [[ $side == a ]]; then ifn=$PT_A la=192.0.2.1 lts=$IN_A rts=$IN_B init=true remote='remote = "192.0.2.2"'
  else ifn=$PT_B la=192.0.2.2 lts=$IN_B rts=$IN_A init=false remote='remote_addrs = ["192.0.2.0/24"]'; fi
  # as configs/ipsec-site-{a,b}.toml, with one ESP proposal and this run's PSK
  cat <<TOML
[interface]
name = "$ifn"
address = ["$lts/32"]
mtu = 1420

[[tunnel]]
name = "bench"
protocol = "ipsec"
local_addrs = ["$la"]
$remote
local_id = "$side.bench.test"
remote_id = "$([[ $side == a ]] && echo b || echo a).bench.test"
auth = "psk"
psk = "0s$PSK"
proposals = ["$IKE"]
esp_proposals = ["$ESP"]
local_ts = ["$lts/32"]
remote_ts = ["$rts/32"]
initiate = $init
rekey_time = "50m"
lifetime = "1h"
dpd_delay = "30s"
TOML
}

# Milliseconds from the last "initiating IKE SA" to the "CHILD SA installed" after it, in a
# polytund log (tracing's RFC 3339 timestamps, microseconds); empty while not there yet.
polytun_setup_ms() {
  python3 - "$1" <<'PY'
import re, sys
from datetime import datetime
t0 = t1 = None
for line in open(sys.argv[1], errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    m = re.match(r"(\S+)\s", line)
    if not m:
        continue
    try:
        ts = datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
    except ValueError:
        continue
    if "initiating IKE SA" in line:
        t0, t1 = ts, None
    elif "CHILD SA installed" in line and t0 is not None and t1 is None:
        t1 = ts
if t0 and t1:
    print("%.3f" % ((t1 - t0).total_seconds() * 1000))
PY
}

wait_polytun_setup() {   # log -> prints ms
  local ms=""
  for _ in $(seq 300); do
    ms=$(polytun_setup_ms "$1")
    [[ -n $ms ]] && { echo "$ms"; return 0; }
    sleep 0.1
  done
  die "polytun: no CHILD SA within 30 s (see $1)"
}

setup_polytun() {
  local side ns ifn setups=() ms i
  [[ -x $BIN/polytund && -x $BIN/polytun ]] || die "$BIN/polytund missing: cargo build --release"
  for side in b a; do   # the responder first, so the initiator's first attempt is answered
    if [[ $side == a ]]; then ns=$NS_A ifn=$PT_A; else ns=$NS_B ifn=$PT_B; fi
    polytun_conf $side >"$OUT_DIR/polytun-$side.toml"
    start_bg "$ns" "$OUT_DIR/polytun-$side.log" env RUST_LOG=info "$BIN/polytund" --config "$OUT_DIR/polytun-$side.toml"
    DAEMON_PIDS+=("$LAST")
    for _ in $(seq 100); do "$BIN/polytun" -i "$ifn" show >/dev/null 2>&1 && break; sleep 0.1; done
    "$BIN/polytun" -i "$ifn" show >/dev/null || die "polytund did not come up (see $OUT_DIR/polytun-$side.log)"
  done
  ms=$(wait_polytun_setup "$OUT_DIR/polytun-a.log")
  setups+=("$ms"); log "polytun setup 1: $ms ms"
  for i in $(seq 2 "$SETUP_REPEAT"); do
    sleep 1
    local n0; n0=$(grep -c "CHILD SA installed" "$OUT_DIR/polytun-a.log" || true)
    "$BIN/polytun" -i "$PT_A" rekey >/dev/null || die "polytun rekey failed"
    for _ in $(seq 300); do
      (( $(grep -c "CHILD SA installed" "$OUT_DIR/polytun-a.log" || true) > n0 )) && break
      sleep 0.1
    done
    ms=$(wait_polytun_setup "$OUT_DIR/polytun-a.log")
    setups+=("$ms"); log "polytun setup $i (reauthentication): $ms ms"
  done
  result polytun setup_ms "$(median "${setups[@]}")"
  sleep 2   # let the replaced IKE SA's DELETE finish
}

# ------------------------------------------------------------------ strongSwan
sw() {   # side swanctl-args...
  local side=$1 ns; shift
  if [[ $side == a ]]; then ns=$NS_A; else ns=$NS_B; fi
  ip netns exec "$ns" env STRONGSWAN_CONF="$OUT_DIR/sw-$side/strongswan.conf" SWANCTL_DIR="$OUT_DIR/sw-$side/swanctl" \
    swanctl "$@" 9>&-
}

strongswan_conf() {   # side
  local side=$1 d=$OUT_DIR/sw-$1 la ra lts rts
  if [[ $side == a ]]; then la=192.0.2.1 ra=192.0.2.2 lts=$IN_A rts=$IN_B
  else la=192.0.2.2 ra=192.0.2.0/24 lts=$IN_B rts=$IN_A; fi
  rm -rf "$d"; mkdir -p "$d/run" "$d/swanctl"/{x509,x509ca,private,conf.d}
  # kernel-libipsec before kernel-netlink: userspace ESP over its TUN ipsec0 (no kernel ESP here)
  cat >"$d/strongswan.conf" <<EOF
charon {
    load = random nonce openssl aes sha1 sha2 hmac gcm chapoly curve25519 kdf x509 pem pkcs1 pkcs8 pubkey kernel-libipsec kernel-netlink socket-default vici
    filelog {
        charon {
            path = $d/charon.log
            time_format = %H:%M:%S
            time_add_ms = yes
            default = 1
            flush_line = yes
        }
    }
    plugins {
        vici {
            socket = unix://$d/charon.vici
        }
    }
}
swanctl {
    socket = unix://$d/charon.vici
}
EOF
  cat >"$d/swanctl/swanctl.conf" <<EOF
connections {
    pt {
        version = 2
        local_addrs = $la
        remote_addrs = $ra
        proposals = $IKE
        mobike = no
        keyingtries = 1
        local {
            auth = psk
            id = $side.bench.test
        }
        remote {
            auth = psk
            id = $([[ $side == a ]] && echo b || echo a).bench.test
        }
        children {
            net {
                local_ts = $lts/32
                remote_ts = $rts/32
                mode = tunnel
                esp_proposals = $ESP
            }
        }
    }
}
secrets {
    ike-pt {
        id-a = a.bench.test
        id-b = b.bench.test
        secret = 0s$PSK
    }
}
EOF
}

# Median milliseconds from "initiating IKE_SA" to the "CHILD_SA ... established" after it in
# charon's log (time_add_ms): the daemon's own time, as polytun's is measured.
strongswan_setup_ms() {
  python3 - "$1" <<'PY'
import re, statistics, sys
from datetime import datetime
def ts(line):
    m = re.match(r"(\d\d:\d\d:\d\d)\.(\d{3})", line)
    return (datetime.strptime(m.group(1), "%H:%M:%S").timestamp() + int(m.group(2)) / 1000) if m else None
t0, v = None, []
for line in open(sys.argv[1], errors="replace"):
    if "initiating IKE_SA" in line:
        t0 = ts(line)
    elif re.search(r"CHILD_SA \S+ established", line) and t0 is not None:
        t1 = ts(line)
        if t1 is not None:
            v.append((t1 - t0) * 1000)
        t0 = None
print("%.3f" % statistics.median(v) if v else "nan")
PY
}

setup_strongswan() {
  local side ns d setups=() t0 t1 i
  [[ -x $CHARON && -f /usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so ]] ||
    die "strongSwan with kernel-libipsec missing: sudo scripts/install-test-deps.sh"
  ip -n "$NS_A" addr add "$IN_A/32" dev lo
  ip -n "$NS_B" addr add "$IN_B/32" dev lo
  for side in a b; do
    if [[ $side == a ]]; then ns=$NS_A; else ns=$NS_B; fi
    d=$OUT_DIR/sw-$side
    strongswan_conf $side
    # charon's pid file is fixed at /var/run/charon.pid: a private /run in the mount
    # namespace `ip netns exec` creates; `exec` keeps the PID charon's.
    # shellcheck disable=SC2016  # $1 and $2 are the inner sh's
    start_bg "$ns" "$d/charon.out" env STRONGSWAN_CONF="$d/strongswan.conf" \
      sh -c 'mount --bind "$1" /run && exec "$2"' sh "$d/run" "$CHARON"
    DAEMON_PIDS+=("$LAST")
    for _ in $(seq 150); do sw $side --stats >/dev/null 2>&1 && break; sleep 0.1; done
    sw $side --load-all --noprompt >"$d/load-all.out" 2>&1 || die "swanctl --load-all ($side): $(cat "$d/load-all.out")"
  done
  for i in $(seq "$SETUP_REPEAT"); do
    if (( i > 1 )); then
      sw a --terminate --ike pt --timeout 10 >/dev/null 2>&1 || true
      sleep 1
    fi
    t0=$(date +%s%N)
    sw a --initiate --child net --timeout 30 >"$OUT_DIR/sw-initiate-$i.out" 2>&1 ||
      die "swanctl --initiate failed: $(cat "$OUT_DIR/sw-initiate-$i.out")"
    t1=$(date +%s%N)
    setups+=("$(python3 -c 'import sys; print("%.3f" % ((int(sys.argv[2]) - int(sys.argv[1])) / 1e6))' "$t0" "$t1")")
    log "strongswan swanctl --initiate $i: ${setups[-1]} ms (wall; the daemon's own time is read from its log at the end)"
  done
  result strongswan setup_wall_ms "$(median "${setups[@]}")"
  result strongswan setup_ms "$(strongswan_setup_ms "$OUT_DIR/sw-a/charon.log")"
  sw a --list-sas >"$OUT_DIR/sw-list-sas.txt" 2>&1 || true
  grep -q "ESP:AES_GCM_16-256" "$OUT_DIR/sw-list-sas.txt" || log "strongswan: unexpected CHILD SA: $(cat "$OUT_DIR/sw-list-sas.txt")"
}

# libipsec queues packets in unbounded queues: after a flood charon may still work off a
# backlog. Between runs, wait (up to 60 s) until the daemons use < 10% of a core.
settle() {
  local t0=$SECONDS c0 c1
  while (( SECONDS - t0 < 60 )); do
    c0=$(cpu_ticks); sleep 0.5; c1=$(cpu_ticks)
    (( (c1 - c0) * 20 < CLK_TCK )) && break
  done
  (( SECONDS - t0 > 1 )) && log "daemons idle after $(( SECONDS - t0 ))s"
  return 0
}
SETTLE=settle

measure() {   # impl
  local impl=$1
  if [[ $impl == bare-veth ]]; then teardown; measure_bare_veth; return; fi
  setup_pair
  case $impl in
    polytun) TUN_A=$PT_A TUN_B=$PT_B; setup_polytun ;;
    strongswan) TUN_A=ipsec0 TUN_B=ipsec0; setup_strongswan ;;
    *) die "unknown implementation $impl" ;;
  esac
  start_bg "$NS_B" "$OUT_DIR/$impl-iperf3-server.log" iperf3 -s -B "$IN_B"
  sleep 0.5
  local ok=0
  for _ in $(seq 20); do ip netns exec "$NS_A" ping -c1 -W1 -q -I "$IN_A" "$IN_B" >/dev/null 2>&1 9>&- && { ok=1; break; }; done
  (( ok )) || die "$impl: tunnel does not pass traffic"
  measure_traffic "$impl" "$IN_B" "$IN_A"
  if [[ $impl == polytun ]]; then
    "$BIN/polytun" -i "$PT_A" show >"$OUT_DIR/polytun-a-show.txt" 2>&1 || true
  else
    sw a --list-sas >"$OUT_DIR/sw-list-sas-end.txt" 2>&1 || true
  fi
  teardown
}

{
  echo "date=$(date -Is) kernel=$(uname -r) cpus=$(nproc) loadavg=$(cut -d' ' -f1-3 /proc/loadavg) duration=${DURATION}s repeat=$REPEAT setup_repeat=$SETUP_REPEAT esp=$ESP ike=$IKE"
  echo "strongSwan: $($CHARON --version 2>&1 | head -1)"
  if [[ -x $BIN/polytund ]]; then echo "polytund: $BIN/polytund ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"; fi
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
        ("setup_ms", "IKE+CHILD setup ms"), ("setup_wall_ms", "swanctl --initiate ms"), ("udp_kpps", "UDP k datagrams/s"), ("cpu_s_per_gb", "CPU s per GB (tcp1)"),
        ("rss_mb", "peak RSS MB (flood)"), ("alive_after_flood", "answers after flood")]
print()
print("%-24s" % "" + "".join("%14s" % i for i in impls))
for k, name in keys:
    print("%-24s" % name + "".join("%14.3f" % res.get(i, {}).get(k, float("nan")) for i in impls))
p, s = res.get("polytun", {}), res.get("strongswan", {})
if p and s:
    print()
    cells = []
    for k, name in keys[:-1]:
        if k == "setup_wall_ms":
            continue
        a, b = p.get(k), s.get(k)
        cells.append("%s %s" % (name.split(" (")[0].replace(" Gbit/s", "").replace(" median", ""), "%.2fx" % (a / b) if a and b else "n/a"))
    print("polytun/strongswan: " + ", ".join(cells))
    t1 = p.get("tcp1_gbps", 0)
    print("issue-3 bars: tcp1 >= 2x strongSwan: %s (%.2fx); setup faster than strongSwan: %s (%.1f vs %.1f ms); RSS < 64 MiB: %s (%.1f MB vs charon %.1f MB)" % (
        "PASS" if t1 >= 2 * s.get("tcp1_gbps", 1e9) else "FAIL", t1 / s["tcp1_gbps"] if s.get("tcp1_gbps") else float("nan"),
        "PASS" if p.get("setup_ms", 1e9) < s.get("setup_ms", 0) else "FAIL", p.get("setup_ms", float("nan")), s.get("setup_ms", float("nan")),
        "PASS" if p.get("rss_mb", 1e9) < 64 else "FAIL", p.get("rss_mb", float("nan")), s.get("rss_mb", float("nan"))))
    print("issue-5 bar: tcp1 >= 8x strongSwan: %s" % ("PASS" if t1 >= 8 * s.get("tcp1_gbps", 1e9) else "FAIL"))
PY
