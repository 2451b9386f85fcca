#!/usr/bin/env bash
# Audit the sample app's dependencies for known vulnerabilities.
#
#   Python:     pip-audit on the environment it runs in. In the pipeline that is the setup
#               venv, which holds backend/requirements-dev.txt (and, through it,
#               backend/requirements.txt), transitive dependencies included. OSV is used as
#               the advisory service: pip-audit's default "pypi" service reports an
#               unreachable PyPI JSON API as "package not found" rather than as an error.
#   JavaScript: npm audit on frontend/package-lock.json (dev dependencies included).
#
# Exit codes:
#    0  every audit ran and found no known vulnerability
#    1  an audit ran and found known vulnerabilities
#    2  an audit tool failed for another reason (tool missing, no lockfile, crash, ...)
#   77  an advisory service could not be reached, so some dependencies were NOT audited
#       (the pipeline reports 77 as "skipped" through the task's skip_exit_codes)
# The worst outcome wins: 1, then 2, then 77, then 0.
set -u

cd "$(dirname "$0")/.." || exit 2 # the sample-app folder, whatever the caller's cwd

PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/security-audit.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT

say() { printf 'security-audit: %s\n' "$*"; }

# classify KIND RC REPORT STDERR -> prints "<outcome>\t<one-line summary>" on the first line,
# then detail lines. Outcomes: clean, vulnerable, unreachable, error. The decision rests on
# the tool's own report first: a well-formed report means the audit ran, whatever else was
# printed; only without one are the error messages matched against network failures.
classify() {
	"$PYTHON" - "$@" <<'PY'
import json, re, sys

kind, rc, report_path, stderr_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    with open(stderr_path, encoding="utf-8", errors="replace") as f:
        stderr = f.read()
except OSError:
    stderr = ""
try:
    with open(report_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    report = json.loads(text) if text.strip() else None
except (OSError, ValueError):
    report = None
if not isinstance(report, dict):
    report = None


def tail(text, lines=8):
    kept = [line for line in text.strip().splitlines() if "Unknown user config" not in line]
    return kept[-lines:]


def network_reason(text):
    checks = [
        (r"NameResolutionError|Name or service not known|Temporary failure in name resolution"
         r"|ENOTFOUND|EAI_AGAIN|getaddrinfo", "DNS lookup failed"),
        (r"Connection refused|ECONNREFUSED", "connection refused"),
        (r"Network is unreachable|ENETUNREACH|EHOSTUNREACH|No route to host", "network unreachable"),
        (r"timed out|Timeout|ETIMEDOUT|ESOCKETTIMEDOUT", "timed out"),
        (r"ProxyError|Tunnel connection failed", "proxy error"),
        (r"SSLError|CERT_|certificate", "TLS/certificate error"),
        (r"Connection reset|ECONNRESET|socket hang up|RemoteDisconnected", "connection reset"),
        (r"ConnectionError|Max retries exceeded|Failed to establish a new connection",
         "connection failed"),
    ]
    for pattern, reason in checks:
        if re.search(pattern, text):
            return reason
    return None


def emit(outcome, summary, details=()):
    print(f"{outcome}\t{summary}")
    for line in details:
        print(line)
    sys.exit(0)


if kind == "python":
    deps = report.get("dependencies") if report else None
    if isinstance(deps, list):
        vulnerable = [d for d in deps if d.get("vulns")]
        if vulnerable:
            details = []
            for dep in vulnerable:
                for vuln in dep["vulns"]:
                    fixes = ", ".join(vuln.get("fix_versions") or []) or "no fix yet"
                    details.append(f"  {dep['name']} {dep['version']}: {vuln['id']} (fixed in: {fixes})")
            count = sum(len(d["vulns"]) for d in vulnerable)
            emit("vulnerable", f"{count} known vulnerabilit{'y' if count == 1 else 'ies'} in "
                 f"{len(vulnerable)} Python package(s)", details)
        if rc == 0:
            emit("clean", f"Python dependencies audited: {len(deps)} packages, no known vulnerabilities")
        emit("error", f"pip-audit exited {rc} although its report lists no vulnerability", tail(stderr))
    reason = network_reason(stderr)
    if reason or re.search(r"ServiceError", stderr):
        emit("unreachable", f"cannot reach the OSV advisory service ({reason or 'service error'}; "
             "offline?); Python dependencies were NOT audited")
    emit("error", f"pip-audit failed (exit {rc}) without producing a report", tail(stderr))

if kind == "npm":
    meta = report.get("metadata", {}).get("vulnerabilities") if report else None
    if report and "auditReportVersion" in report and isinstance(meta, dict):
        total = meta.get("total", sum(v for k, v in meta.items() if isinstance(v, int)))
        if total:
            levels = ", ".join(f"{meta[k]} {k}" for k in ("critical", "high", "moderate", "low", "info")
                               if meta.get(k))
            details = [f"  {name} ({info.get('severity', '?')}): range {info.get('range', '?')}"
                       for name, info in sorted(report.get("vulnerabilities", {}).items())]
            emit("vulnerable", f"{total} known vulnerabilit{'y' if total == 1 else 'ies'} in "
                 f"JavaScript packages ({levels})", details)
        if rc == 0:
            count = report.get("metadata", {}).get("dependencies", {}).get("total", "?")
            emit("clean", f"JavaScript dependencies audited: {count} packages, no known vulnerabilities")
        emit("error", f"npm audit exited {rc} although its report lists no vulnerability", tail(stderr))
    message = str(report.get("message", "")) if report else ""
    code = str((report or {}).get("error", {}).get("code") or "")
    # npm says "audit endpoint returned an error" for every failure to talk to the advisory
    # endpoint (DNS, refused, HTTP errors such as a registry mirror answering 405).
    if "audit endpoint returned an error" in stderr or "statusCode" in (report or {}) \
            or network_reason(message + " " + code):
        status = (report or {}).get("statusCode")
        if status:
            reason = f"the registry's audit endpoint answered HTTP {status}"
        else:
            reason = (network_reason(message + " " + stderr) or "request failed") + "; offline?"
        emit("unreachable", f"cannot reach the npm advisory service ({reason}); "
             "JavaScript dependencies were NOT audited")
    emit("error", f"npm audit failed (exit {rc}){': ' + code if code else ''}", tail(stderr))

emit("error", f"unknown audit kind {kind!r}")
PY
}

worst=0
record() { # record OUTCOME: keep the worst exit code so far
	local code
	case "$1" in
	clean) code=0 ;;
	unreachable) code=77 ;;
	vulnerable) code=1 ;;
	*) code=2 ;;
	esac
	case "$worst:$code" in
	1:*) ;;
	*:1) worst=1 ;;
	2:*) ;;
	*:2) worst=2 ;;
	77:*) ;;
	*:77) worst=77 ;;
	esac
}

