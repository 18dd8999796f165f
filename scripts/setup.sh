#!/usr/bin/env bash
# One idempotent setup step for `make demo` and `make test` on Debian 12 / Ubuntu 22.04+ as root:
# distribution packages, kernel-headers links for bcc, the virtualenv, the project in it.
# A second run with nothing to do finishes in a few seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
SYSTEM_PYTHON=/usr/bin/python3   # bcc's Python bindings come from the distribution
log() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (it installs packages and the eBPF datapath needs root)" >&2
  exit 1
fi
. /etc/os-release
case "$ID" in
  debian) HEADERS_META="linux-headers-$(dpkg --print-architecture)" ;;
  ubuntu) HEADERS_META="linux-headers-generic" ;;
  *) echo "setup: unsupported distribution '$ID' (need Debian 12 or Ubuntu 22.04+)" >&2; exit 1 ;;
esac

# Everything the agent, the harness and the tests run. Keep this list the only one.
PACKAGES=(
  python3 python3-venv python3-pip python3-wheel python3-bpfcc bpfcc-tools python3-pyroute2 python3-yaml
  "$HEADERS_META" iproute2 iptables nftables tcpdump iperf3 curl netcat-openbsd socat
  # wrk: the load generator of `cni-harness bench datapath` and the NodePort burst test;
  # nginx: the HTTP server the benchmark measures against (fast enough not to be the limit)
  wrk nginx
  openssh-server openssh-client util-linux procps psmisc kmod ca-certificates make gcc
  # vagrant-libvirt: without it `vagrant validate` cannot check the libvirt block of vms/
  vagrant vagrant-libvirt
  qemu-system-x86 busybox-static
  # the vm provider: overlays of its baked image (qemu-img) and the bake (mmdebstrap)
  qemu-utils mmdebstrap
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # nginx only ever runs inside benchmark pods: no server on this host's own port 80.
  if [[ " ${missing[*]} " == *" nginx "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now nginx.service >/dev/null 2>&1 || true
  fi
else
  log "packages: all present"
fi

# bcc compiles against /lib/modules/$(uname -r)/build. A custom or cloud kernel has no headers
# package: link to the distribution's headers (networking programs use stable UAPI structures).
release=$(uname -r)
moddir="/lib/modules/$release"
if [ -e "$moddir/build/Makefile" ]; then
  log "kernel headers: $moddir/build present"
else
  if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
    log "installing linux-headers-$release"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "linux-headers-$release" >/dev/null
  fi
  if [ ! -e "$moddir/build/Makefile" ]; then
    donor=""
    for dir in $(ls -d /lib/modules/*/ 2>/dev/null | sort -V -r); do
      dir=${dir%/}
      [ "$dir" = "$moddir" ] && continue
      if [ -e "$dir/build/Makefile" ]; then donor=$dir; break; fi
    done
    if [ -z "$donor" ]; then
      echo "setup: no kernel headers found to link for $release (install $HEADERS_META)" >&2
      exit 1
    fi
    mkdir -p "$moddir"
    ln -sfn "$(readlink -f "$donor/build")" "$moddir/build"
    if [ -e "$donor/source" ]; then
      ln -sfn "$(readlink -f "$donor/source")" "$moddir/source"
    else
      ln -sfn "$(readlink -f "$donor/build")" "$moddir/source"
    fi
    log "kernel headers: linked $moddir/{build,source} to $(readlink -f "$donor/build")"
  fi
fi

# The virtualenv sees the distribution's bcc and pyroute2 through --system-site-packages.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import bcc' 2>/dev/null; then
  log "creating virtualenv $VENV"
  rm -rf "$VENV"
  "$SYSTEM_PYTHON" -m venv --system-site-packages "$VENV"
fi
stamp="$VENV/.cni-cilium-installed"
want=$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing the project into $VENV (editable, with harness and dev tools)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[dev]"
  echo "$want" > "$stamp"
else
  log "virtualenv: project installed"
fi
log "ready: $VENV/bin/cni-cilium, $VENV/bin/cni-harness"
