#!/usr/bin/env bash
# Runs a command from an image in the background with buildah's chroot isolation, for hosts
# where no OCI runtime works (no cgroups, no network or PID namespace: services bind the
# host's ports), and stops it by the command's own PID. Where one works, prefer
#   podman --runtime runc run -d --network host --ulimit nofile=N:N IMAGE ARGS...
#
#   run.sh start NAME IMAGE [buildah-run options] -- CMD [ARG...]   prints the PID
#   run.sh stop NAME                                                 SIGTERM, wait, rm
# Knobs: STATE (dir for NAME.pid/.bpid/.log, default var/container), NOFILE (open-files
# limit, default the host's hard limit), HEALTH_URL (start waits until it answers 2xx),
# WAIT (s, default 60). Give values to -e: `-e VAR="$VAR"` (a bare `-e VAR` passes nothing).
set -euo pipefail
hard=$(ulimit -Hn); [ "$hard" = unlimited ] && hard=1048576
STATE=${STATE:-var/container} NOFILE=${NOFILE:-$hard} WAIT=${WAIT:-60}
cmd=${1:?start|stop} name=${2:?NAME}
mkdir -p "$STATE"
pidf=$STATE/$name.pid bpidf=$STATE/$name.bpid log=$STATE/$name.log
alive() { kill -0 "$1" 2>/dev/null; }

if [ "$cmd" = stop ]; then
  pid=$(cat "$pidf" 2>/dev/null || true) bpid=$(cat "$bpidf" 2>/dev/null || true)
  # Signal the command itself: a signal to `buildah run` is not forwarded, it orphans it.
  if [ -n "$pid" ] && alive "$pid"; then kill -TERM "$pid"; fi
  for _ in $(seq $((WAIT * 10))); do
    { [ -n "$pid" ] && alive "$pid"; } || { [ -n "$bpid" ] && alive "$bpid"; } || break
    sleep 0.1
  done
  if [ -n "$pid" ] && alive "$pid"; then kill -KILL "$pid"; fi
  buildah rm "$name" >/dev/null 2>&1 || true
  rm -f "$pidf" "$bpidf"
  exit 0
fi

[ "$cmd" = start ] || { echo "run.sh: start|stop" >&2; exit 2; }
image=${3:?IMAGE}; shift 3
opts=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
[ "${1:-}" = -- ] && shift
[ $# -gt 0 ] || { echo "run.sh: no command after --" >&2; exit 2; }
buildah rm "$name" >/dev/null 2>&1 || true
buildah from --quiet --name "$name" --ulimit "nofile=$NOFILE:$NOFILE" "$image" >/dev/null
# chroot isolation shares the host's PID namespace: the shell's $$ is a host PID, and exec
# makes it the command's. It is the first line of the log.
buildah run --isolation chroot "${opts[@]}" "$name" -- \
  sh -c 'echo "run.sh pid $$"; exec "$@"' sh "$@" >"$log" 2>&1 &
echo $! >"$bpidf"
pid=
for _ in $(seq $((WAIT * 10))); do
  pid=$(sed -n '1s/^run.sh pid //p' "$log")
  [ -n "$pid" ] && break
  alive "$(cat "$bpidf")" || break
  sleep 0.1
done
[ -n "$pid" ] || { echo "run.sh: $name did not start" >&2; tail -20 "$log" >&2; exit 1; }
echo "$pid" >"$pidf"
if [ -n "${HEALTH_URL:-}" ]; then
  for _ in $(seq $((WAIT * 10))); do
    curl -fsS -o /dev/null "$HEALTH_URL" 2>/dev/null && break
    alive "$pid" || { echo "run.sh: $name exited" >&2; tail -20 "$log" >&2; exit 1; }
    sleep 0.1
  done
  curl -fsS -o /dev/null "$HEALTH_URL" || { echo "run.sh: $HEALTH_URL not healthy" >&2; exit 1; }
fi
echo "$pid"
