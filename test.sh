#!/usr/bin/env bash
# The test command (the README's second command; .ci/run runs exactly it).
#
# Some tests drive outside tools: the dashboard test a headless chromium
# (chromium, chromium-driver), the metrics test promtool (prometheus), the
# Python tests a virtualenv (python3-venv, python3-pip) and the PyTorch
# example Debian's CPU build of PyTorch (python3-torch: PyPI's torch wheel
# pulls gigabytes of CUDA libraries). Whatever is missing is installed with
# apt-get when this runs as root or with sudo that asks no password, and said
# so. What cannot be installed (no root, no apt, no network) is named with
# the tests it takes away; those tests are skipped, the rest run. With CI set
# (CI=true) nothing is skipped: a missing tool fails the run here, at once.
# Arguments go to the test binaries (e.g. ./test.sh --nocapture).
set -euo pipefail
cd "$(dirname "$0")"

say() { echo "test.sh: $*" >&2; }

ci=false
case "${CI:-}" in "" | 0 | false) ;; *) ci=true ;; esac

have_chromium() { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }
have_promtool() { [ -x /usr/bin/promtool ] || [ -x /usr/local/bin/promtool ]; }
have_venv() { /usr/bin/python3 -c "import ensurepip" >/dev/null 2>&1; }
have_torch() { /usr/bin/python3 -c "import torch" >/dev/null 2>&1; }
have_systemd_analyze() { [ -x /usr/bin/systemd-analyze ] || [ -x /bin/systemd-analyze ]; }

# The Debian packages missing now.
missing() {
    local m=()
    [ -x /usr/bin/chromium ] || m+=(chromium)
    [ -x /usr/bin/chromedriver ] || m+=(chromium-driver)
    have_promtool || m+=(prometheus)
    have_venv || m+=(python3-venv python3-pip)
    have_torch || m+=(python3-torch)
    have_systemd_analyze || m+=(systemd)
    echo "${m[*]}"
}

need=$(missing)
if [ -n "$need" ]; then
    sudo=""
    why=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
            sudo="sudo -n"
        else
            why="not root, and no sudo without a password"
        fi
    fi
    if [ -z "$why" ] && ! command -v apt-get >/dev/null 2>&1; then
        why="no apt-get (not Debian or Ubuntu)"
    fi
    if [ -z "$why" ]; then
        log="${TMPDIR:-/tmp}/kernal-test-apt.log"
        say "installing with apt-get (a few minutes the first time): $need"
        # shellcheck disable=SC2086
        if $sudo apt-get update -qq >"$log" 2>&1 &&
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
                --no-install-recommends $need >>"$log" 2>&1; then
            say "installed: $need"
        else
            why="apt-get failed (no network or no such package?); its output is in $log"
        fi
    fi
    still=$(missing)
    if [ -n "$still" ]; then
        say "NOT INSTALLED: $still ($why)"
        if $ci; then
            say "CI runs every test: install them (as root: apt-get install $still) and run again"
            exit 1
        fi
        say "install them yourself with: sudo apt-get install $still"
    fi
fi

args=()
if have_chromium; then
    # The browser test is #[ignore]d so that a bare `cargo test` passes
    # without chromium; here it has what it needs.
    args+=(--include-ignored)
else
    say "SKIPPED: the dashboard's browser test (dashboard_updates_live_in_a_real_browser): no chromium/chromium-driver"
fi
if ! have_venv; then
    say "SKIPPED: the Python tests (the package's tests, the PyTorch example, the safetensors check): no python3-venv"
    args+=(--skip the_package_unit_tests_pass --skip python_and_rust_trainers_improve_one_model
        --skip weights_download_loads_in_python_safetensors)
fi
have_promtool || say "SKIPPED: the promtool check of /metrics: no prometheus (promtool)"
have_systemd_analyze || say "SKIPPED: the systemd unit's check (systemd-analyze verify): no systemd"
have_torch || say "SKIPPED: the PyTorch trainer of the Python example: no python3-torch"
if $ci; then
    # The PyTorch example must run here, not be skipped.
    export KERNAL_REQUIRE_TORCH=1
fi
exec cargo test -- "${args[@]}" "$@"
