#!/usr/bin/env bash
# bench/all.sh — every landed protocol, polytun ↔ polytun against the matching real peer pair, and
# the bare veth, in ONE run on one machine, printed as ONE table (issue 5, item 6).
#
# It runs, one after another under one hold of the benchmark lock, with the same DURATION,
# REPEAT and PING_COUNT:
#   bench/wireguard.sh  IMPLS="bare-veth polytun wireguard-go boringtun"
#   bench/ipsec.sh      IMPLS="polytun strongswan"   (ESP AES-GCM-256 in UDP; SETUP_REPEAT=1)
#   bench/openvpn.sh    IMPLS="polytun openvpn" PROTOS=udp DIRS=s2c   (AES-256-GCM over UDP,
#                       tls-crypt; the server's side sends)
# each into its own directory under OUT_DIR (its own table in OUT_DIR/<protocol>.txt), and reads
# their results.txt back. Every row is measured the same way (bench/lib.sh measure_traffic: two
# namespaces joined by a veth, the same implementation on both sides, iperf3 from one to the
# other through the tunnel); "bare-veth" is the same traffic over the veth with no tunnel (MTU
# 1500, no daemon: no CPU/GB or RSS).
#
# Rows: bare-veth, polytun-wg (polytund, protocol "wireguard"), wireguard-go, boringtun,
#       polytun-esp, strongswan, polytun-ovpn, openvpn.
# Columns: TCP 1 stream Gbit/s and TCP 4 streams Gbit/s (median of REPEAT runs of DURATION s),
#       UDP datagrams/s delivered (iperf3 flood of 1380-byte datagrams, DURATION s), ping RTT
#       median ms (PING_COUNT pings; the WireGuard rows: the median of PING_ROUNDS interleaved
#       rounds of them, bench/wireguard.sh), CPU seconds both daemons spent per GB moved during the
#       TCP 1-stream runs, peak RSS MB of the larger daemon (VmHWM, the flood included).
# Then the ratios and issue 5's bars as PASS/FAIL lines, and the table as
# OUT_DIR/all.json and OUT_DIR/all.tsv.
#
# Usage: sudo bench/all.sh            (after cargo build --release; ~13 min with the defaults)
# Env: DURATION=10, REPEAT=3, PING_COUNT=20, PING_ROUNDS=5, PROTOCOLS="wireguard ipsec openvpn" (a subset
#      skips the others: their rows are n/a), OUT_DIR=..., LOCK=/tmp/peers-bench.lock (shared
#      with the other benchmarks, held for the whole run), LOCK_WAIT=3600, POLYTUN_BIN_DIR=...
# Exit status: 0 when every protocol script ran (whatever the bars say), 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PROTOCOLS=${PROTOCOLS:-"wireguard ipsec openvpn"}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/polytun-bench-all.XXXXXX)}
# lib.sh's namespace helpers are not used here: each protocol script makes its own.
NS_A=unused NS_B=unused VETH_A=unused VETH_B=unused
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_init wg swanctl openvpn openssl git
[[ -x $BIN/polytund && -x $BIN/polytun ]] || die "$BIN/polytund missing: cargo build --release"

# The protocol scripts run under this script's lock (fd 9, inherited): see bench_init.
PING_ROUNDS=${PING_ROUNDS:-5}
export BENCH_LOCK_HELD=1 LOCK LOCK_WAIT DURATION REPEAT PING_COUNT PING_ROUNDS POLYTUN_BIN_DIR=$BIN

CHILD=""
on_signal() {   # forward to the running protocol script (it tears its namespaces down), then stop
  if [[ -n $CHILD ]]; then
    kill -TERM "$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  exit "$1"
}
trap 'rc=$?; trap - EXIT; log "results in $OUT_DIR"; exit $rc' EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# run_part NAME SCRIPT VAR=VALUE...: one protocol script, its table into OUT_DIR/NAME.txt, its
# progress lines through; in the background so that a signal reaches this script at once.
FAILED=()
run_part() {
  local name=$1 script=$2 t0=$SECONDS rc=0; shift 2
  log "== $name: $script $* (started; its progress follows)"
  env "$@" OUT_DIR="$OUT_DIR/$name" bash "$script" >"$OUT_DIR/$name.txt" </dev/null &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=""
  if (( rc != 0 )); then
    FAILED+=("$name")
    log "== $name: $script FAILED (exit $rc) after $((SECONDS - t0)) s; its output: $OUT_DIR/$name.txt, $OUT_DIR/$name/"
  else
    log "== $name: done in $((SECONDS - t0)) s"
  fi
}

