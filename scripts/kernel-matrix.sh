#!/usr/bin/env bash
# The kernel matrix: boot Debian's own kernels under qemu with virtme-ng, on this machine's root
# filesystem, and run spiketrace's portability checks inside each one: `spiketrace doctor`, probe
# selection/verifier/attach, lost-event accounting, syn-loss and listen-overflow runs scored by
# their ground truth, and the original scripts traced with `spiketrace trace`. Prints kernel x
# evidence -> backend and each test's result; exits non-zero if anything failed.
#
#   sudo scripts/kernel-matrix.sh                       # 5.10 (bullseye), 6.1 (bookworm), 6.12
#   sudo scripts/kernel-matrix.sh --kernel 6.1          # one of them (repeat --kernel for more)
#   sudo scripts/kernel-matrix.sh --kernel /srv/k/boot/vmlinuz-6.8.0-51-generic \
#        --headers /srv/k/usr/src/linux-headers-6.8.0-51-generic    # your own kernel image
#   sudo scripts/kernel-matrix.sh --fetch-only          # download and unpack, boot nothing
#
# Options: --cache DIR  where packages are unpacked (default $SPIKETRACE_KERNEL_CACHE or
#                       ~/.cache/spiketrace/kernels)
#          --results DIR  guest logs, doctor JSON, junit XML (default runs/kernel-matrix/<UTC time>)
#          --jobs N     guests at once (default 1)      --accel auto|kvm|tcg  (default auto: tried)
#          --timeout S  per guest (default 1500)        --memory SIZE  per guest (default 4G)
#          --tests "PYTEST ARGS"  what pytest runs in each guest (default: tests/kernels)
#          --extended   also the guest tests CI leaves out (km_extended), and every end-to-end
#                       run on every kernel (by default one per kernel: E2E_PLAN below)
# SPIKETRACE_KM_* and SPIKETRACE_TEST_* variables (test sizes) are passed on to the guests.
# Under CI (CI=true) a kernel whose packages cannot be fetched fails; elsewhere it is skipped.
# Needs root and `scripts/install.sh --test` (qemu-system-x86, virtme-ng, kmod, udev, busybox).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '==> %s\n' "$*"; }
die() { printf 'kernel-matrix.sh: %s\n' "$*" >&2; exit 2; }

kernels=()
headers=""
if [ -n "${HOME:-}" ]; then
    cache=${SPIKETRACE_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spiketrace/kernels}
else
    cache=${SPIKETRACE_KERNEL_CACHE:-/var/cache/spiketrace/kernels}
fi
results=""
jobs=1
accel=auto
guest_timeout=1500
memory=4G
tests="tests/kernels"   # the guest suite (tests/kernels/conftest.py says what it runs and why)
extended=0
fetch_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --kernel) kernels+=("${2:?--kernel needs a version or an image path}"); shift ;;
        --headers) headers=${2:?--headers needs a directory}; shift ;;
        --cache) cache=${2:?}; shift ;;
        --results) results=${2:?}; shift ;;
        --jobs) jobs=${2:?}; shift ;;
        --accel) accel=${2:?}; shift ;;
        --timeout) guest_timeout=${2:?}; shift ;;
        --memory) memory=${2:?}; shift ;;
        --tests) tests=${2:?--tests needs pytest arguments}; shift ;;
        --extended) extended=1 ;;
        --fetch-only) fetch_only=1 ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (try --help)" ;;
    esac
    shift
