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
  libsodium-dev prometheus chromium libpq-dev postgresql-15 strace
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# Node.js and npm run the browser tests (Playwright). The machine's own Node (e.g. NodeSource's,
# which bundles npm) serves; Debian's packages only when there is none.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)

# playwright-core (no browser download: it drives Debian's /usr/bin/chromium), pinned by the lock.
browser_deps() {
  local dir
  dir="$(dirname "$0")/../tests/browser"
  if [ -f "$dir/package-lock.json" ] && [ ! -d "$dir/node_modules/playwright-core" ]; then
    echo "install-deps: npm ci in tests/browser"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
if [ ${#missing[@]} -eq 0 ]; then
  browser_deps
  exit 0
fi

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
browser_deps
