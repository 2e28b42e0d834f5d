#!/usr/bin/env bash
# Install everything polytun's test suite needs. Idempotent: installs only what is missing.
# Needs root (apt-get). Usage: sudo scripts/install-test-deps.sh
set -euo pipefail

log() { echo "[install-test-deps] $*" >&2; }
[[ $EUID -eq 0 ]] || { log "must run as root (apt-get): sudo $0"; exit 1; }

# command -> Debian package
declare -A PKG=(
  [wireguard-go]=wireguard-go
  [wg]=wireguard-tools
  [wg-quick]=wireguard-tools
  [iperf3]=iperf3
  [nft]=nftables
  [ping]=iputils-ping
  [ip]=iproute2
  [tcpdump]=tcpdump
  [ethtool]=ethtool
  [ps]=procps
  [sysctl]=procps
  [flock]=util-linux
  [systemd-analyze]=systemd
  [python3]=python3-minimal
  [openvpn]=openvpn
  [openssl]=openssl
)
missing=()
for cmd in "${!PKG[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKG[$cmd]}")
done
# strongSwan 5.9 with kernel-libipsec (userspace ESP) for the IPsec interop tests. charon is
# not on $PATH and its plugins are files: check those. --no-install-recommends drops the
# standard plugins (openssl, gcm), which the tests load, so they are named explicitly.
STRONGSWAN_PKGS=(strongswan strongswan-swanctl charon-systemd libcharon-extra-plugins
  libstrongswan-extra-plugins libstrongswan-standard-plugins strongswan-pki)
for f in /usr/lib/ipsec/charon /usr/sbin/swanctl /usr/bin/pki \
  /usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so \
  /usr/lib/ipsec/plugins/libstrongswan-gcm.so /usr/lib/ipsec/plugins/libstrongswan-openssl.so \
  /usr/lib/ipsec/plugins/libstrongswan-chapoly.so; do
  if [[ ! -e $f ]]; then
    missing+=("${STRONGSWAN_PKGS[@]}")
    break
  fi
done
# resolvconf is not needed: the tests never set DNS= in wg-quick configs
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: otherwise wireguard-tools pulls in a kernel image
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "system packages: all present"
fi

# cargo tools (into $CARGO_HOME/bin, i.e. ~/.cargo/bin)
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v cargo >/dev/null || { log "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
if ! command -v boringtun-cli >/dev/null 2>&1; then
  log "installing boringtun-cli"
  cargo install boringtun-cli --locked
fi
if ! command -v cargo-nextest >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
# fuzz targets are built with `cargo +nightly fuzz build`
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
if command -v rustup >/dev/null && ! rustup run nightly rustc --version >/dev/null 2>&1; then
  log "installing the nightly toolchain (for cargo fuzz)"
  rustup toolchain install nightly --profile minimal
fi
log "done"
