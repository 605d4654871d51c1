#!/usr/bin/env bash
# SEDD-small in bfloat16 at length 1024 on one accelerator (GPU or TPU), in a few minutes: training MFU and
# tokens/s, sampling tokens/s (analytic predictor, 128 steps + denoiser) and peak memory, for the plain and the
# fused attention (and splash on TPUs); training with the config's rematerialisation policy and without any, and
# once for the whole network (no masked-positions skip: the MFU of the hardware); the likelihood bound's draws; on
# GPUs, a profile of 3 steps of the default program, the train step again with XLA's pass that skips zero-filling the
# scan's outputs, and the roofline estimate of the train step (bench/roofline.py), whose autotuned program it keeps.
# Needs only jax (with its CUDA or TPU plugin), flax, optax, chex, orbax-checkpoint, etils and ml-collections:
# nothing of the data stack.
#
#   bash bench/accelerator.sh [RESULTS_DIR]          # figures go to stdout and RESULTS_DIR/accelerator.txt
#
# Environment overrides (defaults in brackets): SIZE [small], LENGTH [1024], BATCH [32], TRAIN_STEPS [10],
# SAMPLE_BATCH [16], SAMPLE_STEPS [128], ATTENTIONS ["plain fused", and splash on TPUs], REMATS ["config none"],
# EVAL_BATCH [16], EVAL_DRAWS [4], DTYPE [bfloat16], WHEELS [.whl] (a folder with an ml-collections wheel, for
# offline machines without it).
set -euo pipefail
cd "$(dirname "$0")/.."
results=${1:-bench-results}
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
size=${SIZE:-small} length=${LENGTH:-1024} dtype=${DTYPE:-bfloat16}
backend=$(python3 -c 'import jax; print(jax.default_backend())')
attentions=${ATTENTIONS:-}
if [ -z "$attentions" ]; then  # splash attention runs only on TPUs (elsewhere it is plain attention)
    attentions="plain fused"
    [ "$backend" = tpu ] && attentions="$attentions splash"
fi
for attention in $attentions; do
    for remat in ${REMATS:-config none}; do  # "config": the config's policy (recomputes in the backward); none
        train_flags=()
        [ "$remat" != config ] && train_flags=(--remat="$remat")
        # the default program, as the trainer runs it: on GPUs also a profile of 3 steps (every kernel's measured time)
        [ "$backend" = gpu ] && [ "$attention" = fused ] && [ "$remat" = config ] \
            && train_flags+=(--profile_dir="$results/profile")
        echo "=== train: $size $dtype L=$length batch ${BATCH:-32} attention=$attention remat=$remat" | tee -a "$log"
        python3 bench/train_step.py --size="$size" --compute_dtype="$dtype" --length="$length" \
            --batch_size="${BATCH:-32}" --attention="$attention" --steps="${TRAIN_STEPS:-10}" "${train_flags[@]}" \
            2>&1 | tee -a "$log"
    done
    echo "=== sample: $size $dtype L=$length batch ${SAMPLE_BATCH:-16} attention=$attention" | tee -a "$log"
    python3 bench/sample.py --size="$size" --compute_dtype="$dtype" --length="$length" \
        --batch_size="${SAMPLE_BATCH:-16}" --attention="$attention" --steps="${SAMPLE_STEPS:-128}" \
        --predictors=analytic --repeats=2 2>&1 | tee -a "$log"
done
# On GPUs, the same step with XLA's pass that allocates a loop's fully overwritten buffers instead of zero-filling
# them (off by default in XLA; JAX's scan zero-fills its stacked outputs, 2.6% of the step at the roofline: bench/
# README.md): its speed, and its first step's loss and gradient norm against the first run's (they should agree).
if [ "$backend" = gpu ]; then
    echo "=== train: $size $dtype L=$length batch ${BATCH:-32} attention=$attention remat=config," \
        "--xla_gpu_enable_dus_accumulator_zero_init_elimination" | tee -a "$log"
    XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_dus_accumulator_zero_init_elimination=true" \
        python3 bench/train_step.py --size="$size" --compute_dtype="$dtype" --length="$length" \
        --batch_size="${BATCH:-32}" --attention="$attention" --steps="${TRAIN_STEPS:-10}" 2>&1 | tee -a "$log"
fi
# The runs above compute the last layers at masked positions only (the trainer's default for the absorbing graph),
# so their MFU counts FLOPs they skipped; the whole network once more, for the hardware's utilisation:
echo "=== train: $size $dtype L=$length batch ${BATCH:-32} attention=$attention remat=config, whole network" \
    | tee -a "$log"
python3 bench/train_step.py --size="$size" --compute_dtype="$dtype" --length="$length" \
    --batch_size="${BATCH:-32}" --attention="$attention" --steps="${TRAIN_STEPS:-10}" --masked_positions_only=0 \
    2>&1 | tee -a "$log"
# The likelihood bound's draws (sedd-evaluate's computation), the whole network against the last layers at masked
# positions only:
echo "=== likelihood: $size $dtype L=$length batch ${EVAL_BATCH:-16} attention=$attention" | tee -a "$log"
python3 bench/likelihood.py --size="$size" --compute_dtype="$dtype" --length="$length" \
    --batch_size="${EVAL_BATCH:-16}" --attention="$attention" --mc_samples="${EVAL_DRAWS:-4}" --repeats=3 \
    2>&1 | tee -a "$log"
echo "figures written to $log"
# On GPUs: the roofline estimate of the same train step as compiled here (autotuned), to set against its measured
# time above (bench/README.md, "Where an H200 step's time would go"). The autotuned program and XLA's autotuning
# results are kept in RESULTS_DIR, for reading without a GPU (`bench/roofline.py --hlo=RESULTS_DIR/train_step.hlo`).
if [ "$backend" = gpu ]; then
    echo "=== roofline: $size $dtype L=$length batch ${BATCH:-32} attention=$attention remat=config" | tee -a "$log"
    XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_dump_autotune_results_to=$results/autotune_results.textproto" \
        python3 bench/roofline.py --size="$size" --compute_dtype="$dtype" --length="$length" \
        --batch_size="${BATCH:-32}" --attention="$attention" --topology=local --top=15 \
        --save_hlo="$results/train_step.hlo" 2>&1 | tee -a "$log"
fi
