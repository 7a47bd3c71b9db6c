#!/bin/bash
# Installs the Debian 12 packages backupmx needs to build, run and test — only those missing.
# Postfix is installed for its smtp-sink/smtp-source test tools; it is preseeded to "No
# configuration" and its service is kept from starting, so nothing is left listening on port 25.
set -euo pipefail

PACKAGES=(
  g++ clang clang-format libclang-rt-14-dev cmake ninja-build pkg-config make
  libboost1.81-dev libtomlplusplus-dev libcli11-dev libspdlog-dev libfmt-dev
  libsqlite3-dev libssl-dev libgtest-dev libunbound-dev
  python3 python3-yaml swaks libnet-ssleay-perl libio-socket-ssl-perl postfix procps iproute2 openssl unbound nsd ldnsutils python3-milter opendkim opendkim-tools
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
# Keep package scripts from starting services (postfix) during the install.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod +x "$policy"
  made_policy=1
fi
trap '[ $made_policy = 1 ] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
