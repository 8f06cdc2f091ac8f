#!/usr/bin/env bash
# Install the command-line tools the test suite uses, when they are missing.
# Idempotent: a tool already on PATH is left alone. Skips quietly (exit 0) when apt is unavailable,
# and the tests then skip with a reason naming the missing tool.
#   docker-compose  Debian's package; validates compose.yml offline (`docker-compose -f compose.yml config`)
#   curl, jq, psql  the operator commands in docs/operations.md, run as written by tests/test_operations_doc.py
#   chromium        Debian's headless browser; tests/test_control_plane_browser.py opens a hostile page in it
# kubectl is expected on the machine already (`kubectl kustomize deploy/k3s` validates deploy/k3s offline).
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

need_apt=()
have docker-compose || need_apt+=(docker-compose)
have curl || need_apt+=(curl)
have jq || need_apt+=(jq)
have psql || need_apt+=(postgresql-client)
have chromium || have chromium-browser || need_apt+=(chromium)

if [ "${#need_apt[@]}" -eq 0 ]; then
    exit 0
fi

if ! have apt-get; then
    echo "ensure-tools: apt-get unavailable; not installing ${need_apt[*]} (tests that need them will skip or name the package)" >&2
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if have sudo && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "ensure-tools: not root and no sudo; not installing ${need_apt[*]} (tests that need them will skip or name the package)" >&2
        exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
install() { ${SUDO[@]+"${SUDO[@]}"} apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null; }

# An install from a stale or empty package list fails; refresh the list once and try again.
if ! install 2>/dev/null; then
    ${SUDO[@]+"${SUDO[@]}"} apt-get update -q >/dev/null || true
    if ! install; then
        echo "ensure-tools: could not install ${need_apt[*]} (tests that need them will skip or name the package)" >&2
        exit 0
    fi
fi
echo "ensure-tools: installed ${need_apt[*]}"