# the commit of the tree the binaries were built in (POLYTUN_BIN_DIR may point into another
# worktree); "+dirty" when that tree has uncommitted changes outside bench/ and the docs
COMMIT=$(git -C "$BIN" rev-parse --short HEAD 2>/dev/null || echo '?')
BIN_TOP=$(git -C "$BIN" rev-parse --show-toplevel 2>/dev/null || echo "$BIN")
git -C "$BIN_TOP" diff --quiet HEAD -- . ':!bench' ':!docs' ':!*.md' 2>/dev/null || COMMIT="$COMMIT+dirty"
START=$(date -Is) LOAD0=$(cut -d' ' -f1-3 /proc/loadavg) T0=$SECONDS
n_impls=0
for p in $PROTOCOLS; do
  case $p in
    wireguard) n_impls=$((n_impls + 4)) ;;
    ipsec|openvpn) n_impls=$((n_impls + 2)) ;;
    *) die "unknown protocol $p (PROTOCOLS: wireguard ipsec openvpn)" ;;
  esac
done
# per implementation: pings, 2 x REPEAT TCP runs and one flood of DURATION s, plus set-up
log "all.sh: $PROTOCOLS, $n_impls implementations, DURATION=${DURATION}s REPEAT=$REPEAT: about $(( n_impls * (PING_COUNT / 5 + 10 + (2 * REPEAT + 1) * (DURATION + 2)) / 60 + 1 )) min; results in $OUT_DIR"

for p in $PROTOCOLS; do
  case $p in
    wireguard) run_part wireguard bench/wireguard.sh IMPLS="bare-veth polytun wireguard-go boringtun" ;;
    ipsec) run_part ipsec bench/ipsec.sh IMPLS="polytun strongswan" SETUP_REPEAT="${SETUP_REPEAT:-1}" ESP=aes256gcm16 ;;
    openvpn) run_part openvpn bench/openvpn.sh IMPLS="polytun openvpn" PROTOS=udp DIRS=s2c CIPHER=AES-256-GCM ;;
  esac
done

{
  echo "polytun $COMMIT ($BIN/polytund, built $(date -r "$BIN/polytund" -Is))"
  echo "run: started $START, took $(( (SECONDS - T0) / 60 )) min $(( (SECONDS - T0) % 60 )) s; kernel $(uname -r), $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)); loadavg at start $LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "DURATION=${DURATION}s REPEAT=$REPEAT PING_COUNT=$PING_COUNT PING_ROUNDS=$PING_ROUNDS (WireGuard rows); scripts at $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- bench 2>/dev/null || echo +dirty)"
  # the 1-minute load before the first measurement is other work on the machine
  if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) >= 0.5 * int(sys.argv[2]) else 1)' "${LOAD0%% *}" "$(nproc)"; then
    echo "machine loaded: 1-minute loadavg ${LOAD0%% *} on $(nproc) CPUs before the run started (other work shares the CPUs: absolute numbers are lower than on a quiet machine; every row saw the same load)"
  fi
  for p in $PROTOCOLS; do
    grep -hv '^date=\|^polytund:' "$OUT_DIR/$p/versions.txt" 2>/dev/null || true
  done
} >"$OUT_DIR/header.txt"

python3 - "$OUT_DIR" "${FAILED[*]:-}" <<'PY'
import json, math, os, sys
out, failed = sys.argv[1], sys.argv[2].split()
# (row, protocol script, its implementation name)
ROWS = [("bare-veth", "wireguard", "bare-veth"), ("polytun-wg", "wireguard", "polytun"),
        ("wireguard-go", "wireguard", "wireguard-go"), ("boringtun", "wireguard", "boringtun"),
        ("polytun-esp", "ipsec", "polytun"), ("strongswan", "ipsec", "strongswan"),
        ("polytun-ovpn", "openvpn", "polytun-udp-s2c"), ("openvpn", "openvpn", "openvpn-udp-s2c")]
COLS = [("tcp1_gbps", "TCP1 Gbit/s", "%.3f"), ("tcp4_gbps", "TCP4 Gbit/s", "%.3f"),
        ("udp_pps", "UDP dgram/s", "%.0f"), ("ping_ms", "ping ms", "%.3f"),
        ("cpu_s_per_gb", "CPU s/GB", "%.2f"), ("rss_mb", "RSS MB", "%.1f")]
NAN = float("nan")
per_script = {}
for script in {s for _, s, _ in ROWS}:
    res = {}
    try:
        for line in open(os.path.join(out, script, "results.txt")):
            impl, key, val = line.split()
            res.setdefault(impl, {})[key] = float(val)
    except FileNotFoundError:
        pass
    per_script[script] = res
table = {}
for row, script, impl in ROWS:
    r = dict(per_script[script].get(impl, {}))
    if "udp_kpps" in r:
        r["udp_pps"] = r["udp_kpps"] * 1000
    table[row] = r
def get(row, key):
    v = table.get(row, {}).get(key, NAN)
    return NAN if v is None else v
def fmt(v, f):
    return "n/a" if math.isnan(v) else f % v

