#!/usr/bin/env bash
# Installs what tests/db needs on Debian 12: the real PostgreSQL 15 (with amcheck, in
# postgresql-contrib) and MariaDB servers from Debian's packages, and their clients.
#
# Nothing is left running: a policy-rc.d answering 101 keeps the packages' maintainer
# scripts from starting the servers (there is no systemd here), and any server the
# packages started anyway is stopped through its own init script. The tests start their
# own servers by hand, on loop filesystems, in a private mount namespace.
#
# Idempotent and quiet; run as root. `.ci/run` calls it before the test command.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
packages=(postgresql postgresql-contrib mariadb-server mariadb-client systemd xfsprogs e2fsprogs util-linux)

missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
done

if ((${#missing[@]})); then
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# tests/db/install.sh: no service starts while packages install\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ -n "$made_policy" ]; then rm -f "$policy"; fi
fi

# Servers the packages may have started despite the policy (a machine with its own
# policy-rc.d that allows it): stop them by their own tools, not by process name.
if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters --no-header 2>/dev/null | while read -r version cluster _port status _rest; do
        case "$status" in online*) pg_ctlcluster "$version" "$cluster" stop -m fast || true ;; esac
    done
fi
if [ -x /etc/init.d/mariadb ] && /etc/init.d/mariadb status >/dev/null 2>&1; then
    /etc/init.d/mariadb stop >/dev/null || true
fi

# What the tests call, so a missing piece fails here with its name rather than as a skip.
for tool in /usr/lib/postgresql/15/bin/initdb /usr/lib/postgresql/15/bin/pg_ctl psql \
    mariadb-install-db mariadbd mariadb mariadb-admin systemd-notify runuser losetup mkfs.ext4 mkfs.xfs; do
    command -v "$tool" >/dev/null || { echo "tests/db/install.sh: $tool is missing" >&2; exit 1; }
done
