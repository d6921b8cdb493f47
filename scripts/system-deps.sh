#!/usr/bin/env bash
# Installs the Debian packages that tests need beyond PyPI, when missing and when we can.
set -u
pkgs=(libgl1 libegl1 libgles2 libmtdev1 xvfb)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: missing Debian packages ${missing[*]} (not root or no apt-get): app UI tests will skip"
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
(apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; }) ||
  echo "note: could not install ${missing[*]}: app UI tests will skip"
exit 0
