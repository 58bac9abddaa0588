# Shared helpers for toolchain/*.sh (sourced, not executed).

now() { date +%s.%N; }
# elapsed START -> seconds since START, one decimal
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# ensure_apt cmd:package ... — install the Debian packages whose command is missing.
ensure_apt() {
  local want=() item cmd pkg
  for item in "$@"; do
    cmd=${item%%:*}; pkg=${item#*:}
    command -v "$cmd" >/dev/null 2>&1 || want+=("$pkg")
  done
  ((${#want[@]})) || return 0
  echo "toolchain: installing ${want[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null
}

# ensure_binfmt_aarch64 — make the kernel run aarch64 ELF files through qemu-aarch64-static
# (needed by chroot into an arm64 root). Mounts binfmt_misc and registers the handler from
# qemu-user-static's /usr/lib/binfmt.d/qemu-aarch64.conf (flags OCF/F: the interpreter is opened at
# registration time, so it works inside a chroot too). Returns 1 if that is not possible.
ensure_binfmt_aarch64() {
  local dir=/proc/sys/fs/binfmt_misc
  [ -e "$dir/qemu-aarch64" ] && return 0
  if [ ! -e "$dir/register" ]; then
    as_root mount -t binfmt_misc binfmt_misc "$dir" 2>/dev/null || true
  fi
  [ -e "$dir/qemu-aarch64" ] && return 0
  if command -v update-binfmts >/dev/null 2>&1 && as_root update-binfmts --enable qemu-aarch64 2>/dev/null \
     && [ -e "$dir/qemu-aarch64" ]; then
    return 0
  fi
  local conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  if [ -w "$dir/register" ] || [ "$(id -u)" != 0 ]; then
    if [ -f "$conf" ]; then
      as_root sh -c "cat '$conf' > '$dir/register'" 2>/dev/null || true
    else
      # Same magic/mask as Debian's qemu-user-static; F = fix binary (works in chroots).
      as_root sh -c "printf '%s' ':qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:$(command -v qemu-aarch64-static):F' > '$dir/register'" 2>/dev/null || true
    fi
  fi
  [ -e "$dir/qemu-aarch64" ] || { echo "toolchain: could not register binfmt for aarch64" >&2; return 1; }
}

# with_progress WHAT LOG CMD... — runs CMD with its stdout+stderr in LOG and, every
# ${PROGRESS_EVERY:-20} s, prints "WHAT: N s so far; <LOG's last line>" on stderr, so a long
# step (debootstrap's second stage under qemu, a pip install) never sits silent. CMD's status.
# Log lines matching the regex $PROGRESS_IGNORE are not shown as the last line; with
# $PROGRESS_DETAIL set, the last line comes from that file instead (a finer log the step writes).
with_progress() {
  local what=$1 log=$2 t0 ticker rc=0
  shift 2
  t0=$(date +%s)
  : >"$log"
  (
    while sleep "${PROGRESS_EVERY:-20}"; do
      last=$(grep -Ev "${PROGRESS_IGNORE:-^\$}" "${PROGRESS_DETAIL:-$log}" 2>/dev/null | tail -n 1 | tr -d '\r' | cut -c1-100)
      echo "$what: $(($(date +%s) - t0)) s so far${last:+; $last}" >&2
    done
  ) &
  ticker=$!
  "$@" >"$log" 2>&1 || rc=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  return "$rc"
}
