#!/usr/bin/env bash
# Installs the Debian packages that tests need beyond PyPI, when missing and when we can.
set -u
# libgl1-mesa-dri + libglx-mesa0 give the software (llvmpipe) OpenGL that Kivy's offscreen SDL window
# needs on a machine without a GPU; libmtdev1 is loaded by Kivy's input providers at import.
pkgs=(libgl1 libegl1 libgles2 libgl1-mesa-dri libglx-mesa0 libegl-mesa0 libmtdev1 xvfb)
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
