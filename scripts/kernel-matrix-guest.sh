#!/usr/bin/env bash
# Runs inside a kernel-matrix guest (scripts/kernel-matrix.sh boots it with virtme-ng; not for
# use on its own): points /lib/modules/$(uname -r)/{build,source} at the kernel's own headers,
# then runs `spiketrace doctor --json` and the guest test selection with the project's .venv.
# Everything goes to $KM_OUT (a directory shared with the host): uname.txt, headers.txt,
# doctor.json, pytest.log, junit.xml, progress.jsonl (one line per test, as they end),
# steps.tsv (step, exit code, seconds) and done (written last: the guest got to its end).
#
#   scripts/kernel-matrix-guest.sh GUEST_ENV   # a file setting KM_OUT KM_ROOT KM_HEADERS KM_TESTS ...
set -uo pipefail

# shellcheck disable=SC1090  # written by kernel-matrix.sh for this guest
. "${1:?usage: kernel-matrix-guest.sh GUEST_ENV}"
: "${KM_OUT:?}" "${KM_ROOT:?}" "${KM_TESTS:?}" "${KM_BUDGET_S:=1400}"
started=$(date +%s)
cd "$KM_ROOT" || exit 1
export PATH="$KM_ROOT/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# every BPF test is mandatory in a guest (a skip is a failure), as in CI; the test sizes are the
# guest ones (tests/kernels/conftest.py), smaller than the host suite's
export SPIKETRACE_REQUIRE_BPF=1 SPIKETRACE_KERNEL_GUEST=1
: >"$KM_OUT/steps.tsv"

step() {  # step NAME TIMEOUT_S CMD...: runs CMD bounded in time, records its exit code and seconds
    local name=$1 limit=$2 t0 rc=0
    shift 2
    t0=$(date +%s)
    if declare -F "$1" >/dev/null; then
        "$@" || rc=$?  # a function of this script: quick, no timeout needed
    else
        timeout --kill-after=10 "$limit" "$@" || rc=$?
    fi
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" >>"$KM_OUT/steps.tsv"
    return "$rc"
}

left() {  # seconds of the guest's budget still left, keeping 60 s to write the results
    local n=$((KM_BUDGET_S - ($(date +%s) - started) - 60))
    [ "$n" -gt 30 ] && echo "$n" || echo 30
}

# Headers: the packages' build/source links are absolute (/usr/src/...) and dangle on this root
# filesystem. /lib/modules/<release> is a link into the unpacked tree (on a tmpfs virtme-ng made):
# replace it by a directory of links to the same entries, with build/source repointed.
# shellcheck disable=SC2317  # called through step()
point_headers() {
    local rel moddir real entry src
    rel=$(uname -r)
    moddir=/lib/modules/$rel
    if [ -n "${KM_HEADERS:-}" ]; then
        if [ -L "$moddir" ]; then
            real=$(readlink -f "$moddir")
            rm "$moddir" && mkdir "$moddir"
            for entry in "$real"/*; do
                ln -s "$entry" "$moddir/"
            done
        fi
        mkdir -p "$moddir"
        # Debian splits headers in <release> (generated, arch) and <abi>-common (the rest); its
        # Makefile names the common tree
        src=$(sed -n 's|^include /usr/src/\(linux-headers-[^/]*\)/Makefile$|\1|p' "$KM_HEADERS/Makefile" 2>/dev/null)
        if [ -n "$src" ] && [ -d "$(dirname "$KM_HEADERS")/$src" ]; then
            src="$(dirname "$KM_HEADERS")/$src"
        else
            src=$KM_HEADERS
        fi
        ln -sfn "$KM_HEADERS" "$moddir/build"
        ln -sfn "$src" "$moddir/source"
    fi
    {
        echo "build: $(readlink -f "$moddir/build" 2>/dev/null || echo missing)"
        echo "source: $(readlink -f "$moddir/source" 2>/dev/null || echo missing)"
        echo "utsrelease.h: $(sed -n 's/^#define UTS_RELEASE "\(.*\)"/\1/p' "$moddir/build/include/generated/utsrelease.h" 2>/dev/null)"
        echo "include/config/kernel.release: $(cat "$moddir/build/include/config/kernel.release" 2>/dev/null)"
    } >"$KM_OUT/headers.txt"
    [ -d "$moddir/build/include" ]
}

# The host's read-only images (kernel-matrix.sh make_image): each over the directory it copies
# shellcheck disable=SC2317  # called through step()
mount_images() {
    local entry label dir dev rc=0
    for entry in ${KM_MOUNTS:-}; do
        label=${entry%%=*}
        dir=${entry#*=}
        dev=$(blkid -L "$label" 2>/dev/null) || { echo "no disk labelled $label"; rc=1; continue; }
        mkdir -p "/run/km/$label"
        if mount -o ro "$dev" "/run/km/$label" && mount --bind "/run/km/$label" "$dir"; then
            echo "$dir: from $dev ($label)"
        else
            echo "$dir: could not mount $dev ($label); read over 9p"
            rc=1
        fi
    done
    return "$rc"
}

uname -a >"$KM_OUT/uname.txt"
step images 10 mount_images >"$KM_OUT/images.txt" 2>&1
nproc >>"$KM_OUT/uname.txt"
step headers 10 point_headers
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
step doctor 600 spiketrace doctor --json >"$KM_OUT/doctor.json" 2>"$KM_OUT/doctor.err"

export PYTHONPATH="$KM_ROOT/scripts/kernel_matrix" KM_PROGRESS="$KM_OUT/progress.jsonl"
# shellcheck disable=SC2086  # KM_TESTS is a list of pytest arguments
step pytest "$(left)" python -m pytest -p no:cacheprovider -p km_progress -v -rA \
    --junitxml="$KM_OUT/junit.xml" --durations=0 $KM_TESTS >"$KM_OUT/pytest.log" 2>&1
rc=$?
date +%s >"$KM_OUT/done"
exit "$rc"
