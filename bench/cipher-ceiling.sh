#!/usr/bin/env bash
# bench/cipher-ceiling.sh — how fast WireGuard TCP 1-stream could be on THIS machine with no cipher
# at all, and so which of issue 5's ratio bars any ChaCha20-Poly1305 can reach here.
#
# Builds a throwaway polytund whose AEAD does nothing for payloads of 1000 bytes and more
# (bench/null-aead.patch, applied in a temporary git worktree, never in the tree: such a daemon sends
# plaintext), then runs ROUNDS interleaved rounds of bench/wireguard.sh:
#   real  IMPLS="bare-veth polytun wireguard-go boringtun"   (the build in target/release)
#   null  IMPLS=polytun with the null-AEAD build
# and per round `openssl speed -evp chacha20-poly1305 -bytes 1400` both ways. Per round it prints the
# TCP 1-stream figures, the null build's share of the bare veth (no cipher can do better than that)
# and an upper bound for a real cipher:
#   bound Gbit/s = 8 * CPUS / (null daemons' CPU s per GB + 1/enc + 1/dec)
# i.e. the daemons' non-cipher work as cheap per byte as in the null build (which ran at a higher
# rate, so batched better), the cipher as fast as openssl speed streams it, iperf3 and every other
# process given no CPU at all. A bar above the bound cannot be met on this machine. The column
# bound16k does the same with the cipher at openssl speed's rate for 16 KiB records (both ways): a
# per-packet cipher as fast as the CPU streams, which no implementation here is (docs/aead.md).
#
# Usage: sudo bench/cipher-ceiling.sh   (after cargo build --release)
# Env: ROUNDS=3, DURATION=5, REPEAT=3 (passed to bench/wireguard.sh), OUT_DIR=...
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
ROUNDS=${ROUNDS:-3}
export DURATION=${DURATION:-5} REPEAT=${REPEAT:-3} PING_ROUNDS=1
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/polytun-cipher-ceiling.XXXXXX)}
mkdir -p "$OUT_DIR"
log() { echo "[cipher-ceiling $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (network namespaces)"
[[ -x target/release/polytund ]] || die "target/release/polytund missing: cargo build --release"
command -v openssl >/dev/null || die "openssl missing: apt-get install openssl"

NULL_TREE=$OUT_DIR/null-tree
cleanup() { git worktree remove --force "$NULL_TREE" 2>/dev/null || true; }
trap 'rc=$?; trap - EXIT; cleanup; log "results in $OUT_DIR"; exit $rc' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "building the null-AEAD polytund in $NULL_TREE (a full release build: several minutes)"
git worktree add --detach "$NULL_TREE" HEAD >/dev/null
git -C "$NULL_TREE" apply "$PWD/bench/null-aead.patch" ||
  die "bench/null-aead.patch no longer applies to crates/core/src/aead.rs: refresh it"
(cd "$NULL_TREE" && CARGO_TARGET_DIR=$OUT_DIR/null-target cargo build --release -p polytun-daemon --bins) \
  >"$OUT_DIR/null-build.log" 2>&1 || die "null build failed: $OUT_DIR/null-build.log"
NULL_BIN=$OUT_DIR/null-target/release

speed() {   # enc|dec BYTES -> GB/s of openssl speed at BYTES bytes
  local flag=()
  [[ $1 == dec ]] && flag=(-decrypt)
  openssl speed -evp chacha20-poly1305 -bytes "$2" -seconds 3 "${flag[@]}" 2>/dev/null |
    awk '/^ChaCha20-Poly1305/ { v = $NF; sub(/k$/, "", v); printf "%.3f", v * 1000 / 1e9 }'
}
value() { awk -v i="$2" -v m="$3" '$1 == i && $2 == m { print $3 }' "$1/results.txt"; }

for r in $(seq "$ROUNDS"); do
  log "round $r of $ROUNDS: bare veth, polytun, wireguard-go, boringtun"
  OUT_DIR=$OUT_DIR/r$r-real IMPLS="bare-veth polytun wireguard-go boringtun" bash bench/wireguard.sh \
    >"$OUT_DIR/r$r-real.log" 2>&1 || die "bench/wireguard.sh failed: $OUT_DIR/r$r-real.log"
  log "round $r of $ROUNDS: polytun with the null AEAD"
  OUT_DIR=$OUT_DIR/r$r-null IMPLS=polytun POLYTUN_BIN_DIR=$NULL_BIN bash bench/wireguard.sh \
    >"$OUT_DIR/r$r-null.log" 2>&1 || die "bench/wireguard.sh failed: $OUT_DIR/r$r-null.log"
  log "round $r of $ROUNDS: openssl speed"
  echo "$r $(speed enc 1400) $(speed dec 1400) $(speed enc 16384) $(speed dec 16384)" >>"$OUT_DIR/openssl.txt"
done

CPUS=$(nproc)
echo "polytun $(git rev-parse --short HEAD); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $CPUS CPUs; kernel $(uname -r)"
echo "TCP 1 stream, Gbit/s (bench/wireguard.sh DURATION=${DURATION}s, median of $REPEAT); openssl speed GB/s at 1400 B (bound16k: the bound with the 16 KiB rate)"
printf '%-5s %9s %8s %8s %8s %9s %8s %9s %8s %8s %9s %9s %8s %10s %9s\n' round bare-veth polytun null \
  wg-go boringtun null/bare null-s/GB enc dec bound bound16k 30%bare 8xwg-go 8xbtun
while read -r r enc dec enc16 dec16; do
  d=$OUT_DIR/r$r-real n=$OUT_DIR/r$r-null
  python3 - "$r" "$(value "$d" bare-veth tcp1_gbps)" "$(value "$d" polytun tcp1_gbps)" \
    "$(value "$n" polytun tcp1_gbps)" "$(value "$d" wireguard-go tcp1_gbps)" \
    "$(value "$d" boringtun tcp1_gbps)" "$(value "$n" polytun cpu_s_per_gb)" "$enc" "$dec" \
    "$enc16" "$dec16" "$CPUS" <<'PY'
import sys
r, *v, cpus = sys.argv[1:]
bare, real, null, wg, bt, ncpu, enc, dec, enc16, dec16 = map(float, v)
def bound(e, d):
    return 8 * int(cpus) / (ncpu + 1 / e + 1 / d)
print("%-5s %9.2f %8.2f %8.2f %8.2f %9.2f %7.1f%% %9.2f %8.2f %8.2f %9.2f %9.2f %8.2f %10.2f %9.2f"
      % (r, bare, real, null, wg, bt, 100 * null / bare, ncpu, enc, dec, bound(enc, dec),
         bound(enc16, dec16), 0.3 * bare, 8 * wg, 8 * bt))
PY
done <"$OUT_DIR/openssl.txt"
echo "bound: the most any ChaCha20-Poly1305 could give here (see the header); the last three columns are"
echo "what issue 5's bars need. A bar is out of reach on this machine where it needs more than the bound"
echo "(30% of the bare veth: also where it needs more than the null build itself moved)."
