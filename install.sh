#!/usr/bin/env bash
# Install nixlog as a systemd service on Raspberry Pi OS / Debian (Bookworm or newer).
#
#   sudo ./install.sh                      # venv in /opt/nixlog, config, data dir, service
#   ./install.sh --prefix /tmp/x --no-systemd   # everything under /tmp/x, system untouched
#   sudo ./install.sh --uninstall [--purge]
#
# Safe to run again: an upgrade re-installs the package and the unit, restarts the service,
# and never touches an existing /etc/nixlog/config.toml. Run ./install.sh --help for options.
set -euo pipefail

# The service user must be able to read the venv whatever root's umask is.
umask 022

readonly SERVICE_NAME=nixlog.service
readonly SERVICE_USER=nixlog
SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SRC_DIR

PREFIX=""
USE_SYSTEMD=true
DRY_RUN=false
UNINSTALL=false
PURGE=false
PYTHON_BIN=${PYTHON:-python3}
PIP_ARGS=""

usage() {
    cat <<EOF
Usage: install.sh [OPTIONS]

Install nixlog from this checkout: a venv in /opt/nixlog, /etc/nixlog/config.toml (from
examples/config.toml, never overwritten), /var/lib/nixlog, the system user "nixlog" (group
dialout) and the systemd unit nixlog.service, enabled and started.

Options:
  --prefix DIR      install everything under DIR instead of / (needs --no-systemd)
  --no-systemd      create no user and run no systemctl (the unit file is still written)
  --python PATH     interpreter for the venv, Python >= 3.11 (default: \$PYTHON or python3)
  --pip-args ARGS   extra pip install arguments, split on spaces, for offline installs:
                    --pip-args "--no-index --find-links /media/usb/wheels"
  --dry-run         print every action and change nothing
  --uninstall       stop and remove the service, the venv and the nixlog command;
                    keep the config and the data
  --purge           with --uninstall: remove the config and the data too
  -h, --help        show this help
EOF
}

die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

usage_error() {
    printf 'install.sh: %s\n' "$*" >&2
    printf 'Try: install.sh --help\n' >&2
    exit 2
}

warn() {
    printf 'install.sh: warning: %s\n' "$*" >&2
}

say() {
    printf '==> %s\n' "$*"
}

# Every change goes through run(): it shows the command, and in a dry run stops there.
run() {
    local line
    line=$(printf '%q ' "$@")
    printf '+ %s\n' "${line% }"
    if ! "$DRY_RUN"; then
        "$@"
    fi
}

