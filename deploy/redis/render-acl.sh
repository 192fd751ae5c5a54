#!/bin/sh
# Renders the fleet's Redis ACL file (users.acl, a template) with the passwords from the
# environment: render-acl.sh TEMPLATE OUT. compose.yaml runs it before redis-server --aclfile OUT;
# the tests run it with test passwords (test/pool-credentials.test.ts). Comment lines are dropped.
#
# Every ${REDIS_…_PASSWORD} of the template must be set to letters, digits and . _ ~ - only
# (a password goes into an ACL line and into REDIS_URL as it is: `openssl rand -hex 32`).
set -eu
tpl=${1:?usage: render-acl.sh TEMPLATE OUT}
out=${2:?usage: render-acl.sh TEMPLATE OUT}
names=$(grep -v '^#' "$tpl" | grep -o '\${REDIS_[A-Z_]*_PASSWORD}' | sed 's/^\${//; s/}$//' | sort -u)
[ -n "$names" ] || { echo "render-acl: $tpl names no \${REDIS_…_PASSWORD}" >&2; exit 2; }
for n in $names; do
  eval "v=\${$n:-}"
  if [ -z "$v" ]; then echo "render-acl: $n is not set (env/redis.env)" >&2; exit 2; fi
  case $v in
    *[!A-Za-z0-9._~-]*) echo "render-acl: $n: use letters, digits and . _ ~ - only (e.g. openssl rand -hex 32)" >&2; exit 2 ;;
  esac
  if [ ${#v} -lt 16 ]; then echo "render-acl: $n: at least 16 characters" >&2; exit 2; fi
done
umask 077
# Redis takes no comments in an ACL file: only the user lines are written.
awk '/^[[:space:]]*(#|$)/ { next } {
  while (match($0, /\$\{REDIS_[A-Z_]+_PASSWORD\}/)) {
    name = substr($0, RSTART + 2, RLENGTH - 3)
    $0 = substr($0, 1, RSTART - 1) ENVIRON[name] substr($0, RSTART + RLENGTH)
  }
  print
}' "$tpl" > "$out.tmp"
mv "$out.tmp" "$out"
# The official image's entrypoint runs redis-server as the user redis.
if [ "$(id -u)" = 0 ] && id redis >/dev/null 2>&1; then chown redis "$out"; fi
echo "render-acl: $out (users: $(grep -o '^user [^ ]*' "$out" | cut -d' ' -f2 | tr '\n' ' '))"
