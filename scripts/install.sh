#!/usr/bin/env bash
# Set up spiketrace on this machine: distro BCC bindings and tools, kernel headers (or the
# generic-headers fallback), tracefs, and a .venv built on the distro python3 so `import bcc`
# works. Idempotent: run it as often as you like.
#
#   sudo scripts/install.sh           # what `spiketrace run` needs
#   sudo scripts/install.sh --test    # plus what the tests need (chromium, shellcheck, vagrant, and
#                                     # for scripts/kernel-matrix.sh qemu, virtme-ng, kmod, udev, busybox)
#   sudo scripts/install.sh --daemon  # plus the trace daemon as a systemd service (docs/deploy.md)
#   SPIKETRACE_INSTALL_DRY_RUN=1 scripts/install.sh   # print what would change; change nothing
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
with_test=0
with_daemon=0
kernel_matrix=0  # set by the apt path with --test: the kernel matrix fetches Debian's kernels
for arg in "$@"; do
    case "$arg" in
        --test) with_test=1 ;;
        --daemon) with_daemon=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# Dry run: every command that changes the machine goes through run(), which prints it instead
# ("+ dnf install ..."). Read-only queries (dnf list, apt-cache show, test -e) still run, so the
# printed plan is the one a real run would follow. The tests use this to check the dnf path.
# The plan goes to fd 3 (our stdout) so that `run cmd >/dev/null` still shows it.
dry_run=${SPIKETRACE_INSTALL_DRY_RUN:-0}
exec 3>&1
run() {
    if [ "$dry_run" = 1 ]; then
        { printf '+'; printf ' %q' "$@"; printf '\n'; } >&3
    else
        "$@"
    fi
}

if [ "$dry_run" = 1 ]; then
    say "dry run: printing the commands that would change this machine, running none of them"
elif [ "$(id -u)" -ne 0 ]; then
    die "needs root to install packages and mount tracefs: run it with sudo"
fi

kernel=$(uname -r)
export DEBIAN_FRONTEND=noninteractive
VIRTME_NG="virtme-ng==1.42"  # the version the kernel matrix was measured with (docs/kernels.md)

