# Sourced by BatchProcess_sbatch.sh and BatchProcess_array.sh once they have found the checkout
# ($bin_dir): what both Slurm scripts do alike. Expects $prog; not a command of its own.

usage() {
  sed -n '2,/^#SBATCH/{/^#SBATCH/d;s/^# \{0,1\}//;p}' "$bin_dir/$prog"
}
die() {
  echo "$prog: error: $*" >&2
  exit 2
}

# parse_job_arguments USAGE EXTRA_OPTION ARGS...: sets $job and $config (an array: --config FILE
# or nothing); EXTRA_OPTION (e.g. --mpi, or "" for none) sets $extra_given=1.
parse_job_arguments() {
  local usage_line=$1 extra=$2
  shift 2
  [ $# -ge 1 ] || { usage >&2; exit 2; }
  case $1 in
    -h|--help) usage; exit 0 ;;
    -*) die "the first argument must be the job's name (usage: $usage_line)" ;;
  esac
  job=$1
  shift
  config=() extra_given=0
  while [ $# -gt 0 ]; do
    case $1 in
      --config) [ $# -ge 2 ] || die "$1 needs a FILE"; config=(--config "$2"); shift 2 ;;
      --config=*) config=(--config "${1#*=}"); shift ;;
      *)
        if [ -n "$extra" ] && [ "$1" = "$extra" ]; then extra_given=1; shift
        else die "unknown argument '$1' (usage: $usage_line)"; fi ;;
    esac
  done
}

# Python: $HIPE_BATCH_PYTHON, else the checkout's .venv/bin/python, else (installed by pip) the
# environment's python beside this script in its bin/ or above its share/hipe-batch/, else python3;
# resolved to the interpreter's real path and exported, so that every task on every node uses the same one.
pick_python() {
  local given
  python=${HIPE_BATCH_PYTHON:-}
  if [ -z "$python" ]; then
    if [ -x "$checkout/.venv/bin/python" ]; then python=$checkout/.venv/bin/python
    elif [ -x "$bin_dir/python" ]; then python=$bin_dir/python
    elif [ -x "$checkout/../../bin/python" ]; then python=$checkout/../../bin/python
    else python=python3; fi
  fi
  given=$python
  python=$("$python" -c 'import sys; print(sys.executable)' 2>/dev/null) && [ -n "$python" ] \
    || die "Python interpreter '$given' does not run (set HIPE_BATCH_PYTHON)"
  export HIPE_BATCH_PYTHON=$python
}

batch() { "$python" "$bin_dir/BatchProcess.py" "$job" "$@" ${config[@]+"${config[@]}"}; }

# Exit status 0 when the job has nothing pending or running (whether all done or some failed).
job_finished() {
  batch status --json 2>/dev/null | "$python" -c \
    'import json, sys; d = json.load(sys.stdin); sys.exit(d["pending"] + d["running"] != 0)' 2>/dev/null
}
