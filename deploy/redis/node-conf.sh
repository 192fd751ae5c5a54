#!/bin/sh
# Writes the config file of a data node of the Sentinel variant (compose.sentinel.yaml; on bare
# metal with Debian's redis-server, deploy/systemd/redis-server.service.d/): node-conf.sh OUT.
# Only when OUT does not exist yet: from then on the node's role is the sentinels' (after each
# REPLICAOF they send CONFIG REWRITE, which rewrites OUT), and a fresh file would bring a demoted
# primary back as a primary.
#
#   REDIS_REPLICA_PASSWORD  the ACL user replica's (replication.acl): this node's link to the
#                           primary whenever it is a replica (masteruser/masterauth)
#   REDIS_ANNOUNCE_HOST     this node's name as the sentinels, the other nodes and the clients
#                           reach it (compose: its service name)
#   REDIS_PRIMARY_HOST      given: this node starts as a replica of that one (first start only)
#   REDIS_PRIMARY_PORT      @default 6379
#   REDIS_ACLFILE           the rendered ACL file (render-acl.sh), if any
#   REDIS_PORT              @default 6379
#   REDIS_BIND              listen on these addresses only, if given
#   REDIS_DIR               its data (the append-only files)   @default OUT's folder
set -eu
out=${1:?usage: node-conf.sh OUT}
if [ -s "$out" ]; then
  echo "node-conf: $out exists (the sentinels keep its role there): kept"
  exit 0
fi
: "${REDIS_REPLICA_PASSWORD:?node-conf: REDIS_REPLICA_PASSWORD is not set (env/redis-sentinel.env)}"
: "${REDIS_ANNOUNCE_HOST:?node-conf: REDIS_ANNOUNCE_HOST is not set (the name others reach this node by)}"
case $REDIS_REPLICA_PASSWORD in
  *[!A-Za-z0-9._~-]*) echo "node-conf: REDIS_REPLICA_PASSWORD: use letters, digits and . _ ~ - only" >&2; exit 2 ;;
esac
umask 077
{
  echo "port ${REDIS_PORT:-6379}"
  if [ -n "${REDIS_BIND:-}" ]; then echo "bind $REDIS_BIND"; fi
  echo "dir ${REDIS_DIR:-$(dirname "$out")}"
  if [ -n "${REDIS_ACLFILE:-}" ]; then echo "aclfile $REDIS_ACLFILE"; fi
  # BullMQ's queue: every write to the append-only file (fsync each second), never an evicted key.
  echo 'appendonly yes'
  echo 'appendfsync everysec'
  echo 'maxmemory-policy noeviction'
  echo 'masteruser replica'
  echo "masterauth $REDIS_REPLICA_PASSWORD"
  echo "replica-announce-ip $REDIS_ANNOUNCE_HOST"
  if [ -n "${REDIS_PRIMARY_HOST:-}" ]; then echo "replicaof $REDIS_PRIMARY_HOST ${REDIS_PRIMARY_PORT:-6379}"; fi
} > "$out.tmp"
mv "$out.tmp" "$out"
if [ "$(id -u)" = 0 ] && id redis >/dev/null 2>&1; then chown redis "$out"; fi
if [ -n "${REDIS_PRIMARY_HOST:-}" ]; then echo "node-conf: $out (a replica of $REDIS_PRIMARY_HOST)"; else echo "node-conf: $out (the primary)"; fi