while (($# > 0)); do
    case $1 in
        --prefix)
            (($# >= 2)) || usage_error "--prefix needs a directory"
            PREFIX=$2
            shift 2
            ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --python)
            (($# >= 2)) || usage_error "--python needs a path"
            PYTHON_BIN=$2
            shift 2
            ;;
        --python=*) PYTHON_BIN=${1#*=}; shift ;;
        --pip-args)
            (($# >= 2)) || usage_error "--pip-args needs a value"
            PIP_ARGS=$2
            shift 2
            ;;
        --pip-args=*) PIP_ARGS=${1#*=}; shift ;;
        --no-systemd) USE_SYSTEMD=false; shift ;;
        --dry-run) DRY_RUN=true; shift ;;
        --uninstall) UNINSTALL=true; shift ;;
        --purge) PURGE=true; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage_error "unknown option: $1" ;;
    esac
done

if "$PURGE" && ! "$UNINSTALL"; then
    usage_error "--purge only goes with --uninstall"
fi

if [[ -n $PREFIX ]]; then
    if [[ $PREFIX != /* ]]; then
        PREFIX="$PWD/$PREFIX"
    fi
    # The prefix is pasted into the unit file and into sed replacements: keep it to plain
    # path characters (no spaces, no systemd "%" specifiers, no sed metacharacters).
    [[ $PREFIX =~ ^/[A-Za-z0-9._+/-]*$ ]] ||
        die "--prefix must be a plain path (letters, digits, . _ + - /), got: $PREFIX"
    PREFIX=${PREFIX%/}
    if "$USE_SYSTEMD" && [[ -n $PREFIX ]]; then
        usage_error "--prefix installs into a directory systemd does not look at; add --no-systemd"
    fi
fi

readonly VENV_DIR="$PREFIX/opt/nixlog"
readonly CONFIG_DIR="$PREFIX/etc/nixlog"
readonly CONFIG_FILE="$CONFIG_DIR/config.toml"
readonly DATA_DIR="$PREFIX/var/lib/nixlog"
readonly UNIT_DIR="$PREFIX/etc/systemd/system"
readonly UNIT_FILE="$UNIT_DIR/$SERVICE_NAME"
readonly BIN_LINK="$PREFIX/usr/local/bin/nixlog"
readonly NIXLOG="$VENV_DIR/bin/nixlog"

# sed expressions that move the default paths under the prefix (none without a prefix).
SED_PATHS=()
if [[ -n $PREFIX ]]; then
    for path in /opt/nixlog /etc/nixlog /var/lib/nixlog; do
        SED_PATHS+=(-e "s#$path#$PREFIX$path#g")
    done
fi

systemd_running() {
    [[ -d /run/systemd/system ]]
}

group_exists() {
    getent group "$1" >/dev/null 2>&1
}

need_root() {
    if ! "$DRY_RUN" && ((EUID != 0)); then
        die "$1 needs root: run it with sudo (or use --prefix DIR --no-systemd)"
    fi
}

# Copy SRC to DST with the prefix paths substituted, atomically (a half-written unit or
# config never exists), with MODE and, when given and present, GROUP.
install_rendered() {
    local mode=$1 src=$2 dst=$3 group=${4:-}
    local shown="cp $src $dst; chmod $mode"
    if ((${#SED_PATHS[@]} > 0)); then
        shown="sed ${SED_PATHS[*]} $src > $dst; chmod $mode"
    fi
    if [[ -n $group ]]; then
        shown+="; chgrp $group"
    fi
    printf '+ %s\n' "$shown"
    if "$DRY_RUN"; then
        return 0
    fi
    local tmp
    tmp=$(mktemp "$dst.XXXXXX")
    if ((${#SED_PATHS[@]} > 0)); then
        sed "${SED_PATHS[@]}" "$src" >"$tmp"
    else
        cat "$src" >"$tmp"
    fi
    chmod "$mode" "$tmp"
    if [[ -n $group ]]; then
        chgrp "$group" "$tmp"
    fi
    mv -f "$tmp" "$dst"
}

check_python() {
    command -v "$PYTHON_BIN" >/dev/null 2>&1 ||
        die "$PYTHON_BIN not found: sudo apt install python3 python3-venv (or pass --python PATH)"
    "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "nixlog needs Python >= 3.11; $PYTHON_BIN is $("$PYTHON_BIN" -V 2>&1)" \
            "(Raspberry Pi OS Bookworm and Debian 12 ship 3.11)"
    if ! "$PYTHON_BIN" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        # Debian splits venv support out of python3; PEP 668 forbids pip into the system
        # Python, so a venv is the only clean way (never --break-system-packages).
        if "$USE_SYSTEMD" && command -v apt-get >/dev/null 2>&1; then
            run apt-get update
            run apt-get install -y python3-venv
        else
            die "$PYTHON_BIN cannot create virtual environments: sudo apt install python3-venv"
        fi
    fi
}

ensure_user() {
    if ! group_exists dialout; then
        run groupadd --system dialout
    fi
    if getent passwd "$SERVICE_USER" >/dev/null 2>&1; then
        if ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx dialout; then
            run usermod --append --groups dialout "$SERVICE_USER"
        fi
    else
        run useradd --system --user-group --groups dialout \
            --home-dir /var/lib/nixlog --no-create-home --shell /usr/sbin/nologin \
            --comment "nixlog data logger" "$SERVICE_USER"
    fi
}

# pip would build inside the checkout (build/, *.egg-info owned by root in the user's clone):
# build from a scratch copy of the sources instead.
install_package() {
    local venv_ok=false
    if [[ -x $VENV_DIR/bin/python ]] && "$VENV_DIR/bin/python" -c 'import sys' >/dev/null 2>&1; then
        venv_ok=true
    fi
    if "$venv_ok"; then
        say "Re-using the venv $VENV_DIR"
    else
        say "Creating the venv $VENV_DIR"
        check_python
        run mkdir -p "$(dirname "$VENV_DIR")"
        # --clear: a venv left broken by a Python upgrade is rebuilt from scratch.
        run "$PYTHON_BIN" -m venv --clear "$VENV_DIR"
    fi

    say "Installing nixlog from $SRC_DIR"
    local extra=()
    if [[ -n $PIP_ARGS ]]; then
        read -r -a extra <<<"$PIP_ARGS"
    fi
    local build_dir=""
    if ! "$DRY_RUN"; then
        build_dir=$(mktemp -d "${TMPDIR:-/tmp}/nixlog-build.XXXXXX")
        # shellcheck disable=SC2064  # expand now: the local is gone when the trap runs
        trap "rm -rf '$build_dir'" EXIT
    fi
    local src=${build_dir:-${TMPDIR:-/tmp}/nixlog-build.XXXXXX}
    printf '+ %s\n' "copy $SRC_DIR (without .git, tests, caches) to $src"
    if ! "$DRY_RUN"; then
        tar -C "$SRC_DIR" \
            --exclude=.git --exclude=.venv --exclude=venv --exclude=build --exclude=dist \
            --exclude='*.egg-info' --exclude=__pycache__ --exclude='.*_cache' \
            --exclude=.hypothesis --exclude=tests --exclude=benchmarks \
            --exclude='*.db' --exclude='*.db-wal' --exclude='*.db-shm' \
            -cf - . | tar -C "$build_dir" -xf -
    fi
    local pip=("$VENV_DIR/bin/python" -m pip install --disable-pip-version-check --no-input --quiet)
    run "${pip[@]}" --upgrade ${extra[@]+"${extra[@]}"} "$src"
    # Between releases the version stays the same, and pip would call the new code "already
    # satisfied": reinstall the package itself (not its dependencies) so the venv runs this
    # checkout.
    run "${pip[@]}" --force-reinstall --no-deps ${extra[@]+"${extra[@]}"} "$src"
}

install_config() {
    local group=""
    if "$USE_SYSTEMD" || { ((EUID == 0)) && group_exists "$SERVICE_USER"; }; then
        group=$SERVICE_USER
    fi
    if [[ -n $group ]]; then
        run install -d -m 0750 -g "$group" "$CONFIG_DIR"
    else
        run install -d -m 0750 "$CONFIG_DIR"
    fi
    if [[ -e $CONFIG_FILE || -L $CONFIG_FILE ]]; then
        say "Keeping the existing $CONFIG_FILE"
    else
        say "Writing $CONFIG_FILE from examples/config.toml"
        # 0640: the config may hold the API key.
        install_rendered 0640 "$SRC_DIR/examples/config.toml" "$CONFIG_FILE" "$group"
    fi

    if "$USE_SYSTEMD"; then
        run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$DATA_DIR"
    else
        run install -d -m 0750 "$DATA_DIR"
    fi
}

install_unit() {
    say "Writing $UNIT_FILE"
    run install -d -m 0755 "$UNIT_DIR"
    install_rendered 0644 "$SRC_DIR/deploy/$SERVICE_NAME" "$UNIT_FILE"
}

link_command() {
    if [[ -e $BIN_LINK && ! -L $BIN_LINK ]]; then
        warn "$BIN_LINK exists and is not our link; leaving it (run $NIXLOG directly)"
        return 0
    fi
    run install -d -m 0755 "$(dirname "$BIN_LINK")"
    run ln -sfn "$NIXLOG" "$BIN_LINK"
}

config_ok() {
    if "$DRY_RUN"; then
        return 0
    fi
    if "$NIXLOG" config check -c "$CONFIG_FILE" >/dev/null; then
        return 0
    fi
    warn "$CONFIG_FILE does not validate (see above); fix it, then start the service"
    return 1
}

next_steps() {
    local sudo_nixlog="sudo -u $SERVICE_USER nixlog" edit="sudoedit"
    if ! "$USE_SYSTEMD"; then
        sudo_nixlog=$NIXLOG
        edit=${EDITOR:-nano}
    fi
    cat <<EOF

Next steps:
  1. Edit the config: serial port or tcp:// address, register map, API endpoint and key:
       $edit $CONFIG_FILE
  2. Commissioning a new device? Find its unit id and registers (stop the service first,
     it holds the serial port):
EOF
    if "$USE_SYSTEMD"; then
        printf '       sudo systemctl stop nixlog\n'
    fi
    cat <<EOF
       $sudo_nixlog scan-registers --port /dev/ttyUSB0 --output draft.toml
  3. Check the config and watch live readings:
       $sudo_nixlog config check -c $CONFIG_FILE
       $sudo_nixlog poll -c $CONFIG_FILE --count 5
EOF
    if "$USE_SYSTEMD"; then
        cat <<EOF
  4. Restart the service and follow its log:
       sudo systemctl restart nixlog
       journalctl -u nixlog -f
EOF
    else
        cat <<EOF
  4. Run the logger (no systemd unit was enabled; the unit is at $UNIT_FILE):
       $NIXLOG daemon -c $CONFIG_FILE
EOF
    fi
}

do_install() {
    [[ -f $SRC_DIR/pyproject.toml && -f $SRC_DIR/examples/config.toml &&
        -f $SRC_DIR/deploy/$SERVICE_NAME ]] ||
        die "run install.sh from a nixlog checkout ($SRC_DIR lacks pyproject.toml, examples/ or deploy/)"
    if "$USE_SYSTEMD" || [[ -z $PREFIX ]]; then
        need_root "installing into /"
    fi
    if "$USE_SYSTEMD"; then
        say "Creating the system user $SERVICE_USER (group dialout for serial ports)"
        ensure_user
    fi
    install_package
    install_config
    install_unit
    link_command

    if ! "$DRY_RUN"; then
        "$NIXLOG" --version || die "the installed $NIXLOG does not run (see above)"
    fi
    local valid=true
    config_ok || valid=false

    if "$USE_SYSTEMD"; then
        if systemd_running; then
            run systemctl daemon-reload
            run systemctl enable "$SERVICE_NAME"
            if "$valid"; then
                # restart, not start: a re-install must load the new code.
                if ! run systemctl restart "$SERVICE_NAME"; then
                    warn "the service did not start: journalctl -u nixlog -n 50"
                    next_steps
                    exit 1
                fi
                say "nixlog is installed and running"
            fi
        else
            # A chroot or an image being built: enable now, systemd starts it at boot.
            run systemctl enable "$SERVICE_NAME"
            warn "systemd is not running here: the service is enabled, not started"
        fi
    else
        say "nixlog is installed in $VENV_DIR (no systemd changes)"
    fi
    next_steps
}

do_uninstall() {
    if "$USE_SYSTEMD" || [[ -z $PREFIX ]]; then
        need_root "uninstalling from /"
    fi
    if "$USE_SYSTEMD" && [[ -e $UNIT_FILE ]]; then
        if systemd_running; then
            run systemctl disable --now "$SERVICE_NAME"
        else
            run systemctl disable "$SERVICE_NAME"
        fi
    fi
    if [[ -e $UNIT_FILE || -L $UNIT_FILE ]]; then
        run rm -f "$UNIT_FILE"
        if "$USE_SYSTEMD" && systemd_running; then
            run systemctl daemon-reload
        fi
    fi
    if [[ -L $BIN_LINK && $(readlink "$BIN_LINK") == "$NIXLOG" ]]; then
        run rm -f "$BIN_LINK"
    fi
    if [[ -e $VENV_DIR ]]; then
        run rm -rf "$VENV_DIR"
    fi
    if "$PURGE"; then
        if [[ -e $CONFIG_DIR ]]; then
            run rm -rf "$CONFIG_DIR"
        fi
        if [[ -e $DATA_DIR ]]; then
            run rm -rf "$DATA_DIR"
        fi
        say "nixlog removed with its config and data"
        if "$USE_SYSTEMD" && getent passwd "$SERVICE_USER" >/dev/null 2>&1; then
            say "The system user $SERVICE_USER is kept; remove it with: sudo userdel $SERVICE_USER"
        fi
    else
        say "nixlog removed; kept the config $CONFIG_DIR and the data $DATA_DIR (--purge removes them)"
    fi
}

if "$DRY_RUN"; then
    say "Dry run: printing the actions, changing nothing"
fi
if "$UNINSTALL"; then
    do_uninstall
else
    do_install
fi
