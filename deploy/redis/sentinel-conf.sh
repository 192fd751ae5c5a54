#!/bin/sh
# Writes a sentinel's config file for the Sentinel variant (compose.sentinel.yaml; on bare metal
# with Debian's redis-sentinel, deploy/systemd/redis-sentinel.service.d/): sentinel-conf.sh OUT.
# Only when OUT does not exist yet: the sentinel rewrites it with what it learns (the replicas,
# the other sentinels, the current primary and its epoch), which a fresh file would throw away.
# To change a password later: SENTINEL SET vmlb auth-pass … on each sentinel (or remove OUT on
# one sentinel at a time: it learns the rest from the others).
#
#   REDIS_SENTINEL_PASSWORD       the sentinels' own password (requirepass; they use it with each
#                                 other too): the fleet's REDIS_SENTINEL_PASSWORD
#   REDIS_SENTINEL_AUTH_PASSWORD  the ACL user sentinel's on the data nodes (replication.acl)
#   REDIS_PRIMARY_HOST            the data node that is the primary at the first start
#   REDIS_PRIMARY_PORT            @default 6379
#   SENTINEL_ANNOUNCE_HOST        this sentinel's name as the others and the clients reach it
#   REDIS_SENTINEL_NAME           the master group name               @default vmlb
#   SENTINEL_PORT                 @default 26379
#   SENTINEL_BIND                 listen on these addresses only, if given
#   SENTINEL_DIR                  its working folder                   @default OUT's folder
#   SENTINEL_DOWN_AFTER_MS        no answer this long: the primary is down (in this sentinel's
#                                 view; a majority of them must agree)   @default 5000
#   SENTINEL_FAILOVER_TIMEOUT_MS  @default 60000
set -eu
out=${1:?usage: sentinel-conf.sh OUT}
if [ -s "$out" ]; then
  echo "sentinel-conf: $out exists (the sentinel's own state): kept"
  exit 0
fi
for n in REDIS_SENTINEL_PASSWORD REDIS_SENTINEL_AUTH_PASSWORD; do
  eval "v=\${$n:-}"
  if [ -z "$v" ]; then echo "sentinel-conf: $n is not set (env/fleet-sentinel.env, env/redis-sentinel.env)" >&2; exit 2; fi
  case $v in
    *[!A-Za-z0-9._~-]*) echo "sentinel-conf: $n: use letters, digits and . _ ~ - only" >&2; exit 2 ;;
  esac
done
: "${REDIS_PRIMARY_HOST:?sentinel-conf: REDIS_PRIMARY_HOST is not set (the first primary)}"
: "${SENTINEL_ANNOUNCE_HOST:?sentinel-conf: SENTINEL_ANNOUNCE_HOST is not set (the name others reach this sentinel by)}"
name=${REDIS_SENTINEL_NAME:-vmlb}
umask 077
{
  echo "port ${SENTINEL_PORT:-26379}"
  if [ -n "${SENTINEL_BIND:-}" ]; then echo "bind $SENTINEL_BIND"; fi
  echo "dir ${SENTINEL_DIR:-$(dirname "$out")}"
  # Host names, not addresses: containers get new addresses when they are recreated.
  echo 'sentinel resolve-hostnames yes'
  echo 'sentinel announce-hostnames yes'
  echo "sentinel announce-ip $SENTINEL_ANNOUNCE_HOST"
  echo "requirepass $REDIS_SENTINEL_PASSWORD"
  # A majority of three: two sentinels must agree that the primary is down.
  echo "sentinel monitor $name $REDIS_PRIMARY_HOST ${REDIS_PRIMARY_PORT:-6379} 2"
  echo "sentinel auth-user $name sentinel"
  echo "sentinel auth-pass $name $REDIS_SENTINEL_AUTH_PASSWORD"
  echo "sentinel down-after-milliseconds $name ${SENTINEL_DOWN_AFTER_MS:-5000}"
  echo "sentinel failover-timeout $name ${SENTINEL_FAILOVER_TIMEOUT_MS:-60000}"
  echo "sentinel parallel-syncs $name 1"
} > "$out.tmp"
mv "$out.tmp" "$out"
if [ "$(id -u)" = 0 ] && id redis >/dev/null 2>&1; then chown redis "$out"; fi
echo "sentinel-conf: $out (master $name, first primary $REDIS_PRIMARY_HOST)"
