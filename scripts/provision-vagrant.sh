#!/usr/bin/env bash
# Provision a spiketrace Vagrant VM (run as root by `vagrant up`; see Vagrantfile, docs/vagrant.md):
# the same scripts/install.sh as the README, then `spiketrace doctor`, then a short run of the
# legacy-rto scenario (the 3 s initial SYN RTO of CentOS 5's 2.6.18 kernel) so that a report is
# waiting in runs/ when `vagrant up` returns.
#
#   scripts/provision-vagrant.sh [REPO]    # REPO: the synced checkout (default: this script's repo)
#
# Environment: SPIKETRACE_PROVISION_N (transactions, 2000; 0 skips the run),
# SPIKETRACE_PROVISION_SCENARIO (legacy-rto), SPIKETRACE_INSTALL_DRY_RUN=1 (print, change nothing).
set -euo pipefail

repo=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
n=${SPIKETRACE_PROVISION_N:-2000}
scenario=${SPIKETRACE_PROVISION_SCENARIO:-legacy-rto}
dry_run=${SPIKETRACE_INSTALL_DRY_RUN:-0}

say() { printf '==> %s\n' "$*"; }
die() { printf 'provision-vagrant.sh: %s\n' "$*" >&2; exit 1; }
run() {
    if [ "$dry_run" = 1 ]; then
        printf '+'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

[ -x "$repo/scripts/install.sh" ] || die "no scripts/install.sh under $repo: is the synced folder there? (vagrant rsync)"
[[ "$n" =~ ^[0-9]+$ ]] || die "SPIKETRACE_PROVISION_N must be a number of transactions, not '$n'"
cd "$repo"

say "installing spiketrace with scripts/install.sh (as the README does)"
"$repo/scripts/install.sh"

say "spiketrace doctor"
# doctor exits non-zero when something is missing; its own output says what and how to fix it,
# and the run below then fails with the precise error, so go on.
run "$repo/.venv/bin/spiketrace" doctor || say "doctor reported problems (see above)"

if [ "$n" -eq 0 ]; then
    say "SPIKETRACE_PROVISION_N=0: no run; try: sudo $repo/.venv/bin/spiketrace run --scenario $scenario -n 2000"
    exit 0
fi

say "spiketrace run --scenario $scenario -n $n"
run "$repo/.venv/bin/spiketrace" run --scenario "$scenario" -n "$n"

# Root ran it; give the run directories to the login user so scp from the host can read them.
if [ -d "$repo/runs" ] && id vagrant >/dev/null 2>&1; then
    run chown -R vagrant: "$repo/runs"
fi
say "done. Reports are under $repo/runs/ in the VM; docs/vagrant.md shows how to copy them to the host"
