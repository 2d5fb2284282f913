#!/usr/bin/env bash
# Two load agents on "other hosts" of this machine: network namespaces joined by a bridge in
# the server's namespace, each agent's running its own sshd. Sweeps ENGINE twice against the
# same kind of server: once from the local generator, once from the two agents over ssh
# (`sweep --agents`), and prints both knee tables.
#   sudo scripts/agents_netns.sh [ENGINE] [RATES] [OUT]
# Needs root, iproute2, OpenSSH (server and client) and a release build (cargo build --release).
set -euo pipefail
ENGINE=${1:-epoll}
RATES=${2:-10000,40000,80000,150000}
OUT=${3:-results/agents-$(date +%s)}
BIN=$(realpath "${IOLAB:-target/release/iolab}")
DURATION=${DURATION:-2s}
WARMUP=${WARMUP:-500ms}
REPEAT=${REPEAT:-3}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
tag=$$
S=iolab-xs$tag
A=(iolab-x0-$tag iolab-x1-$tag)
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for ns in "${A[@]}" "$S"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$S"
ip -n "$S" link set lo up
ip -n "$S" link add br0 type bridge
ip -n "$S" addr add 10.79.0.1/24 dev br0
ip -n "$S" link set br0 up
ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/id"
cp "$work/id.pub" "$work/authorized_keys"
mkdir -p /run/sshd
cat > "$work/ssh_config" <<CONF
Host *
  User root
  IdentityFile $work/id
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
CONF
: > "$work/agents"
for k in 0 1; do
  ns=${A[$k]} addr=10.79.0.$((k + 2))
  ip netns add "$ns"
  ip -n "$S" link add "v$k" type veth peer name eth0 netns "$ns"
  ip -n "$S" link set "v$k" master br0 up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  cat > "$work/sshd_$k" <<CONF
ListenAddress $addr
HostKey $work/host_key
AuthorizedKeysFile $work/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $work/sshd_$k.pid
CONF
  ip netns exec "$ns" /usr/sbin/sshd -D -e -f "$work/sshd_$k" 2>"$work/sshd_$k.log" &
  pids+=($!)
  echo "root@$addr:1" >> "$work/agents"
done
for _ in $(seq 50); do
  if grep -q "Server listening" "$work/sshd_0.log" && grep -q "Server listening" "$work/sshd_1.log"; then break; fi
  sleep 0.1
done
common=(--engines "$ENGINE" --rates "$RATES" --duration "$DURATION" --warmup "$WARMUP"
        --repeat "$REPEAT" --server-cpus 0 --load-cpus 1 --server-addr 10.79.0.1:0)
echo "== $ENGINE from the local generator (CPU 1)"
ip netns exec "$S" "$BIN" sweep "${common[@]}" --out "$OUT/local"
echo "== $ENGINE from two agents over ssh (each pinned to CPU 1 of this 2-core machine)"
ip netns exec "$S" "$BIN" sweep "${common[@]}" --agents "$work/agents" --ssh-config "$work/ssh_config" \
  --agent-iolab "$BIN" --out "$OUT/agents"
"$BIN" report "$OUT/agents" >/dev/null
echo "== knees: local"; "$BIN" knee "$OUT/local"
echo "== knees: two agents"; "$BIN" knee "$OUT/agents"
echo "results in $OUT (report: $OUT/agents/report.html)"