# run_audit KIND REPORT_FILE COMMAND...: run one audit, print its verdict line (and details).
run_audit() {
	local kind=$1 report=$2 rc verdict outcome label=Python
	shift 2
	[ "$kind" = npm ] && label=JavaScript
	if ! command -v "$1" >/dev/null 2>&1; then
		say "$1 not found on PATH (run the pipeline setup first); $label dependencies were NOT audited"
		record error
		return
	fi
	"$@" >"$tmp/$kind.stdout" 2>"$tmp/$kind.stderr"
	rc=$?
	if ! verdict=$(classify "$kind" "$rc" "$report" "$tmp/$kind.stderr"); then
		say "could not interpret the $label audit (is $PYTHON available?); $label dependencies were NOT audited"
		record error
		return
	fi
	outcome=${verdict%%$'\t'*}
	say "${verdict#*$'\t'}"
	record "$outcome"
}

run_audit python "$tmp/python.json" \
	pip-audit --vulnerability-service osv --progress-spinner off --format json --output "$tmp/python.json"

run_audit npm "$tmp/npm.stdout" \
	npm audit --prefix frontend --json

case $worst in
0) say "all dependencies audited, no known vulnerabilities" ;;
1) say "FAILED: known vulnerabilities found (see above)" ;;
2) say "FAILED: an audit could not run (see above)" ;;
77) say "SKIPPED: some dependencies could not be audited here (exit 77)" ;;
esac
exit "$worst"
