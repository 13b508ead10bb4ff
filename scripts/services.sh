#!/usr/bin/env bash
# Starts the services the tests talk to, when they are not running already.
set -euo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! listening 1883; then
  echo "services: starting mosquitto"
  mosquitto -d -c /etc/mosquitto/mosquitto.conf
fi
if ! listening 6379 && command -v redis-server >/dev/null; then
  echo "services: starting redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
if ! listening 5432 && command -v pg_ctlcluster >/dev/null; then
  echo "services: starting postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
fi
for port in 1883 6379 5432; do
  for _ in $(seq 50); do listening "$port" && break; sleep 0.1; done
  listening "$port" || { echo "services: nothing listens on 127.0.0.1:$port" >&2; exit 1; }
done
