#!/usr/bin/env bash
# `make test`: start a real S3 server, run the whole suite, stop the server, keep pytest's status.
#   MEDIACDN_TEST_S3_ENDPOINT set  -> use that server (with MEDIACDN_TEST_S3_ACCESS_KEY/SECRET_KEY)
#   else, root with apt            -> Ceph RADOS Gateway on loopback (scripts/s3/ceph-rgw.sh)
#   else                           -> the suite starts moto's server itself
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export CEPH_DIR=${TMPDIR:-/tmp}/mediacdn-ceph-rgw-$$
started_ceph=0

stop_ceph() {
  if [ "$started_ceph" = 1 ]; then DIR=$CEPH_DIR scripts/s3/ceph-rgw.sh stop >/dev/null 2>&1; fi
}
trap stop_ceph EXIT

if [ -n "${MEDIACDN_TEST_S3_ENDPOINT:-}" ]; then
  echo "make test: S3 server = $MEDIACDN_TEST_S3_ENDPOINT (from MEDIACDN_TEST_S3_ENDPOINT)"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "${MEDIACDN_TEST_NO_CEPH:-0}" != 1 ]; then
  t0=$SECONDS
  if DIR=$CEPH_DIR RGW_PORT=${RGW_PORT:-17480} scripts/s3/ceph-rgw.sh start >/tmp/mediacdn-ceph-$$.log 2>&1; then
    started_ceph=1
    # shellcheck disable=SC1090
    . "$CEPH_DIR/s3.env"
    export MEDIACDN_TEST_S3_ENDPOINT=$S3_ENDPOINT_URL
    export MEDIACDN_TEST_S3_ACCESS_KEY=$AWS_ACCESS_KEY_ID MEDIACDN_TEST_S3_SECRET_KEY=$AWS_SECRET_ACCESS_KEY
    export MEDIACDN_TEST_S3_KIND=ceph MEDIACDN_TEST_S3_PIDS=$S3_PIDS
    unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY S3_ENDPOINT_URL
    echo "make test: S3 server = Ceph RADOS Gateway at $MEDIACDN_TEST_S3_ENDPOINT (ready in $((SECONDS - t0)) s)"
  else
    echo "make test: Ceph RGW did not start (log: /tmp/mediacdn-ceph-$$.log); falling back to moto"
    tail -n 20 /tmp/mediacdn-ceph-$$.log
  fi
else
  echo "make test: S3 server = moto (started by the suite; Ceph needs root with apt, and MEDIACDN_TEST_NO_CEPH unset)"
fi

# Tests in 3 processes (MEDIACDN_TEST_WORKERS=0: one); a module marked xdist_group stays
# in one of them (its shared services, fixed names or addresses).
$PY -m pytest -n "${MEDIACDN_TEST_WORKERS:-3}" --dist loadgroup --durations=15 "$@"
status=$?
exit $status