print(open(os.path.join(out, "header.txt")).read().rstrip())
print("All rows: one run of bench/all.sh on this one machine, measured one after another (not")
print("interleaved) with the same settings, so the ratios are comparable; absolute numbers move with")
print("the machine's load. polytun-wg is polytund with protocol \"wireguard\" (not the polytun-wg binary).")
print()
w = 14
print("%-14s" % "" + "".join("%*s" % (w, name) for _, name, _ in COLS))
for row, _, _ in ROWS:
    print("%-14s" % row + "".join("%*s" % (w, fmt(get(row, k), f)) for k, _, f in COLS))
if failed:
    print("\nFAILED to run (rows n/a): " + " ".join("bench/%s.sh" % f for f in failed))

def ratio(a, b):
    return a / b if a == a and b == b and b != 0 else NAN
print()
for me, other, pct in [("polytun-wg", "wireguard-go", False), ("polytun-wg", "boringtun", False),
                       ("polytun-wg", "bare-veth", True), ("polytun-esp", "strongswan", False),
                       ("polytun-ovpn", "openvpn", False)]:
    cells = []
    for k, name, _ in COLS:
        r = ratio(get(me, k), get(other, k))
        if math.isnan(r) or (pct and k not in ("tcp1_gbps", "tcp4_gbps", "udp_pps")):
            continue
        cells.append("%s %s" % (name.split(" ")[0], ("%.1f%%" % (100 * r)) if pct else ("%.2fx" % r)))
    print("%s/%s: %s" % (me, other, ", ".join(cells) if cells else "n/a"))

bars = []
def bar(text, a, b, ok, detail):   # n/a when either side was not measured
    nan = math.isnan(a) or math.isnan(b)
    bars.append((text, None if nan else ok(a, b), "not measured" if nan else detail))
t = lambda r: get(r, "tcp1_gbps")
p = lambda r: get(r, "ping_ms")
at_least = lambda n: (lambda a, b: a >= n * b)
for me, other, n, text in [("polytun-wg", "wireguard-go", 8, "WG tcp1 >= 8x wireguard-go"),
                           ("polytun-wg", "boringtun", 8, "WG tcp1 >= 8x boringtun"),
                           ("polytun-wg", "bare-veth", 0.3, "WG tcp1 >= 30% of bare veth")]:
    r = ratio(t(me), t(other))
    bar(text, t(me), t(other), at_least(n), "%.1f%%" % (100 * r) if n < 1 else "%.2fx" % r)
bar("WG ping <= boringtun", p("polytun-wg"), p("boringtun"), lambda a, b: a <= b,
    "%.3f vs %.3f ms" % (p("polytun-wg"), p("boringtun")))
for me, other, text in [("polytun-esp", "strongswan", "ESP tcp1 >= 8x strongSwan"),
                        ("polytun-ovpn", "openvpn", "OpenVPN tcp1 >= 8x openvpn")]:
    bar(text, t(me), t(other), at_least(8), "%.2fx" % ratio(t(me), t(other)))
rss = [(r, get(r, "rss_mb")) for r in ("polytun-wg", "polytun-esp", "polytun-ovpn")]
rss = [(r, v) for r, v in rss if not math.isnan(v)]
if rss:
    top = max(v for _, v in rss)
    bars.append(("polytun RSS < 64 MiB", top < 64, ", ".join("%s %.1f MB" % x for x in rss)))
else:
    bars.append(("polytun RSS < 64 MiB", None, "not measured"))
print()
for text, ok, detail in bars:
    print("issue-5 bar: %-30s %s (%s)" % (text + ":", "n/a " if ok is None else "PASS" if ok else "FAIL", detail))
for row in ("polytun-wg", "polytun-esp", "polytun-ovpn"):
    if table.get(row) and table[row].get("alive_after_flood") == 0:
        print("note: %s did not answer pings after the UDP flood" % row)

def clean(v):
    return None if isinstance(v, float) and math.isnan(v) else v
with open(os.path.join(out, "all.json"), "w") as f:
    json.dump({"header": open(os.path.join(out, "header.txt")).read().splitlines(),
               "rows": {row: {k: clean(v) for k, v in table.get(row, {}).items()} for row, _, _ in ROWS},
               "bars": [{"bar": t_, "pass": ok, "detail": d} for t_, ok, d in bars],
               "failed_scripts": failed}, f, indent=2)
with open(os.path.join(out, "all.tsv"), "w") as f:
    f.write("impl\t" + "\t".join(k for k, _, _ in COLS) + "\n")
    for row, _, _ in ROWS:
        f.write(row + "\t" + "\t".join(fmt(get(row, k), f_) for k, _, f_ in COLS) + "\n")
print("\ntable: %s/all.tsv, %s/all.json; per-protocol tables: %s/{wireguard,ipsec,openvpn}.txt" % (out, out, out))
PY
(( ${#FAILED[@]} == 0 ))