done
[ ${#kernels[@]} -gt 0 ] || kernels=(5.10 6.1 6.12)
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive number"
[[ "$guest_timeout" =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a number of seconds"
case "$accel" in auto|kvm|tcg) ;; *) die "--accel must be auto, kvm or tcg" ;; esac
strict=0
[ "${CI:-}" = true ] && strict=1
[ -n "$results" ] || results="$here/runs/kernel-matrix/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$results" "$cache"
results=$(cd "$results" && pwd)
cache=$(cd "$cache" && pwd)

# virtme-ng lives in the project's venv; depmod and udevadm are in /usr/sbin (not on a user's PATH)
export PATH="$here/.venv/bin:$PATH:/usr/sbin:/sbin"

# ------------------------------------------------------------------------------------ fetching
# Debian's packages, fetched with a private apt state directory and sources list (the host's
# /etc/apt is never touched), unpacked with dpkg-deb -x into $cache/trees/<release>/.
declare -A SERIES_REGEX=(
    [5.10]='^linux-image-5\.10\.0-[0-9]+-amd64-unsigned$'
    [6.1]='^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$'
    [6.12]='^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$'
)
# The end-to-end runs each kernel makes (tests/kernels, marker km_e2e), one per kernel so that
# CI's matrix fits in its time: each costs 2.5-4 min under TCG, and with two per kernel the
# three guests took 36 min on a loaded 2-core host (5.10 726 s, 6.1 696 s, 6.12 711 s). 5.10
# syn-loss (its tc program without BPF atomics), 6.1 listen-overflow (kprobes: the accept wait
# by kretprobe), 6.12 the original scripts under `spiketrace trace`. --extended, --tests or an
# image of your own: all of them.
declare -A E2E_PLAN=([5.10]="syn-loss" [6.1]="listen-overflow" [6.12]="original")
apt_dir="$cache/apt"
apt_opts=(-o "Dir::State=$apt_dir/state" -o "Dir::State::status=$apt_dir/state/status"
          -o "Dir::Cache=$apt_dir/cache" -o "Dir::Etc::SourceList=$apt_dir/sources.list"
          -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d" -o "Dir::Etc::Preferences=$apt_dir/preferences"
          -o "Dir::Etc::PreferencesParts=$apt_dir/preferences.d" -o "APT::Sandbox::User=root"
          -o "Acquire::Languages=none" -o "Acquire::Retries=3")

# The Debian archive and its security archive: SPIKETRACE_DEBIAN_MIRROR and
# SPIKETRACE_DEBIAN_SECURITY_MIRROR, else the ones this (Debian) host's apt already uses.
# shellcheck disable=SC2016  # $(SITE) and $(LABEL) are apt's own placeholders
debian_sites() {
    local archive=${SPIKETRACE_DEBIAN_MIRROR:-} security=${SPIKETRACE_DEBIAN_SECURITY_MIRROR:-}
    local site label
    if [ -z "$archive" ] || [ -z "$security" ]; then
        while read -r site label; do
            [ "$label" = Debian ] && [ -z "$archive" ] && archive=$site
            [ "$label" = Debian-Security ] && [ -z "$security" ] && security=$site
        done < <(apt-get indextargets --format '$(SITE) $(LABEL)' 2>/dev/null | sort -u)
    fi
    [ -n "$archive" ] || return 1
    printf '%s %s\n' "$archive" "${security:-${archive%/debian}/debian-security}"
}

apt_lists_ready=""   # "", "yes" or "no" once tried
refresh_lists() {
    [ -z "$apt_lists_ready" ] || { [ "$apt_lists_ready" = yes ]; return; }
    apt_lists_ready=no
    local sites archive security key=/usr/share/keyrings/debian-archive-keyring.gpg
    sites=$(debian_sites) || { say "no Debian mirror known: set SPIKETRACE_DEBIAN_MIRROR"; return 1; }
    read -r archive security <<<"$sites"
    [ -r "$key" ] || { say "$key missing: apt-get install debian-archive-keyring"; return 1; }
    mkdir -p "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources.list.d" \
        "$apt_dir/preferences.d"
    touch "$apt_dir/state/status"
    {
        printf 'deb [arch=amd64 signed-by=%s] %s bullseye main\n' "$key" "$archive"
        printf 'deb [arch=amd64 signed-by=%s] %s bullseye-security main\n' "$key" "$security"
        printf 'deb [arch=amd64 signed-by=%s] %s bookworm main\n' "$key" "$archive"
        printf 'deb [arch=amd64 signed-by=%s] %s bookworm-security main\n' "$key" "$security"
        printf 'deb [arch=amd64 signed-by=%s] %s bookworm-backports main\n' "$key" "$archive"
    } >"$apt_dir/sources.list"
    say "apt (private state in $apt_dir): updating bullseye, bookworm, -security, bookworm-backports lists"
    if apt-get "${apt_opts[@]}" -qq update >"$apt_dir/update.log" 2>&1; then
        apt_lists_ready=yes
    else
        say "apt-get update failed (see $apt_dir/update.log)"
        return 1
    fi
}

# fetch_series SERIES: sets $tree to the unpacked tree of the newest -unsigned image of SERIES
# (with its headers), fetching it unless cached; falls back to the cached tree when offline.
fetch_series() {
    local series=$1 regex=${SERIES_REGEX[$1]} pointer="$cache/series/$1"
    local image="" release abi
    tree=""
    if refresh_lists; then
        image=$(apt-cache "${apt_opts[@]}" pkgnames linux-image- | grep -E "$regex" | sort -V | tail -n 1 || true)
        [ -n "$image" ] || say "$series: no package matching $regex in the lists"
    fi
    if [ -z "$image" ]; then
        if [ -r "$pointer" ] && [ -e "$cache/trees/$(cat "$pointer")/.complete" ]; then
            say "$series: using the cached $(cat "$pointer") (could not refresh the lists)"
            tree="$cache/trees/$(cat "$pointer")"
            return 0
        fi
        return 1
    fi
    release=${image#linux-image-}
    release=${release%-unsigned}
    abi=${release%-amd64}
    tree="$cache/trees/$release"
    if [ ! -e "$tree/.complete" ]; then
        local debs="$cache/debs/$release" deb
        local pkgs=("$image" "linux-headers-$release" "linux-headers-$abi-common")
        say "$series: fetching ${pkgs[*]}"
        rm -rf "$debs" "$tree"
        mkdir -p "$debs" "$tree"
        (cd "$debs" && apt-get "${apt_opts[@]}" -qq download "${pkgs[@]}") || return 1
        for deb in "$debs"/*.deb; do
            dpkg-deb -x "$deb" "$tree" || return 1
        done
        printf '%s\n' "${pkgs[@]}" >"$tree/.packages"
        touch "$tree/.complete"
        rm -rf "$debs"
    fi
    # keep one tree per series: drop the one a newer package replaced
    if [ -r "$pointer" ] && [ "$(cat "$pointer")" != "$release" ]; then
        rm -rf "${cache:?}/trees/$(cat "$pointer")"
    fi
    mkdir -p "$cache/series"
    echo "$release" >"$pointer"
}

# --------------------------------------------------------------------------------- the guests
need_tools() {
    local missing=() tool
    for tool in vng qemu-system-x86_64 busybox depmod udevadm; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]}: run scripts/install.sh --test"
    [ -x "$here/.venv/bin/spiketrace" ] || die "no $here/.venv: run scripts/install.sh --test"
    [ "$(id -u)" -eq 0 ] || die "needs root (the guests run spiketrace as this user)"
}

# KVM when /dev/kvm works, else TCG. "Works" means a kernel gets as far as its panic on a missing
# root in 20 s: on some hosts /dev/kvm opens but the guest hangs (an MSR qemu cannot set).
probe_kvm() {
    local kimg=$1 log="$results/kvm-probe.log" pid i
    if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
        echo "no usable /dev/kvm"
        return 1
    fi
    qemu-system-x86_64 -accel kvm -cpu host -m 256 -nodefaults -display none -no-reboot \
        -serial "file:$log" -kernel "$kimg" -append "console=ttyS0 panic=-1 root=/dev/nonexistent" \
        >"$results/kvm-probe.err" 2>&1 </dev/null &
    pid=$!
    for ((i = 0; i < 40; i++)); do
        if grep -q "Kernel panic" "$log" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "a KVM guest did not boot in 20 s: $(tr '\n' ' ' <"$results/kvm-probe.err" | cut -c1-200)"
    return 1
}

# Read-only ext4 images of the Python trees and of a kernel's headers, given to each guest as
# virtio disks and mounted over the same paths: the guest sees the host's root filesystem over
# 9p, where each file lookup costs milliseconds under TCG, and a Python import or a BPF compile
# makes thousands (measured on 6.1: `import pandas` 40 -> 17 s, doctor 51 -> 22 s, a tracer
# compile 60 -> 32 s). Same files, same paths; rebuilt when anything under the source changed.
make_image() {  # make_image SRC IMG LABEL
    local src=$1 img=$2 label=$3 kb n
    if [ -e "$img" ] && [ -z "$(find "$src" -newer "$img" -print -quit 2>/dev/null)" ]; then
        return 0
    fi
    kb=$(du -sk --apparent-size "$src" | cut -f1)
    n=$(find "$src" | wc -l)
    rm -f "$img.tmp"
    mke2fs -q -F -t ext4 -O ^has_journal -N $((n + 1024)) -L "$label" -d "$src" "$img.tmp" \
        "$((kb * 12 / 10 + n * 4 + 65536))K" >/dev/null || { rm -f "$img.tmp"; return 1; }
    mv "$img.tmp" "$img"
}

python_dirs() {  # the venv interpreter's module directories worth an image (over 1 MB)
    "$here/.venv/bin/python" - <<'PY'
import os, sys
dirs = [d for d in sys.path if os.path.isdir(d) and (d.startswith("/usr/") or d.startswith(sys.prefix))]
for d in dirs:
    if any(d.startswith(other + "/") for other in dirs):
        continue  # inside another one's image
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs
               if not os.path.islink(os.path.join(r, f)))
    if size > 1 << 20:
        print(d)
PY
}

images=()   # "label=guest path=image file"
prepare_images() {
    local d img label
    mkdir -p "$cache/images"
    while read -r d; do
        # the label names the directory (a cached image keeps it), at most 16 characters
        label="km$(printf '%s' "$d" | md5sum | cut -c1-12)"
        img="$cache/images/$label.img"
        if make_image "$d" "$img" "$label"; then
            touch "$img"  # in use: kept by the pruning below
            images+=("$label=$d=$img")
        else
            say "could not make an image of $d: the guests read it over 9p (slower)"
        fi
    done < <(python_dirs)
    # each clone's venv gets its own image (its editable install names the clone's path): drop
    # the ones no run has used for two days, so that CI's fresh clones do not fill the disk
    find "$cache/images" -maxdepth 1 -name 'km*.img' -mtime +1 -delete 2>/dev/null || true
}

# run_guest NAME KIMG HEADERS [HEADERS_IMAGE]: boots KIMG and runs scripts/kernel-matrix-guest.sh inside; every
# file it writes is in $results/NAME. The guest is bounded by --timeout and stops by itself.
run_guest() {
    local name=$1 kimg=$2 hdrs=$3 hdrs_img=${4:-} out="$results/$1" start rc
    mkdir -p "$out"
    {
        printf 'KM_OUT=%q\n' "$out"
        printf 'KM_ROOT=%q\n' "$here"
        printf 'KM_HEADERS=%q\n' "$hdrs"
        printf 'KM_NAME=%q\n' "$name"
        printf 'KM_TESTS=%q\n' "$tests"
        printf 'KM_BUDGET_S=%q\n' "$((guest_timeout - 60))"  # less the boot
        printf 'export SPIKETRACE_KM_EXTENDED=%q\n' "$extended"
        if [ "$extended" -eq 0 ] && [ "$tests" = tests/kernels ] && [ -n "${E2E_PLAN[$name]:-}" ]; then
            printf 'export SPIKETRACE_KM_E2E=%q\n' "${E2E_PLAN[$name]}"
        fi
        local var
        for var in $(compgen -e | grep -E '^SPIKETRACE_(KM|TEST)_'); do
            printf 'export %s=%q\n' "$var" "${!var}"
        done
    } >"$out/guest.env"
    local accel_opts=() drives="" entry mounts=""
    [ "$use_kvm" -eq 1 ] || accel_opts=(--disable-kvm)
    for entry in "${images[@]}"; do
        drives+=" -drive file=${entry##*=},format=raw,if=virtio,readonly=on"
        mounts+=" ${entry%=*}"
    done
    if [ -n "$hdrs_img" ]; then
        drives+=" -drive file=$hdrs_img,format=raw,if=virtio,readonly=on"
        mounts+=" kmhdr=$(dirname "$hdrs")"
    fi
    printf 'KM_MOUNTS=%q\n' "${mounts# }" >>"$out/guest.env"
    [ -z "$drives" ] || accel_opts+=("--qemu-opts=${drives# }")
    start=$(date +%s)
    timeout --kill-after=30 "$guest_timeout" vng --run "$kimg" "${accel_opts[@]}" --cpus 2 \
        --memory "$memory" --rwdir "$out" \
        --exec "$here/scripts/kernel-matrix-guest.sh $out/guest.env" \
        </dev/null >"$out/console.log" 2>&1 &
    echo "$!" >"$out/timeout.pid"
    rc=0
    wait "$!" || rc=$?
    rm -f "$out/timeout.pid"
    printf '%s\n' "$rc" >"$out/vng.rc"
    printf '%s\n' "$(($(date +%s) - start))" >"$out/wall_s"
    say "$name: guest finished in $(cat "$out/wall_s") s (rc $rc; logs in $out)"
}

# --------------------------------------------------------------------------------------- main
plan=()      # "name|kimg|headers|headers image", one per kernel to boot
missing=()   # kernels whose packages could not be had
exec 9>"$cache/.lock"
flock 9      # one fetcher per cache at a time
for k in "${kernels[@]}"; do
    if [ -f "$k" ]; then
        name=$(basename "$k")
        plan+=("${name#vmlinuz-}"'|'"$(cd "$(dirname "$k")" && pwd)/$(basename "$k")"'|'"$headers"'|')
    elif [ -n "${SERIES_REGEX[$k]:-}" ]; then
        if fetch_series "$k"; then
            kimg=$(find "$tree/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n 1)
            release=${kimg##*/vmlinuz-}
            hdrs_img="$tree/headers.img"  # see make_image
            make_image "$tree/usr/src" "$hdrs_img" kmhdr || hdrs_img=""
            plan+=("$k"'|'"$kimg"'|'"$tree/usr/src/linux-headers-$release"'|'"$hdrs_img")
            say "$k: $release ($tree)"
        else
            missing+=("$k")
            say "$k: could not fetch its packages"
        fi
    else
        die "--kernel $k: neither an image file nor one of ${!SERIES_REGEX[*]}"
    fi
done
exec 9>&-
printf '%s\n' "${missing[@]}" >"$results/missing.txt"
[ "$fetch_only" -eq 0 ] || { [ ${#missing[@]} -eq 0 ]; exit $?; }

if [ ${#plan[@]} -gt 0 ]; then
    need_tools
    say "images of the Python trees for the guests (in $cache/images)"
    prepare_images
    use_kvm=0
    first_kimg=$(cut -d'|' -f2 <<<"${plan[0]}")
    case "$accel" in
        kvm) use_kvm=1; say "accelerator: KVM (--accel kvm)" ;;
        tcg) say "accelerator: TCG, software emulation (--accel tcg)" ;;
        auto)
            if why=$(probe_kvm "$first_kimg"); then
                use_kvm=1
                say "accelerator: KVM (a test guest booted)"
            else
                say "accelerator: TCG, software emulation ($why); guests are 15-100x slower"
            fi ;;
    esac
    if [ "$use_kvm" -eq 1 ]; then echo kvm; else echo tcg; fi >"$results/accel"
    # each guest stops by itself (--timeout); on Ctrl-C or a kill, `timeout` ends the ones left
    stop_guests() {
        local f
        for f in "$results"/*/timeout.pid; do
            [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null
        done
        return 0
    }
    trap stop_guests EXIT
    trap 'stop_guests; exit 130' INT TERM
    for entry in "${plan[@]}"; do
        IFS='|' read -r name kimg hdrs hdrs_img <<<"$entry"
        while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
            wait -n || true
        done
        say "$name: booting $(basename "$kimg") (timeout ${guest_timeout} s)"
        run_guest "$name" "$kimg" "$hdrs" "$hdrs_img" &
    done
    wait || true
    trap - EXIT INT TERM
fi

names=()
for entry in "${plan[@]}"; do names+=("${entry%%|*}"); done
python3 "$here/scripts/kernel_matrix/summary.py" "$results" --strict "$strict" \
    --kernels "${names[@]}" --missing "${missing[@]}"
