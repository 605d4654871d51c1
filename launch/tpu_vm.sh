#!/usr/bin/env bash
# Create a Cloud TPU VM (one host) or pod slice (several hosts), install sedd-jax on every host, train, follow
# the log, stop and delete it, with gcloud. See launch/README.md for the whole sequence.
#
#   bash launch/tpu_vm.sh COMMAND --name=NAME --zone=ZONE [options] [-- training flags]
#
# Every host of a slice runs the same training command; sedd_jax.main detects the slice and joins the hosts
# (jax.distributed), and only process 0 writes logs and metrics. Training runs under nohup on each host, so a
# dropped SSH connection does not stop it. Rerunning `train` with the same --workdir resumes from its latest
# checkpoint. --dry-run prints the commands (one a line, shell-quoted) instead of running them.
set -euo pipefail

readonly REMOTE_DIR=sedd-jax           # clone directory, relative to the home directory on each host
readonly REMOTE_LOG="\$HOME/sedd-train.log" # training log on each host ($HOME expands there, not here)
readonly DEFAULT_CONFIG=configs/owt_small.py
# Matches the command line of the training process started by `train` (and not the shell that runs the
# remote commands, whose command line starts with the shell's name).
readonly TRAIN_PATTERN='^python3 -m sedd_jax[.]main '
readonly COMMANDS="create install train logs stop delete status ssh"

