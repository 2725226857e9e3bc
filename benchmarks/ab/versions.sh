# The versions an A/B compares, for ab.sh and ab_cuda.sh (sourced). A version is a folder that holds a csrc/ tree
# (. for the working tree, a copy in /tmp) or a git revision of this checkout (HEAD~2, 0ba2282), not a kernel file
# alone: the kernels include headers beside them. Each version compiles against its own csrc/common, the harness
# (which builds the requests) against this checkout's: a version must lay out CountRequest as this checkout does.

# ab_version ROOT SPEC DEST: prints the folder holding SPEC's csrc/; a revision of the checkout at ROOT is first
# extracted into DEST. A folder wins over a revision of the same name.
ab_version() {
  local root="$1" spec="$2" dest="$3"
  if [ -d "$spec/csrc" ]; then
    (cd "$spec" && pwd)
  elif git -C "$root" rev-parse --verify --quiet "$spec^{commit}" >/dev/null; then
    mkdir -p "$dest"
    git -C "$root" archive "$spec" csrc | tar -x -C "$dest"
    echo "$dest"
  else
    echo "$spec: neither a folder holding csrc/ nor a git revision of $root" >&2
    return 1
  fi
}

# ab_begin SCRIPT MIN MAX ARGS...: unless ARGS holds MIN to MAX versions (MAX 0: any number from MIN), prints
# SCRIPT's usage and exits; else sets root (this checkout) and out (a temporary folder, removed on exit).
ab_begin() {
  local script="$1" min="$2" max="$3"
  shift 3
  if [ $# -lt "$min" ] || { [ "$max" -gt 0 ] && [ $# -gt "$max" ]; }; then
    local more=""
    [ "$max" -eq 0 ] && more=" [C ...]"
    echo "usage: bash benchmarks/ab/$script A B$more  (each a git revision or a folder holding csrc/)" >&2
    exit 2
  fi
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
}
