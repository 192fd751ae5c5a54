#!/bin/sh
# Gives MinIO the fleet's users and policies (deploy/README.md, "Credentials"); compose's
# minio-init one-shot runs it, after minio-policies wrote the policies of the teams file:
#
#   pool-credentials.sh POLICY_DIR ENV_DIR
#
# POLICY_DIR  what `node pool-policies.mjs TEAMS_FILE "$VMLB_SHARED" POLICY_DIR` wrote: pools (one
#             name a line), pool-<pool>.json, scheduler.json
# ENV_DIR     the env files: scheduler.env and worker-<pool>.env, whose S3_ACCESS_KEY and
#             S3_SECRET_KEY become the MinIO user of the scheduler and of each pool's workers
#
# Environment: MINIO_URL (default http://minio:9000), MINIO_ROOT_USER, MINIO_ROOT_PASSWORD, VMLB_SHARED.
# For each pool P: policy vmlb-pool-P (read and write its namespace, read the pools it trusts),
# user = worker-P.env's S3_ACCESS_KEY, that policy attached to it and no other. The scheduler: policy
# vmlb-scheduler (everything under PREFIX). The bucket of VMLB_SHARED is created when missing.
# Re-running it updates the policies and secrets in place; a pool no longer in the teams file
# keeps its user until removed (`mc admin user remove local KEY`).
set -eu
policies=${1:?usage: pool-credentials.sh POLICY_DIR ENV_DIR}
envdir=${2:?usage: pool-credentials.sh POLICY_DIR ENV_DIR}
minio_url=${MINIO_URL:-http://minio:9000}
: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${VMLB_SHARED:?}"

# Only sh and mc: the minio/mc image has no sed, grep or jq.
say() { echo "pool-credentials: $*"; }
fail() { echo "pool-credentials: $*" >&2; exit 2; }

# env_value FILE NAME: NAME's value in an env file (KEY=value lines, as compose reads them).
env_value() {
  _v=
  while IFS= read -r _line || [ -n "$_line" ]; do
    case $_line in "$2="*) _v=${_line#"$2="} ;; esac
  done < "$1"
  printf '%s' "$_v"
}

# ensure_user KEY SECRET POLICY: the user exists with this secret and this policy alone.
ensure_user() {
  mc admin user add local "$1" "$2" >/dev/null
  # Detach whatever else is attached (readwrite from before pools, another pool's policy).
  _info=$(mc admin user info local "$1" --json 2>/dev/null || true)
  _names=
  case $_info in
    *'"policyName":'*)
      _names=${_info#*'"policyName":'}
      _names=${_names#*'"'}
      _names=${_names%%'"'*}
      ;;
  esac
  _ifs=$IFS
  IFS=,
  for _p in $_names; do
    IFS=$_ifs
    [ "$_p" = "$3" ] || mc admin policy detach local "$_p" --user "$1" >/dev/null
  done
  IFS=$_ifs
  case ",$_names," in
    *",$3,"*) ;;
    *) mc admin policy attach local "$3" --user "$1" >/dev/null ;;
  esac
}

# credentials FILE WHAT: sets key and secret from the env file.
credentials() {
  [ -f "$1" ] || fail "$2: no $1 (its S3_ACCESS_KEY and S3_SECRET_KEY are the credentials to create)"
  key=$(env_value "$1" S3_ACCESS_KEY)
  secret=$(env_value "$1" S3_SECRET_KEY)
  [ -n "$key" ] && [ -n "$secret" ] || fail "$2: $1 has no S3_ACCESS_KEY and S3_SECRET_KEY"
  [ ${#key} -ge 3 ] || fail "$2: S3_ACCESS_KEY of $1 is shorter than 3 characters (MinIO refuses it)"
  [ ${#secret} -ge 8 ] || fail "$2: S3_SECRET_KEY of $1 is shorter than 8 characters (MinIO refuses it)"
}

[ -f "$policies/pools" ] && [ -f "$policies/scheduler.json" ] || fail "$policies has no pools and scheduler.json: run pool-policies.mjs first"
bucket=${VMLB_SHARED#s3://}
bucket=${bucket%%/*}

mc alias set local "$minio_url" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "local/$bucket" >/dev/null

credentials "$envdir/scheduler.env" scheduler
mc admin policy create local vmlb-scheduler "$policies/scheduler.json" >/dev/null
ensure_user "$key" "$secret" vmlb-scheduler
say "scheduler: user $key, policy vmlb-scheduler"

seen=" $key "
while read -r pool; do
  [ -n "$pool" ] || continue
  credentials "$envdir/worker-$pool.env" "pool $pool"
  case $seen in *" $key "*) fail "pool $pool: S3_ACCESS_KEY $key is already the scheduler's or another pool's (one user per pool)" ;; esac
  seen="$seen$key "
  mc admin policy create local "vmlb-pool-$pool" "$policies/pool-$pool.json" >/dev/null
  ensure_user "$key" "$secret" "vmlb-pool-$pool"
  say "pool $pool: user $key, policy vmlb-pool-$pool"
done < "$policies/pools"
say "bucket $bucket ready"
