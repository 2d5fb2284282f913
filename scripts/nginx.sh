#!/usr/bin/env bash
# Starts nginx (Debian's; installed if missing) on loopback with a generated config, serving a
# folder the way iolab's HTTP engines serve it: 1 worker, pinned with everything else nginx
# runs to one CPU, keep-alive without limit, sendfile, the open-file cache, no access log.
#
#   scripts/nginx.sh start ROOT [PORT] [CPU]   prints "listening on 127.0.0.1:PORT"
#   scripts/nginx.sh stop
#
# Its config, pid and error log live in $NGINX_DIR (default /tmp/iolab-nginx). NGINX_SENDFILE=off
# and NGINX_NOPUSH=off turn those two off (on by default, as production configs have them).
set -euo pipefail
NGINX_DIR=${NGINX_DIR:-/tmp/iolab-nginx}
cmd=${1:-}
case "$cmd" in
  start)
    root=$(realpath "${2:?usage: scripts/nginx.sh start ROOT [PORT] [CPU]}")
    port=${3:-8080}; cpu=${4:-0}
    [ -d "$root" ] || { echo "nginx.sh: $root is not a folder" >&2; exit 1; }
    if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
      echo "nginx.sh: installing nginx (Debian)" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
    fi
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    "$0" stop >/dev/null 2>&1 || true
    mkdir -p "$NGINX_DIR"
    # The worker's affinity mask: one bit per CPU, CPU 0 rightmost.
    mask=$(python3 -c "print(format(1 << $cpu, 'b'))" 2>/dev/null || echo 1)
    cat > "$NGINX_DIR/nginx.conf" <<CONF
worker_processes 1;
worker_cpu_affinity $mask;
pid $NGINX_DIR/nginx.pid;
error_log $NGINX_DIR/error.log warn;
events { worker_connections 16384; use epoll; multi_accept on; }
http {
  access_log off;
  sendfile ${NGINX_SENDFILE:-on}; tcp_nopush ${NGINX_NOPUSH:-on}; tcp_nodelay on;
  keepalive_timeout 300s; keepalive_requests 100000000;
  open_file_cache max=100000 inactive=600s; open_file_cache_valid 600s;
  client_body_temp_path $NGINX_DIR/body; proxy_temp_path $NGINX_DIR/proxy;
  fastcgi_temp_path $NGINX_DIR/fastcgi; uwsgi_temp_path $NGINX_DIR/uwsgi; scgi_temp_path $NGINX_DIR/scgi;
  types { text/html html htm; text/css css; text/javascript js; image/png png; }
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$port backlog=4096;
    root $root;
    location / { }
  }
}
CONF
    taskset -c "$cpu" "$NGINX" -c "$NGINX_DIR/nginx.conf" -p "$NGINX_DIR" 2>"$NGINX_DIR/start.err" || {
      cat "$NGINX_DIR/start.err" >&2; exit 1; }
    # Ready when it answers (bounded: 50 tries, 5 s).
    for _ in $(seq 50); do
      if curl -s -o /dev/null "http://127.0.0.1:$port/"; then echo "listening on 127.0.0.1:$port"; exit 0; fi
      sleep 0.1
    done
    echo "nginx.sh: nginx did not answer on port $port; see $NGINX_DIR/error.log" >&2; exit 1
    ;;
  stop)
    if [ -f "$NGINX_DIR/nginx.pid" ]; then
      kill "$(cat "$NGINX_DIR/nginx.pid")" 2>/dev/null || true
      for _ in $(seq 50); do [ -f "$NGINX_DIR/nginx.pid" ] || break; sleep 0.1; done
    fi
    ;;
  *) echo "usage: scripts/nginx.sh start ROOT [PORT] [CPU] | stop" >&2; exit 2 ;;
esac