usage() {
  cat <<'EOF'
Usage: bash launch/tpu_vm.sh COMMAND --name=NAME --zone=ZONE [options] [-- training flags]

Commands:
  create   create the TPU VM / pod slice (needs --accelerator)
  install  clone the repository at --ref on every host and pip install -e ".[tpu]"
  train    start training on every host in the background (needs --workdir), log in ~/sedd-train.log
  logs     follow the training log of one host (worker 0 unless --worker)
  stop     stop training on every host (SIGTERM: the run saves a checkpoint and exits)
  delete   delete the TPU VM (asks for confirmation unless --yes)
  status   describe the TPU VM (state, accelerator, runtime version, hosts)
  ssh      run the shell command given after -- on every host

Options (--opt=value or --opt value):
  --name=NAME           TPU VM name (all commands)
  --zone=ZONE           zone, e.g. us-west4-a (all commands)
  --project=PROJECT     Google Cloud project (default: gcloud's configured project)
  --accelerator=TYPE    create: accelerator type, e.g. v5litepod-16, v4-32, v5p-16, v6e-8
  --version=VERSION     create: TPU runtime version (default from the accelerator: v2-alpha-tpuv5-lite for
                        v5litepod, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e, tpu-ubuntu2204-base for
                        v2, v3 and v4)
  --spot                create: a Spot TPU VM (cheaper, can be preempted at any time)
  --preemptible         create: a preemptible TPU VM (older form of --spot)
  --repo=URL            install: git URL the hosts clone (default: this checkout's origin remote)
  --ref=REF             install: commit, tag or branch to install (default: this checkout's HEAD commit)
  --workdir=DIR         train: run directory; gs://BUCKET/... (hosts of a slice share no disk)
  --allow-local-workdir train: accept a workdir that is not on gs:// (single-host TPU VMs only)
  --config=FILE         train: config file in the repository (default: configs/owt_small.py)
  --worker=N            logs: which host's log to follow (default: 0, the one that prints progress)
  --dry-run             print the commands instead of running them
  --yes                 delete: do not ask for confirmation
  -h, --help            show this help

Arguments after -- are passed to sedd_jax.main by `train` (e.g. --config.training.n_iters=1000), or form the
command that `ssh` runs.

Example (a v5e slice of 16 chips on 4 hosts):
  bash launch/tpu_vm.sh create  --name=sedd --zone=us-west4-a --accelerator=v5litepod-16 --spot
  bash launch/tpu_vm.sh install --name=sedd --zone=us-west4-a --repo=https://github.com/USER/sedd-jax.git
  bash launch/tpu_vm.sh train   --name=sedd --zone=us-west4-a --workdir=gs://BUCKET/runs/owt_small \
      -- --config.mesh.fsdp=4
  bash launch/tpu_vm.sh logs    --name=sedd --zone=us-west4-a
  bash launch/tpu_vm.sh stop    --name=sedd --zone=us-west4-a
  bash launch/tpu_vm.sh delete  --name=sedd --zone=us-west4-a --yes
EOF
}

# Print an error and how to fix it, then exit 2 (a usage error).
die() {
  printf 'tpu_vm.sh: error: %s\n' "$1" >&2
  [ $# -lt 2 ] || printf '%s\n' "${@:2}" >&2
  printf 'Run "bash launch/tpu_vm.sh --help" for the usage.\n' >&2
  exit 2
}

warn() { printf 'tpu_vm.sh: warning: %s\n' "$*" >&2; }

# Quote one word for a POSIX shell: as is when it is made of safe characters only, else in single quotes
# (only the value of an --option=value, for legibility).
quote() {
  if [[ -n $1 && $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^(--[A-Za-z0-9_.-]+=)(.+)$ ]]; then
    printf '%s%s' "${BASH_REMATCH[1]}" "$(quote "${BASH_REMATCH[2]}")"
  else
    local squote="'"
    printf "'%s'" "${1//${squote}/${squote}\\${squote}${squote}}"
  fi
}

# Quote every argument and join them with spaces: a command line that a shell splits back into the arguments.
quote_all() {
  local arg out=""
  for arg in "$@"; do out+="${out:+ }$(quote "$arg")"; done
  printf '%s' "$out"
}

# Run a command, or only print it with --dry-run. Either way the command is printed (to stderr when run).
run() {
  if [ "$dry_run" = 1 ]; then
    printf '%s\n' "$(quote_all "$@")"
  else
    printf '+ %s\n' "$(quote_all "$@")" >&2
    "$@"
  fi
}

# Run a shell command line on the hosts given by --worker (all, or a host index) over SSH.
remote() {
  local worker=$1 script=$2
  run gcloud compute tpus tpu-vm ssh "$name" "${location[@]}" --worker="$worker" --command="$script"
}

# The default runtime version of an accelerator type.
default_version() {
  case $1 in
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    *) return 1 ;;
  esac
}

# Store the value of an option that takes one.
set_option() {
  [ -n "$2" ] || die "$1 is empty" "Give it a value: $1=VALUE."
  case $1 in
    --name) name=$2 ;;
    --zone) zone=$2 ;;
    --project) project=$2 ;;
    --accelerator) accelerator=$2 ;;
    --version) version=$2 ;;
    --repo) repo=$2 ;;
    --ref) ref=$2 ;;
    --workdir) workdir=$2 ;;
    --config) config=$2 ;;
    --worker) worker=$2 ;;
  esac
}

# ---------------------------------------------------------------------------------------------------------
# Command line.
command="" name="" zone="" project="" accelerator="" version="" provisioning="" repo="" ref=""
workdir="" config="$DEFAULT_CONFIG" worker=0 dry_run=0 yes=0 allow_local_workdir=0
passthrough=()
while [ $# -gt 0 ]; do
  arg=$1
  shift
  case $arg in
    -h | --help)
      usage
      exit 0
      ;;
    --)
      passthrough=("$@")
      break
      ;;
    --dry-run) dry_run=1 ;;
    --yes) yes=1 ;;
    --spot | --preemptible) provisioning=$arg ;;
    --allow-local-workdir) allow_local_workdir=1 ;;
    --name | --zone | --project | --accelerator | --version | --repo | --ref | --workdir | --config | --worker)
      [ $# -gt 0 ] && [[ $1 != -* ]] || die "$arg needs a value" "Write $arg=VALUE or $arg VALUE."
      set_option "$arg" "$1"
      shift
      ;;
    --name=* | --zone=* | --project=* | --accelerator=* | --version=* | --repo=* | --ref=* | --workdir=* | \
      --config=* | --worker=*)
      set_option "${arg%%=*}" "${arg#*=}"
      ;;
    --config.*)
      die "unknown option $arg" "Training flags go after --, e.g.: bash launch/tpu_vm.sh train ... -- $arg"
      ;;
    -*) die "unknown option $arg" ;;
    *)
      [ -z "$command" ] || die "unexpected argument '$arg' (the command is already '$command')" \
        "Training flags and ssh commands go after --."
      command=$arg
      ;;
  esac
