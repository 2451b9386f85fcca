#!/usr/bin/env bash
# Show flow runs executing inside the worker image, against a throwaway Prefect server.
#
#   docker/verify.sh [run] [process-worker] [docker-pool] [fleet-docker]   # default: all
#
#   run             `python -m flows.deploy pipeline` in a container (podman run)
#   process-worker  the `pipeline` deployment (deployed from inside the image) picked up by
#                   a process worker running in a container
#   docker-pool     the `pipeline-docker` deployment (docker/prefect-docker.yaml) picked up by
#                   prefect-docker's worker on the host, which starts the flow run's container
#                   through podman's Docker-compatible API socket
#   fleet-docker    (after docker-pool, same worker) the simulated fleet on the Docker pool:
#                   `issue-poller-docker` dispatches one `resolve-issue-docker` run per mock
#                   issue, each in its own container, sharing the workspace volume
#
# Each check asks the server (docker/check-run.py) that the flow run Completed and has its
# task runs. Starts a Prefect server on a free loopback port with a temporary PREFECT_HOME,
# and for docker-pool `podman system service` on a temporary socket; everything it started is
# stopped on exit. Needs the image (docker/build-image.sh) and the project's venv (.venv).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=podman/env.sh
. "$here/podman/env.sh"
IMAGE="${IMAGE:-localhost/prefect-parallel-agents:latest}"
venv="${VENV:-$repo/.venv}"
checks=("$@")
[[ ${#checks[@]} -gt 0 ]] || checks=(run process-worker docker-pool fleet-docker)

work="$(mktemp -d /tmp/ppa-verify.XXXXXX)"
pids=()
containers=()
volumes=()
cleanup() {
    for c in "${containers[@]}"; do podman rm -f "$c" >/dev/null 2>&1 || true; done
    # the named volumes that docker/prefect-docker.yaml's flow-run containers share
    for v in "${volumes[@]}"; do podman volume rm -f "$v" >/dev/null 2>&1 || true; done
    # Newest first: the workers before the podman service and the server they talk to.
    local i p
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        p="${pids[i]}"
        kill "$p" 2>/dev/null || continue
        for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export PREFECT_HOME="$work/prefect-home" PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_API_URL="http://127.0.0.1:$port/api"
"$venv/bin/prefect" server start --host 127.0.0.1 --port "$port" >"$work/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do
    curl -fs "$PREFECT_API_URL/health" >/dev/null 2>&1 && break
    sleep 1
done
curl -fs "$PREFECT_API_URL/health" >/dev/null || { cat "$work/server.log"; exit 1; }
echo "Prefect server at $PREFECT_API_URL (PREFECT_HOME $PREFECT_HOME)"

in_image() { podman run --rm --network host -e PREFECT_API_URL "$IMAGE" "$@"; }
run_id() { grep -oE 'UUID: [0-9a-f-]{36}' | awk '{print $2}'; }
failed=0
report() {
    if "$venv/bin/python" "$here/check-run.py" "$@"; then echo "PASS"; else echo "FAIL"; failed=1; fi
}

for check in "${checks[@]}"; do
    echo
    echo "=== $check"
    start=$(date +%s)
    case "$check" in
    run)
        podman run --rm --network host -e PREFECT_API_URL "$IMAGE" \
            python -m flows.deploy pipeline --config examples/multi-agent-config.yml \
            | tail -n 4
        echo "container run took $(($(date +%s) - start)) s"
        report --last 1
        ;;
    process-worker)
        in_image sh -c 'prefect work-pool create local-process --type process >/dev/null 2>&1;
            prefect --no-prompt deploy --name pipeline >/dev/null && echo "deployed pipeline/pipeline from /opt/app"'
        name="ppa-verify-worker-$$"
        podman run -d --name "$name" --network host -e PREFECT_API_URL "$IMAGE" \
            prefect worker start --pool local-process --name "$name" >/dev/null
        containers+=("$name")
        id="$("$venv/bin/prefect" deployment run pipeline/pipeline | run_id)"
        echo "flow run $id triggered; worker container $name"
        report "$id" --wait 300
        podman logs "$name" 2>&1 | grep -E "submitting flow run|Completed\(" | tail -n 2
        echo "took $(($(date +%s) - start)) s"
        ;;
    docker-pool)
        sock="$work/podman.sock"
        podman system service --time=0 "unix://$sock" >"$work/podman-service.log" 2>&1 &
        pids+=($!)
        volumes+=(ppa-setup-cache ppa-workspace)
        for _ in $(seq 30); do [[ -S "$sock" ]] && break; sleep 0.5; done
        # the pool, its priority queues (the fleet's dispatch uses them), crash detection
        (cd "$repo" && "$venv/bin/python" -m flows.deploy init --pool docker-pool --type docker \
            --workers 3 | head -n 1)
        (cd "$repo" && "$venv/bin/prefect" --no-prompt deploy \
            --prefect-file docker/prefect-docker.yaml --all >/dev/null)
        echo "deployed docker/prefect-docker.yaml: pipeline-docker, issue-poller-docker, resolve-issue-docker"
        DOCKER_HOST="unix://$sock" "$venv/bin/prefect" worker start --pool docker-pool \
            --name ppa-verify-docker-worker >"$work/docker-worker.log" 2>&1 &
        pids+=($!)
        id="$("$venv/bin/prefect" deployment run pipeline/pipeline-docker | run_id)"
        echo "flow run $id triggered; Docker worker on DOCKER_HOST=unix://$sock"
        report "$id" --wait 600
        grep -E "Creating Docker container|status 'running'|Finished in state" \
            "$work/docker-worker.log" | grep -v "Task run" | tail -n 4
        echo "took $(($(date +%s) - start)) s"
        ;;
    fleet-docker)
        [[ -f "$work/docker-worker.log" ]] || { echo "fleet-docker needs docker-pool first" >&2; exit 2; }
        # no simulated agent failures: the check is that every dispatched run completes
        id="$("$venv/bin/prefect" deployment run issue-poller/issue-poller-docker \
            --param 'overrides={"failure_rate": 0}' | run_id)"
        echo "poller run $id triggered"
        report "$id" --wait 600 --min-tasks 0  # the poller has no task runs of its own
        sleep 5
        report --deployment resolve-issue-docker --last 2 --wait 600
        grep -oE "Creating Docker container '[^']+'" "$work/docker-worker.log" | sort -u \
            | wc -l | sed 's/^/flow-run containers the Docker worker created: /'
        echo "took $(($(date +%s) - start)) s"
        ;;
    *)
        echo "unknown check $check (run, process-worker, docker-pool)" >&2
        exit 2
        ;;
    esac
done
exit "$failed"
