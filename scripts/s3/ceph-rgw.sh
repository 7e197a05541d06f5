#!/usr/bin/env bash
# Single-host Ceph RADOS Gateway (S3) on loopback for mediacdn's test suite (make test).
#   1 mon + 1 OSD (memstore = RAM-backed, or bluestore on a sparse file) + radosgw (beast), no mgr, auth none.
# Usage:  ceph-rgw.sh start   -> installs (if needed), starts, waits, prints endpoint + keys, writes $DIR/s3.env
#         ceph-rgw.sh stop    -> kills the daemons this script started (PIDs from $DIR/*.pid), removes $DIR
# Env knobs (defaults):
#   DIR=${TMPDIR:-/tmp}/ceph-rgw  RGW_PORT=17480  MON_V2_PORT=13300  MON_V1_PORT=16789
#   OSD_STORE=memstore|bluestore  STORE_BYTES=4294967296 (memstore RAM cap / bluestore sparse file size)
#   S3_ACCESS_KEY=testaccesskey  S3_SECRET_KEY=testsecretkey  SKIP_INSTALL=0
set -euo pipefail

DIR=${DIR:-${TMPDIR:-/tmp}/mediacdn-ceph-rgw}
RGW_PORT=${RGW_PORT:-17480}
MON_V2_PORT=${MON_V2_PORT:-13300}
MON_V1_PORT=${MON_V1_PORT:-16789}
OSD_STORE=${OSD_STORE:-memstore}
STORE_BYTES=${STORE_BYTES:-4294967296}
S3_ACCESS_KEY=${S3_ACCESS_KEY:-testaccesskey}
S3_SECRET_KEY=${S3_SECRET_KEY:-testsecretkey}
CONF=$DIR/ceph.conf

log() { echo "[ceph-rgw $(date +%T)] $*" >&2; }

