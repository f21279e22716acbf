# Sourced by scripts/test and bench/run.
# apt_install WHAT PACKAGE WHY: installs PACKAGE (Debian's) unless WHAT, a
# command or a file, is there already.
apt_install() {
    command -v "$1" >/dev/null || [ -e "$1" ] && return
    command -v apt-get >/dev/null || {
        echo "${0##*/}: $1 not found, and no apt-get to install $2 ($3)" >&2
        exit 1
    }
    printf '\n==> %s\n' "installing $2 (apt-get): $3"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq -o DPkg::Lock::Timeout=300
    apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "$2" >/dev/null
}
