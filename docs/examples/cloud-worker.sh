#!/bin/sh
# A start/stop provisioner for workers on cloud machines (example for realms.yml):
#   provisioner:
#     start: sh docs/examples/cloud-worker.sh start {name} {query_type} {broker} {token}
#     stop:  sh docs/examples/cloud-worker.sh stop {name} {address}
# "start" prints the new worker's host:port as its last line; "stop" removes it.
set -eu
action=$1; name=$2
case "$action" in
  start)
    query_type=$3; broker=$4; token=$5
    # Any cloud CLI works the same way; this one uses a generic "cloud" command.
    ip=$(cloud instances create "$name" --image rentahal-worker --wait \
          --metadata "cmd=rentahal worker --host 0.0.0.0 --port 8000 --type $query_type --broker $broker --token $token" \
          --format 'value(ip)')
    echo "$ip:8000"
    ;;
  stop)
    cloud instances delete "$name" --quiet
    ;;
esac
