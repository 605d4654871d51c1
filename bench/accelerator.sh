#!/usr/bin/env bash
# SEDD-small in bfloat16 at length 1024 on one accelerator (GPU or TPU), in about 5 minutes: training MFU and tokens/s,
# sampling tokens/s (analytic predictor, 128 steps + denoiser) and peak memory, for the fused and the plain attention
# (and splash on TPUs). These run first, the default program (fused attention, the config's remat policy) before
# anything else; on GPUs that run also keeps a profile of 3 of its steps, its autotuned program and XLA's autotuning
# results, and the roofline estimate of that program follows it, set against the profile's measured kernel times
# (bench/roofline.py, no second compile). Further
# measurements run while the script is within its time budget (BUDGET_S), each named in the log if skipped: on GPUs
# the train step with XLA's pass that skips zero-filling the scan's outputs, the whole network (no masked-positions
# skip: the hardware's utilisation), the likelihood bound's draws, and training without rematerialisation. A
# measurement that fails does not stop the others; the log ends with the time taken and what was skipped or failed
# (the exit status is then 1).
# Needs only jax (with its CUDA or TPU plugin), flax, optax, chex, orbax-checkpoint, etils and ml-collections:
# nothing of the data stack.
#
#   bash bench/accelerator.sh [RESULTS_DIR]          # figures go to stdout and RESULTS_DIR/accelerator.txt
#
# Environment overrides (defaults in brackets): SIZE [small], LENGTH [1024], BATCH [32], TRAIN_STEPS [10],
# SAMPLE_BATCH [16], SAMPLE_STEPS [128], ATTENTIONS ["fused plain", and splash on TPUs; the first is the default
# program's], REMATS ["none"] (the further runs' policies besides the config's), EVAL_BATCH [16], EVAL_DRAWS [4],
# DTYPE [bfloat16], BUDGET_S [300] (seconds after which no further measurement starts; the first ones always run),
# WHEELS [.whl] (a folder with an ml-collections wheel, for offline machines without it), ROOFLINE_TOPOLOGY [local]
# (the data sheet for the roofline: a GPU of sedd_jax.compile.GPU_TARGETS, for a chip it does not know by name),
# BACKEND [JAX's default backend] (whose runs to make: `gpu` on a CPU runs the GPU's as well, to check this script).
set -euo pipefail
[ $# -gt 0 ] && mkdir -p "$1" && results=$(cd "$1" && pwd)  # RESULTS_DIR as named from the caller's directory
cd "$(dirname "$0")/.."
results=${results:-$PWD/bench-results}
mkdir -p "$results"
log="$results/accelerator.txt"
: > "$log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# ml-collections, a core requirement, is missing from some accelerator images, and such machines are often offline:
# its wheel in WHEELS [.whl] installs without an index (bench/README.md, "Accelerators"), else pip fetches it.
if ! python3 -c "import ml_collections" 2>/dev/null; then
    site=$(mktemp -d)
    trap 'rm -rf "$site"' EXIT
    wheels=(); for wheel in "${WHEELS:-.whl}"/ml_collections-*.whl; do [ -f "$wheel" ] && wheels+=("$wheel"); done
    if [ ${#wheels[@]} -gt 0 ]; then
        python3 -m pip install -q --no-index --no-deps --target "$site" "${wheels[@]}"
    elif ! python3 -m pip install -q --target "$site" ml-collections; then
        echo "error: ml-collections is not installed and pip could not fetch it. On a machine with an index, run" >&2
        echo "  python3 -m pip download --no-deps --only-binary=:all: -d .whl ml-collections" >&2
        echo "and bring .whl along (or point WHEELS at a folder holding the wheel)." >&2
        exit 1
    fi
    export PYTHONPATH="$PYTHONPATH:$site"
fi
size=${SIZE:-small} length=${LENGTH:-1024} dtype=${DTYPE:-bfloat16} batch=${BATCH:-32}
backend=${BACKEND:-$(python3 -c 'import jax; print(jax.default_backend())')}
attentions=${ATTENTIONS:-}
if [ -z "$attentions" ]; then  # splash attention runs only on TPUs (elsewhere it is plain attention)
    attentions="fused plain"
    [ "$backend" = tpu ] && attentions="$attentions splash"
fi
main=${attentions%% *}  # the default program's attention
model=(--size="$size" --compute_dtype="$dtype" --length="$length")
started=$SECONDS budget=${BUDGET_S:-300}
skipped=() failed=()

section() {  # section HEADER COMMAND...: one measurement, its output in the log under "=== HEADER"; one that fails
    local header=$1; shift  # is named at the end, and the others still run
    echo "=== $header" | tee -a "$log"
    "$@" 2>&1 | tee -a "$log" || failed+=("$header")
}
further() {  # further HEADER COMMAND...: a section, if the script is still within its budget
    if (( SECONDS - started < budget )); then section "$@"; else skipped+=("$1"); fi
}
train() {  # train ATTENTION [FLAGS...]: bench/train_step.py on the benchmark's model
    local attention=$1; shift
    python3 bench/train_step.py "${model[@]}" --batch_size="$batch" --attention="$attention" \
        --steps="${TRAIN_STEPS:-10}" "$@"
}
with_xla_flag() {  # with_xla_flag FLAG COMMAND...: COMMAND with FLAG added to XLA_FLAGS
    local flag=$1; shift
    XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$flag" "$@"
}
sample() {  # sample ATTENTION: the analytic sampler's runs of bench/sample.py
    python3 bench/sample.py "${model[@]}" --batch_size="${SAMPLE_BATCH:-16}" --attention="$1" \
        --steps="${SAMPLE_STEPS:-128}" --predictors=analytic --repeats=2
}

# The default program, as the trainer runs it. On GPUs also a profile of 3 steps (every kernel's measured time), the
# autotuned program and XLA's autotuning results, for study after the machine is gone (bench/README.md, "Where an
# H200 step's time would go"), and the roofline estimate of that same program, read back without compiling, kernel
# by kernel against the profile's measured times.
if [ "$backend" = gpu ]; then
    section "train: $size $dtype L=$length batch $batch attention=$main remat=config" \
        with_xla_flag --xla_gpu_dump_autotune_results_to="$results/autotune_results.textproto" train "$main" \
        --profile_dir="$results/profile" --save_hlo="$results/train_step.hlo"
    section "roofline: $size $dtype L=$length batch $batch attention=$main remat=config" \
        python3 bench/roofline.py "${model[@]}" --batch_size="$batch" --attention="$main" \
        --topology="${ROOFLINE_TOPOLOGY:-local}" --hlo="$results/train_step.hlo" --profile="$results/profile" --top=15
else
    section "train: $size $dtype L=$length batch $batch attention=$main remat=config" train "$main"
fi
section "sample: $size $dtype L=$length batch ${SAMPLE_BATCH:-16} attention=$main" sample "$main"
for attention in ${attentions#"$main"}; do
    section "train: $size $dtype L=$length batch $batch attention=$attention remat=config" train "$attention"
    section "sample: $size $dtype L=$length batch ${SAMPLE_BATCH:-16} attention=$attention" sample "$attention"
done

# Further measurements, while the budget lasts.
# On GPUs, the same step with XLA's pass that allocates a loop's fully overwritten buffers instead of zero-filling
# them (off by default in XLA; JAX's scan zero-fills its stacked outputs, 2.6% of the step at the roofline: bench/
# README.md): its speed, and its first step's loss and gradient norm against the first run's (they should agree).
[ "$backend" = gpu ] && further "train: $size $dtype L=$length batch $batch attention=$main remat=config, \
--xla_gpu_enable_dus_accumulator_zero_init_elimination" \
    with_xla_flag --xla_gpu_enable_dus_accumulator_zero_init_elimination=true train "$main"
# The runs above compute the last layers at masked positions only (the trainer's default for the absorbing graph),
# so their MFU counts FLOPs they skipped; the whole network once more, for the hardware's utilisation:
further "train: $size $dtype L=$length batch $batch attention=$main remat=config, whole network" \
    train "$main" --masked_positions_only=0
# The likelihood bound's draws (sedd-evaluate's computation), the whole network against the last layers at masked
# positions only:
further "likelihood: $size $dtype L=$length batch ${EVAL_BATCH:-16} attention=$main" \
    python3 bench/likelihood.py "${model[@]}" --batch_size="${EVAL_BATCH:-16}" --attention="$main" \
    --mc_samples="${EVAL_DRAWS:-4}" --repeats=3
# Other remat policies (none: every activation kept; SEDD-small fits an H200 either way).
for remat in ${REMATS:-none}; do
    for attention in $attentions; do
        further "train: $size $dtype L=$length batch $batch attention=$attention remat=$remat" \
            train "$attention" --remat="$remat"
    done
done
echo "took $((SECONDS - started)) s (budget ${budget} s)" | tee -a "$log"
for header in "${skipped[@]}"; do
    echo "skipped for the budget (raise BUDGET_S to run it): $header" | tee -a "$log"
done
for header in "${failed[@]}"; do echo "failed (its output is above): $header" | tee -a "$log"; done
echo "figures written to $log"
[ ${#failed[@]} -eq 0 ]
