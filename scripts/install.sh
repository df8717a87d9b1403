#!/usr/bin/env bash
# Set up spiketrace on this machine: distro BCC bindings and tools, kernel headers (or the
# generic-headers fallback), tracefs, and a .venv built on the distro python3 so `import bcc`
# works. Idempotent: run it as often as you like.
#
#   sudo scripts/install.sh           # what `spiketrace run` needs
#   sudo scripts/install.sh --test    # plus what the test suite needs (chromium, shellcheck, vagrant)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
with_test=0
for arg in "$@"; do
    case "$arg" in
        --test) with_test=1 ;;
        -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root to install packages and mount tracefs: run it with sudo"

kernel=$(uname -r)
export DEBIAN_FRONTEND=noninteractive

install_apt() {
    say "apt: refreshing package lists"
    apt-get update -qq || die "apt-get update failed: check the network and /etc/apt/sources.list"
    local pkgs=(python3 python3-venv python3-pip python3-bpfcc bpfcc-tools bpftool iproute2 gcc libc6-dev)
    if [ "$with_test" -eq 1 ]; then
        pkgs+=(chromium shellcheck vagrant)
    fi
    say "apt: installing ${pkgs[*]}"
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null \
        || die "apt-get install failed for: ${pkgs[*]}"
    if [ -e "/lib/modules/$kernel/build/include" ]; then
        say "kernel headers for $kernel: already present"
    elif apt-get install -y -qq --no-install-recommends "linux-headers-$kernel" >/dev/null 2>&1; then
        say "kernel headers: installed linux-headers-$kernel"
    else
        say "kernel headers: no linux-headers-$kernel in the archive; using the distro's generic headers"
        local arch
        arch=$(dpkg --print-architecture)
        apt-get install -y -qq --no-install-recommends "linux-headers-$arch" >/dev/null \
            || die "could not install linux-headers-$arch"
        link_generic_headers "/usr/src/linux-headers-*-$arch"
    fi
}

install_dnf() {
    local pkgs=(python3 python3-pip python3-bcc bcc-tools bpftool iproute gcc)
    if [ "$with_test" -eq 1 ]; then
        pkgs+=(chromium ShellCheck)
    fi
    say "dnf: installing ${pkgs[*]}"
    dnf install -y -q "${pkgs[@]}" || die "dnf install failed for: ${pkgs[*]} (on CentOS Stream, enable EPEL for chromium/ShellCheck)"
    if [ -e "/lib/modules/$kernel/build/include" ]; then
        say "kernel headers for $kernel: already present"
    elif dnf install -y -q "kernel-devel-$kernel"; then
        say "kernel headers: installed kernel-devel-$kernel"
    else
        say "kernel headers: no kernel-devel-$kernel; using the newest kernel-devel"
        dnf install -y -q kernel-devel || die "could not install kernel-devel"
        link_generic_headers "/usr/src/kernels/*"
    fi
}

# Link the newest headers matching GLOB as the running kernel's build/source tree. BCC then
# compiles, but struct offsets from other headers may be wrong: spiketrace avoids struct reads
# and takes the few offsets it needs from BTF at run time.
link_generic_headers() {
    local build source
    # shellcheck disable=SC2086  # GLOB is meant to expand
    build=$(ls -d $1 2>/dev/null | grep -v common | sort -V | tail -n 1)
    [ -n "$build" ] || die "no headers found matching $1"
    source=${build%-*}-common
    [ -d "$source" ] || source=$build
    mkdir -p "/lib/modules/$kernel"
    ln -sfn "$build" "/lib/modules/$kernel/build"
    ln -sfn "$source" "/lib/modules/$kernel/source"
    say "kernel headers: linked /lib/modules/$kernel/{build,source} -> $build (not an exact match for $kernel; BCC compiles, struct offsets come from BTF)"
}

mount_tracefs() {
    if [ ! -e /sys/kernel/tracing/events ]; then
        say "mounting tracefs on /sys/kernel/tracing"
        mount -t tracefs tracefs /sys/kernel/tracing || die "could not mount tracefs (is CONFIG_TRACING on?)"
    fi
    if ! mountpoint -q /sys/kernel/debug; then
        say "mounting debugfs on /sys/kernel/debug"
        mount -t debugfs debugfs /sys/kernel/debug || say "debugfs not mounted (optional)"
    fi
}

make_venv() {
    local py=/usr/bin/python3
    [ -x "$py" ] || die "no distro python3 at $py"
    "$py" -c 'import bcc' 2>/dev/null || die "the distro python3 cannot import bcc: check python3-bpfcc / python3-bcc"
    if [ ! -x "$here/.venv/bin/python" ]; then
        say "creating $here/.venv from $py (with system site-packages, for bcc)"
        "$py" -m venv --system-site-packages "$here/.venv" || die "python3 -m venv failed (install python3-venv)"
    fi
    local target="$here"
    [ "$with_test" -eq 1 ] && target="$here[test]"
    say "installing spiketrace into .venv ($target)"
    "$here/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$target" \
        || die "pip install failed: see the messages above"
}

if command -v apt-get >/dev/null; then
    install_apt
elif command -v dnf >/dev/null; then
    install_dnf
else
    die "no apt-get or dnf: install BCC's Python bindings, bpftool and kernel headers by hand"
fi
mount_tracefs
make_venv
say "done: $here/.venv/bin/spiketrace doctor tells what this kernel can trace"