kill_daemons() {
  [ -d "$DIR" ] || return 0
  # throwaway cluster: SIGKILL is safe and fast (a graceful OSD stop waits for the mon for seconds)
  local pids=""
  for n in rgw osd mon; do
    [ -f "$DIR/$n.pid" ] && pids="$pids $(cat "$DIR/$n.pid")"
  done
  for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in $pids; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  rm -f "$DIR"/*.pid
}

stop() { kill_daemons; rm -rf "$DIR"; }

dump_logs() {
  log "FAILED; last log lines:"
  for f in "$DIR"/log/*.log "$DIR"/*.out; do [ -f "$f" ] && { echo "== $f"; tail -n 30 "$f"; }; done >&2
  kill_daemons   # leave no half-started cluster behind; logs stay in $DIR
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local t=$1 what=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then log "timeout waiting for $what"; dump_logs; exit 1; fi
    for f in "$DIR"/*.pid; do   # fail fast if a daemon we started has died
      [ -f "$f" ] && ! kill -0 "$(cat "$f")" 2>/dev/null && { log "$(basename "$f" .pid) died while waiting for $what"; dump_logs; exit 1; }
    done
    sleep 0.2
  done
}

start() {
  if [ "${SKIP_INSTALL:-0}" != 1 ] && ! { command -v radosgw && command -v ceph-osd && command -v ceph-mon; } >/dev/null; then
    log "installing radosgw ceph-mon ceph-osd (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends radosgw ceph-mon ceph-osd >/dev/null
  fi

  stop
  trap 'log "error at line $LINENO"; dump_logs' ERR   # never leave a half-started cluster running
  mkdir -p "$DIR"/{mon.a,osd.0,run,log,rgw}
  local fsid; fsid=$(cat /proc/sys/kernel/random/uuid)
  local monaddr="[v2:127.0.0.1:$MON_V2_PORT,v1:127.0.0.1:$MON_V1_PORT]"
  local store_conf
  if [ "$OSD_STORE" = memstore ]; then
    store_conf="osd objectstore = memstore
memstore device bytes = $STORE_BYTES"
  else
    store_conf="osd objectstore = bluestore
bluestore block path = $DIR/osd.0.block
bluestore block create = true
bluestore block size = $STORE_BYTES
bluestore fsck on mkfs = false
bluestore fsck on mount = false
osd memory target = 1073741824
bdev enable discard = false
bluestore block db create = false
bluestore block wal create = false"
  fi

  cat > "$CONF" <<EOF
[global]
fsid = $fsid
mon host = $monaddr
# loopback-only test cluster: no authentication between daemons
auth cluster required = none
auth service required = none
auth client required = none
# daemons acting as clients (radosgw) default to 'secure' mode, which needs cephx -> allow crc
ms mon client mode = crc secure
ms bind ipv6 = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
# commit mon map changes (pool creation, osd boot) every 10ms instead of every 1s
paxos propose interval = 0.01
paxos min wait = 0.001
# never let a nearly-full CI disk stop the mon
mon data avail crit = 0
mon data avail warn = 0
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
[mon.a]
mon data = $DIR/mon.a
[osd]
osd data = $DIR/osd.\$id
public addr = 127.0.0.1
cluster addr = 127.0.0.1
$store_conf
[client.rgw.gw]
rgw data = $DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT tcp_nodelay=1
rgw thread pool size = 128
# reclaim space of deleted multipart/large objects quickly (default waits 2h)
rgw gc obj min wait = 30
rgw gc processor period = 30
EOF

  log "mon"
  monmaptool --create --fsid "$fsid" --addv a "$monaddr" "$DIR/monmap" >/dev/null
  ceph-mon -c "$CONF" -i a --mkfs --monmap "$DIR/monmap"
  ceph-mon -c "$CONF" -i a -f >"$DIR/mon.out" 2>&1 &
  echo $! > "$DIR/mon.pid"
  wait_for 30 "mon quorum" timeout 5 ceph -c "$CONF" --connect-timeout 3 mon stat

  log "osd ($OSD_STORE)"
  local ouuid; ouuid=$(cat /proc/sys/kernel/random/uuid)
  ceph -c "$CONF" osd new "$ouuid" >/dev/null
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$ouuid" >"$DIR/osd-mkfs.out" 2>&1 || { log "osd mkfs failed"; dump_logs; exit 1; }
  ceph-osd -c "$CONF" -i 0 -f >"$DIR/osd.out" 2>&1 &
  echo $! > "$DIR/osd.pid"
  wait_for 60 "osd up" bash -c "ceph -c '$CONF' osd dump 2>/dev/null | grep -q '^osd.0 up'"

  log "rgw pools"
  # pre-create the default-zone pools in one ceph session (rgw would otherwise create them one by one)
  {
    for p in .rgw.root default.rgw.log default.rgw.control default.rgw.meta \
             default.rgw.buckets.index default.rgw.buckets.data default.rgw.buckets.non-ec; do
      echo "osd pool create $p 8 8 replicated"
      echo "osd pool application enable $p rgw"
    done
  } | ceph -c "$CONF" >/dev/null 2>&1 || log "pool pre-creation failed; radosgw will create the pools itself"

  log "radosgw"
  radosgw -c "$CONF" -n client.rgw.gw -f >"$DIR/rgw.out" 2>&1 &
  echo $! > "$DIR/rgw.pid"
  wait_for 120 "radosgw http" curl -sf -o /dev/null "http://127.0.0.1:$RGW_PORT/"

  radosgw-admin -c "$CONF" user create --uid=test --display-name="Test User" \
      --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY" >/dev/null
  # the key must be visible to the gateway (metadata cache) before we report ready
  wait_for 30 "s3 auth" bash -c "curl -s -o /dev/null -w '%{http_code}' \
      --aws-sigv4 'aws:amz:us-east-1:s3' --user '$S3_ACCESS_KEY:$S3_SECRET_KEY' \
      -H 'x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' \
      http://127.0.0.1:$RGW_PORT/ | grep -q 200"

  cat > "$DIR/s3.env" <<EOF
S3_ENDPOINT_URL=http://127.0.0.1:$RGW_PORT
AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY
AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
AWS_DEFAULT_REGION=us-east-1
S3_PIDS="$(cat "$DIR/rgw.pid") $(cat "$DIR/osd.pid") $(cat "$DIR/mon.pid")"
EOF
  trap - ERR
  log "ready"
  cat "$DIR/s3.env"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