install_apt() {
    say "apt: refreshing package lists"
    run apt-get update -qq || die "apt-get update failed: check the network and /etc/apt/sources.list"
    local pkgs=(python3 python3-venv python3-pip python3-bpfcc bpfcc-tools bpftool iproute2 gcc libc6-dev)
    if [ "$with_test" -eq 1 ]; then
        pkgs+=(chromium shellcheck vagrant vagrant-libvirt)  # vagrant-libvirt: validate the libvirt config
        # tests/realapps: real servers traced, driven by their own clients: PostgreSQL (pgbench),
        # nginx (with the echo module's echo_sleep for a stalling handler) and Apache httpd (ab)
        pkgs+=(postgresql nginx libnginx-mod-http-echo apache2 apache2-utils)
        # scripts/kernel-matrix.sh: qemu boots Debian's kernels with virtme-ng (from PyPI, below),
        # which needs kmod (depmod), udev (else the guest's exit code is lost) and busybox; the
        # keyring checks the Debian archives the kernels come from; file tells an image's version;
        # e2fsprogs makes the read-only disk images the guests read Python and headers from
        pkgs+=(qemu-system-x86 kmod udev busybox-static debian-archive-keyring file e2fsprogs)
        kernel_matrix=1
    fi
    say "apt: installing ${pkgs[*]}"
    # the test servers (PostgreSQL, nginx, Apache) are only run by the tests, in their own
    # network namespaces: keep their packages from starting system services (policy-rc.d 101)
    local policy=""
    if [ "$with_test" -eq 1 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
    fi
    local rc=0
    run apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null || rc=$?
    [ -z "$policy" ] || rm -f "$policy"
    [ "$rc" -eq 0 ] || die "apt-get install failed for: ${pkgs[*]}"
    if [ -e "/lib/modules/$kernel/build/include" ]; then
        say "kernel headers for $kernel: already present"
    elif apt-cache show "linux-headers-$kernel" >/dev/null 2>&1 \
            && run apt-get install -y -qq --no-install-recommends "linux-headers-$kernel" >/dev/null 2>&1; then
        say "kernel headers: installed linux-headers-$kernel"
    else
        say "kernel headers: no linux-headers-$kernel in the archive; using the distro's generic headers"
        local arch
        arch=$(dpkg --print-architecture)
        run apt-get install -y -qq --no-install-recommends "linux-headers-$arch" >/dev/null \
            || die "could not install linux-headers-$arch"
        link_generic_headers "/usr/src/linux-headers-*-$arch"
    fi
}

# CentOS Stream / RHEL / Fedora. bcc-tools, python3-bcc, bpftool and kernel-devel come from the
# base repositories; chromium and ShellCheck (--test only) need EPEL except on Fedora.
install_dnf() {
    local pkgs=(python3 python3-pip python3-bcc bcc-tools bpftool iproute gcc)
    local generic_headers=0
    if [ -e "/lib/modules/$kernel/build/include" ]; then
        say "kernel headers for $kernel: already present"
    elif dnf -q list "kernel-devel-$kernel" >/dev/null 2>&1; then
        pkgs+=("kernel-devel-$kernel")
    else
        say "kernel headers: no kernel-devel-$kernel in the repositories; using the newest kernel-devel"
        pkgs+=(kernel-devel)
        generic_headers=1
    fi
    say "dnf: installing ${pkgs[*]}"
    run dnf install -y -q "${pkgs[@]}" || die "dnf install failed for: ${pkgs[*]}"
    [ "$generic_headers" -eq 0 ] || link_generic_headers "/usr/src/kernels/*"
    if [ "$with_test" -eq 1 ]; then
        install_dnf_test_extras
    fi
}

# chromium renders the HTML report in tests, ShellCheck lints the scripts. Both are optional for
# `spiketrace run`, so a failure here warns instead of stopping (the tests that need them fail
# later with their own message). vagrant is in neither CentOS nor EPEL: get it from HashiCorp.
install_dnf_test_extras() {
    local extras=(chromium ShellCheck)
    if needs_epel && ! enable_epel; then
        say "WARNING: could not enable EPEL; skipping ${extras[*]}" >&2
        return 0
    fi
    say "dnf: installing ${extras[*]} (for the tests)"
    run dnf install -y -q "${extras[@]}" \
        || say "WARNING: dnf install failed for ${extras[*]}; the tests that need them will fail" >&2
}

os_release() {  # prints "ID VERSION_ID ID_LIKE" of this distribution
    local file=${SPIKETRACE_OS_RELEASE:-/etc/os-release}
    [ -r "$file" ] || return 0
    # shellcheck disable=SC1090  # the path is only known at run time
    (. "$file"; printf '%s %s %s\n' "${ID:-}" "${VERSION_ID:-}" "${ID_LIKE:-}")
}

needs_epel() {  # CentOS Stream, RHEL and their rebuilds; not Fedora
    local id version like
    read -r id version like <<<"$(os_release)" || true
    [ "$id" != fedora ] && [[ " $id $like " =~ \ (rhel|centos)\  ]]
}

enable_epel() {
    if rpm -q epel-release >/dev/null 2>&1; then
        say "EPEL: already enabled"
        return 0
    fi
    local id version like
    read -r id version like <<<"$(os_release)" || true
    # CRB (CodeReady Builder) carries build libraries that some EPEL packages depend on.
    run dnf config-manager --set-enabled crb >/dev/null 2>&1 \
        || say "EPEL: could not enable the crb repository (is dnf-plugins-core installed?); going on"
    say "EPEL: installing epel-release"
    run dnf install -y -q epel-release \
        || run dnf install -y -q "https://dl.fedoraproject.org/pub/epel/epel-release-latest-${version%%.*}.noarch.rpm"
}

# Link the newest headers matching GLOB as the running kernel's build/source tree. BCC then
# compiles, but struct offsets from other headers may be wrong: spiketrace avoids struct reads
# and takes the few offsets it needs from BTF at run time.
link_generic_headers() {
    local build source
    # shellcheck disable=SC2086  # GLOB is meant to expand
    build=$(printf '%s\n' $1 | grep -v common | sort -V | tail -n 1)
    [ -d "$build" ] || build=""  # an unmatched GLOB stays literal
    if [ -z "$build" ] && [ "$dry_run" = 1 ]; then
        say "kernel headers: would link the newest of $1 as /lib/modules/$kernel/{build,source}"
        return 0
    fi
    [ -n "$build" ] || die "no headers found matching $1"
    source=${build%-*}-common
    [ -d "$source" ] || source=$build
    run mkdir -p "/lib/modules/$kernel"
    run ln -sfn "$build" "/lib/modules/$kernel/build"
    run ln -sfn "$source" "/lib/modules/$kernel/source"
    say "kernel headers: linked /lib/modules/$kernel/{build,source} -> $build (not an exact match for $kernel; BCC compiles, struct offsets come from BTF)"
}

mount_tracefs() {
    if [ ! -e /sys/kernel/tracing/events ]; then
        say "mounting tracefs on /sys/kernel/tracing"
        run mount -t tracefs tracefs /sys/kernel/tracing || die "could not mount tracefs (is CONFIG_TRACING on?)"
    fi
    if ! mountpoint -q /sys/kernel/debug; then
        say "mounting debugfs on /sys/kernel/debug"
        run mount -t debugfs debugfs /sys/kernel/debug || say "debugfs not mounted (optional)"
    fi
}

make_venv() {
    local py=/usr/bin/python3
    [ -x "$py" ] || die "no distro python3 at $py"
    run "$py" -c 'import bcc' 2>/dev/null || die "the distro python3 cannot import bcc: check python3-bpfcc / python3-bcc"
    if [ ! -x "$here/.venv/bin/python" ]; then
        say "creating $here/.venv from $py (with system site-packages, for bcc)"
        run "$py" -m venv --system-site-packages "$here/.venv" || die "python3 -m venv failed (install python3-venv)"
    fi
    local target="$here"
    [ "$with_test" -eq 1 ] && target="${here}[test]"
    # Editable installs of a pyproject-only project need pip >= 21.3 (PEP 660); CentOS Stream
    # 9's python3.9 ships pip 21.2. Already satisfied (no download) on Debian 12.
    run "$here/.venv/bin/python" -m pip install -q --disable-pip-version-check 'pip>=21.3' \
        || die "could not upgrade pip in .venv to 21.3 or newer"
    say "installing spiketrace into .venv ($target)"
    run "$here/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$target" \
        || die "pip install failed: see the messages above"
    if [ "$kernel_matrix" -eq 1 ]; then
        say "installing virtme-ng into .venv (scripts/kernel-matrix.sh boots kernels with it)"
        run "$here/.venv/bin/python" -m pip install -q --disable-pip-version-check "$VIRTME_NG" \
            || die "pip install $VIRTME_NG failed: see the messages above"
    fi
}

# --daemon: `spiketrace trace` as a systemd service (deploy/systemd/, docs/deploy.md). The unit's
# /opt/spiketrace paths become this checkout's; an existing /etc/spiketrace/trace.conf is kept.
install_daemon() {
    local unit=/etc/systemd/system/spiketrace.service conf=/etc/spiketrace/trace.conf
    run mkdir -p /etc/spiketrace /var/lib/spiketrace
    if [ -e "$conf" ]; then
        say "daemon: keeping $conf"
    else
        say "daemon: writing $conf (edit its port = ... line)"
        run install -m 0644 "$here/deploy/systemd/trace.conf" "$conf"
    fi
    say "daemon: installing $unit"
    run install -m 0644 /dev/stdin "$unit" < <(sed "s|/opt/spiketrace|$here|g" "$here/deploy/systemd/spiketrace.service")
    if [ -d /run/systemd/system ]; then
        run systemctl daemon-reload
        run systemctl enable --now spiketrace.service || die "systemctl could not start spiketrace: see journalctl -u spiketrace"
        say "daemon: enabled and started (systemctl status spiketrace; journalctl -u spiketrace -o cat)"
    else
        say "daemon: systemd is not running on this machine: installed, not enabled (on a systemd machine: systemctl enable --now spiketrace)"
    fi
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
[ "$with_daemon" -eq 0 ] || install_daemon
say "done: $here/.venv/bin/spiketrace doctor tells what this kernel can trace"
