#!/bin/sh
# bench/mkosi/assemble.sh DEST: writes an mkosi project for the examples/debian image into DEST
# (created if missing), from this folder and from examples/debian itself, so that both tools
# build from the same files:
#   mkosi.conf      this folder's, plus the host's release and apt mirror and 02_packages' list
#   mkosi.prepare   01_base's fstab/hosts, an initramfs, 02_packages' clean-up, 04_user
#   mkosi.postinst  05_config's `systemctl enable`s, 06_stamp
#   mkosi.extra/    05_config/files/* at the paths 05_config copies them to
#   mkosi.skeleton/ the host's security mirror in place of the one mkosi writes
#   authorized_keys 04_user's (the prepare script reads it from /root/src)
# Then: mkosi -C DEST --incremental build   (as root; see README.md).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
example=$here/../../examples/debian
dest=${1:?usage: assemble.sh DEST}
mkdir -p "$dest"

. /etc/os-release
suite=${VERSION_CODENAME:?/etc/os-release names no VERSION_CODENAME: run this on a Debian host}

# The host's mirrors for SUITE and SUITE-security, in either sources format (as 01_base reads them).
uri_for() { # SUITE-NAME -> the first URI of a "deb" source that serves it
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed 's/\[[^]]*\]//' "$f" | awk -v s="$1" '$1 == "deb" && $3 == s { print $2; exit }'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v s="$1" -v RS= '
      { uri = ""; deb = 0; has = 0
        n = split($0, lines, "\n")
        for (i = 1; i <= n; i++) {
          if (lines[i] ~ /^Types:/ && lines[i] ~ /[ \t]deb([ \t]|$)/) deb = 1
          if (lines[i] ~ /^URIs:/) { split(lines[i], u, /[ \t]+/); uri = u[2] }
          if (lines[i] ~ /^Suites:/) { m = split(lines[i], w, /[ \t]+/); for (j = 2; j <= m; j++) if (w[j] == s) has = 1 }
        }
        if (deb && has && uri != "") { print uri; exit } }' "$f"
  done | head -n 1
}
mirror=$(uri_for "$suite")
security=$(uri_for "$suite-security")
[ -n "$mirror" ] || { echo "assemble.sh: the host has no apt source for $suite" >&2; exit 1; }

packages=$(grep -v '^#' "$example/02_packages/packages" | tr -s ' \n' ',' | sed 's/,$//')
{
  # 02_packages' list joins 01_base's on the one Packages= line.
  sed "s/^Packages=.*/&,$packages/" "$here/mkosi.conf"
  printf '\n[Distribution]\n# The host'"'"'s release and apt mirror (what examples/debian/01_base uses).\nDistribution=debian\nRelease=%s\nMirror=%s\n' "$suite" "$mirror"
} > "$dest/mkosi.conf"

cp "$here/mkosi.prepare" "$here/mkosi.postinst" "$dest/"
cp "$example/04_user/authorized_keys" "$dest/authorized_keys"

# 05_config's files, where its build-layer copies them.
files=$example/05_config/files
extra=$dest/mkosi.extra
rm -rf "$extra"
mkdir -p "$extra/etc/systemd/network" "$extra/etc/ssh/sshd_config.d" "$extra/etc/systemd/system"
cp "$files/20-wired.network" "$extra/etc/systemd/network/20-wired.network"
cp "$files/sshd-keys-only.conf" "$extra/etc/ssh/sshd_config.d/keys-only.conf"
cp "$files/issue" "$extra/etc/issue"
cp "$files/vmlb-ready.service" "$extra/etc/systemd/system/vmlb-ready.service"

# mkosi 14 writes https://security.debian.org/debian-security for SUITE-security; the skeleton
# tree is copied (on Debian) after that and before `apt-get update`, so this file replaces it.
rm -rf "$dest/mkosi.skeleton"
if [ -n "$security" ]; then
  mkdir -p "$dest/mkosi.skeleton/etc/apt/sources.list.d"
  echo "deb $security $suite-security main" > "$dest/mkosi.skeleton/etc/apt/sources.list.d/$suite-security.list"
fi
mkdir -p "$dest/mkosi.output"
echo "mkosi project for examples/debian in $dest (Debian $suite from $mirror${security:+, security from $security})"