done

[ -n "$command" ] || die "no command given" "Commands: $COMMANDS."
[[ " $COMMANDS " == *" $command "* ]] || die "unknown command '$command'" "Commands: $COMMANDS."
[ -n "$name" ] || die "missing --name" "Give the TPU VM's name, e.g. --name=sedd."
[ -n "$zone" ] || die "missing --zone" "Give the TPU VM's zone, e.g. --zone=us-west4-a."
if [ ${#passthrough[@]} -gt 0 ] && [ "$command" != train ] && [ "$command" != ssh ]; then
  die "arguments after -- are only for train and ssh, not $command"
fi
[[ $worker =~ ^[0-9]+$ ]] || die "--worker must be a host index (0, 1, ...), not '$worker'"
# The gcloud options every command shares.
location=(--zone="$zone")
[ -z "$project" ] || location+=(--project="$project")

# The checkout this script belongs to (for the default --repo and --ref), whatever the current directory.
checkout=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# ---------------------------------------------------------------------------------------------------------
case $command in
  create)
    [ -n "$accelerator" ] || die "create needs --accelerator" \
      "Give the accelerator type, e.g. --accelerator=v5litepod-16 (v5e, 16 chips) or --accelerator=v4-32."
    if [ -z "$version" ]; then
      version=$(default_version "$accelerator") || die "no default runtime version for '$accelerator'" \
        "Give one with --version=VERSION (see https://cloud.google.com/tpu/docs/runtimes)."
    fi
    create=(gcloud compute tpus tpu-vm create "$name" "${location[@]}" --accelerator-type="$accelerator"
      --version="$version")
    [ -z "$provisioning" ] || create+=("$provisioning")
    run "${create[@]}"
    ;;

  install)
    if [ -z "$repo" ]; then
      repo=$(git -C "$checkout" config --get remote.origin.url || true)
      [ -n "$repo" ] || die "no --repo given and $checkout has no origin remote" \
        "Pass --repo=URL, a git URL every host can clone (e.g. https://github.com/USER/sedd-jax.git)."
    fi
    if [ -z "$ref" ]; then
      ref=$(git -C "$checkout" rev-parse HEAD 2>/dev/null) ||
        die "no --ref given and $checkout is not a git checkout" "Pass --ref=COMMIT (or a tag or branch)."
      [ -z "$(git -C "$checkout" status --porcelain --untracked-files=no)" ] ||
        warn "this checkout has uncommitted changes; the hosts install commit $ref without them"
      [ -n "$(git -C "$checkout" branch --remotes --contains "$ref" 2>/dev/null)" ] ||
        warn "commit $ref is on no remote branch that this checkout knows of; push it before installing"
    fi
    # On each host: clone once, fetch, check out the ref (a branch name means its latest commit on the
    # remote), then install the package with the TPU extra (jax[tpu], libtpu).
    remote all "set -eu; \
if [ ! -d $REMOTE_DIR/.git ]; then git clone --quiet $(quote "$repo") $REMOTE_DIR; fi; \
cd $REMOTE_DIR; \
git remote set-url origin $(quote "$repo"); \
git fetch --quiet --tags origin; \
commit=\$(git rev-parse --verify --quiet $(quote "origin/$ref^{commit}") || \
git rev-parse --verify --quiet $(quote "$ref^{commit}")) || \
{ printf 'error: %s is not in %s; push it first\n' $(quote "$ref") $(quote "$repo") >&2; exit 1; }; \
git checkout --quiet --detach \"\$commit\"; \
echo \"\$(hostname): installing sedd-jax at \$commit\"; \
python3 -m pip install --quiet -e '.[tpu]'"
    ;;

  train)
    [ -n "$workdir" ] || die "train needs --workdir" \
      "Give the run directory, e.g. --workdir=gs://BUCKET/runs/owt_small (reuse it to resume a run)."
    if [[ $workdir != gs://* ]] && [ "$allow_local_workdir" = 0 ]; then
      die "--workdir=$workdir is not on Cloud Storage" \
        "The hosts of a pod slice share no disk: use --workdir=gs://BUCKET/..., or add --allow-local-workdir" \
        "on a single-host TPU VM (e.g. v5litepod-8, v4-8)."
    fi
    train_cmd=$(quote_all python3 -m sedd_jax.main --config="$config" --workdir="$workdir" \
      ${passthrough[@]+"${passthrough[@]}"})
    # On each host: refuse to start a second run; append a header and then the run's output to the log; start
    # the run in its own session under nohup, with no terminal, so that it outlives this SSH connection.
    remote all "set -eu; \
cd $REMOTE_DIR || { echo \"error: sedd-jax is not installed on \$(hostname); run launch/tpu_vm.sh install\" >&2; \
exit 1; }; \
if pgrep -f $(quote "$TRAIN_PATTERN") >/dev/null; then \
echo \"error: training is already running on \$(hostname); run launch/tpu_vm.sh stop first\" >&2; exit 1; fi; \
date -u '+=== %Y-%m-%d %H:%M:%S UTC: training starts' >> \"$REMOTE_LOG\"; \
PYTHONUNBUFFERED=1 setsid nohup $train_cmd >> \"$REMOTE_LOG\" 2>&1 < /dev/null & \
echo \"\$(hostname): training started (pid \$!), log $REMOTE_LOG\""
    ;;

  logs)
    # Worker 0 runs process 0, the one that prints progress and evaluation; the others print little.
    remote "$worker" "tail -n 100 -F \"$REMOTE_LOG\""
    ;;

  stop)
    # SIGTERM is what a preemption sends: the run saves a checkpoint and exits. Killed after 5 minutes.
    remote all "set -eu; \
if ! pgrep -f $(quote "$TRAIN_PATTERN") >/dev/null; then echo \"\$(hostname): no training running\"; exit 0; fi; \
pkill -TERM -f $(quote "$TRAIN_PATTERN"); \
for _ in \$(seq 300); do pgrep -f $(quote "$TRAIN_PATTERN") >/dev/null || break; sleep 1; done; \
if pkill -KILL -f $(quote "$TRAIN_PATTERN"); then echo \"\$(hostname): training killed\"; \
else echo \"\$(hostname): training stopped\"; fi"
    ;;

  delete)
    if [ "$yes" = 0 ]; then
      if [ "$dry_run" = 1 ]; then
        printf 'tpu_vm.sh: (without --yes, delete asks for confirmation first)\n' >&2
      else
        printf 'Delete TPU VM %s in %s? Its disks are lost (checkpoints on gs:// are kept). [y/N] ' \
          "$name" "$zone" >&2
        answer=""
        read -r answer || true
        case $answer in
          y | Y | yes | YES) ;;
          *)
            printf 'tpu_vm.sh: not deleted\n' >&2
            exit 1
            ;;
        esac
      fi
    fi
    # --quiet: gcloud's own prompt is skipped (confirmed above, or by --yes).
    run gcloud compute tpus tpu-vm delete "$name" "${location[@]}" --quiet
    ;;

  status)
    run gcloud compute tpus tpu-vm describe "$name" "${location[@]}"
    ;;

  ssh)
    [ ${#passthrough[@]} -gt 0 ] || die "ssh needs a command after --" \
      "E.g.: bash launch/tpu_vm.sh ssh ... -- 'nvidia-smi || python3 -c \"import jax; print(jax.devices())\"'"
    remote all "${passthrough[*]}"
    ;;
esac
