#!/usr/bin/env bash
# nlpcal's GPU benchmark in one command (benchmarks/gpu/README.md): installs the carried wheels,
# unpacks the carried data, runs the recipes of .gpu_carry/recipes/full under a time guard, and
# leaves the results in $OUT.
#
#   bash benchmarks/gpu/run.sh           the full run (GPU; about 9 minutes on one H200)
#   bash benchmarks/gpu/run.sh --smoke   the same path at a tiny size on whatever device exists
#                                        (no CUDA: bf16 off, use_cpu on)
#
# Options: --carry DIR (default .gpu_carry, filled by benchmarks/gpu/prepare.py), --work DIR (the
# run folder, default a new temporary folder), --budget SECONDS (the time guard: no phase runs past
# it; default 560, smoke 900), --phases A,B (only these phases, in the order below). Environment:
# PYTHON (default python3), OUT (default WORK/out).
#
# Phases, in order of value, all in the same run folders (the runner resumes, keeping finished
# cells, and rewrites the report after each phase): sst2_shift (seed 0), drift_default
# (benchmarks/drift_default.py: the default drift perturbation, chosen on the SST-2 calibration
# split alone; started only with 90 s left, as it saves nothing until it ends), snli_mnli,
# sst2_shift_seeds01 (adds seed 1), sst2_shift_seeds012 (adds seed 2). A phase cut by the guard
# leaves the report of the phase before it and the cells it finished. Exit status: 0 every phase
# finished, 3 some phase was cut or skipped for time, 1 a phase or the set-up failed.
#
# $OUT receives log.txt, timings.json, <run>_results.json and <run>_results.md for each run,
# runs.tar.gz (every run folder: reports, figures, per-cell results, drift_default/) and
# predictions.tar.gz (the cells' predictions.npz): eight files at most.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MODE=full
CARRY=$REPO/.gpu_carry
WORK=
BUDGET=
ONLY=
while (($#)); do
  case $1 in
    --smoke) MODE=smoke ;;
    --carry) CARRY=$2; shift ;;
    --work) WORK=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --phases) ONLY=",${2// /},"; [[ $ONLY == *[!,]* ]] || { echo "run.sh: --phases names no phase" >&2; exit 2; }; shift ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
PHASES=(sst2_shift drift_default snli_mnli sst2_shift_seeds01 sst2_shift_seeds012)
IFS=, read -ra SELECTED <<<"${ONLY#,}"
for phase in "${SELECTED[@]}"; do
  [[ " ${PHASES[*]} " == *" $phase "* ]] || { echo "run.sh: unknown phase $phase (known: ${PHASES[*]})" >&2; exit 2; }
done
if [[ -n $ONLY ]]; then
  for i in "${!PHASES[@]}"; do [[ $ONLY == *",${PHASES[i]},"* ]] || unset "PHASES[i]"; done
  PHASES=("${PHASES[@]}")
fi
PY=${PYTHON:-python3}
[[ $PY == */* ]] && PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # phases run in WORK
CARRY=$(cd "$CARRY" 2>/dev/null && pwd) || { echo "run.sh: no carry folder: run benchmarks/gpu/prepare.py" >&2; exit 1; }
WORK=${WORK:-$(mktemp -d /tmp/nlpcal_gpu.XXXXXX)}
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
OUT=${OUT:-$WORK/out}
mkdir -p "$OUT"
if [[ -z $BUDGET ]]; then
  if [[ $MODE == full ]]; then BUDGET=560; else BUDGET=900; fi
fi
RESERVE=20  # seconds kept for packing the results

log() { printf '[run.sh %4ds] %s\n' "$SECONDS" "$*"; }

install_wheels() {
  # Full run: every carried wheel into WORK/pylib, first on PYTHONPATH. Smoke: every wheel into a
  # throw-away target for the device's Python 3.12 (they must install there), and onto PYTHONPATH
  # only those this Python cannot import already.
  local site=$WORK/pylib wheels=() wheel name
  mapfile -t wheels < <("$PY" -c '
import json, sys
for name, pin in json.load(open(sys.argv[1]))["wheels"].items():
    print(name, pin["file"])' "$CARRY/manifest.json")
  ((${#wheels[@]})) || { log "no wheels listed in $CARRY/manifest.json"; return 1; }
  local pip=("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade)
  local files=() keep=()
  for wheel in "${wheels[@]}"; do
    name=${wheel%% *}
    [[ -f $CARRY/wheels/${wheel#* } ]] || { log "missing wheel ${wheel#* }"; return 1; }
    files+=("$CARRY/wheels/${wheel#* }")
    if [[ $MODE == smoke ]] && "$PY" -c "import importlib.metadata as m; m.version('$name')" 2>/dev/null; then
      log "smoke: $name is installed already, not put on PYTHONPATH"
    else
      keep+=("$CARRY/wheels/${wheel#* }")
    fi
  done
  if [[ $MODE == smoke ]]; then
    "${pip[@]}" --target "$WORK/wheel_check" --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 "${files[@]}" || return 1
    log "smoke: all ${#files[@]} wheels install"
  fi
  if ((${#keep[@]})); then
    "${pip[@]}" --target "$site" "${keep[@]}" || return 1
  fi
  export PYTHONPATH=$site:$REPO${PYTHONPATH:+:$PYTHONPATH}
  log "installed ${#keep[@]} wheels into $site"
}

set_up() {
  log "mode $MODE, budget ${BUDGET}s, carry $CARRY, run folder $WORK"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  else
    log "no nvidia-smi"
  fi
  install_wheels || { log "installing the wheels failed"; return 1; }
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HOME=$WORK/hf_home MPLBACKEND=Agg
  export TOKENIZERS_PARALLELISM=false HF_DATASETS_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1
  # Everything the runner imports, and the versions it runs with; stops here, in seconds, when
  # the device's packages do not fit the carried ones.
  "$PY" -c '
import platform, torch, transformers, datasets, pyarrow, fsspec, nlpcal.bench
cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"python {platform.python_version()}, torch {torch.__version__}, transformers "
      f"{transformers.__version__}, datasets {datasets.__version__}, pyarrow {pyarrow.__version__}, "
      f"fsspec {fsspec.__version__}; CUDA device: {cuda}")' || { log "the runner cannot be imported"; return 1; }
  mkdir -p "$WORK/data" "$WORK/recipes"
  (cd "$CARRY/data" && find text -name '*.gz') | while read -r file; do
    mkdir -p "$WORK/data/$(dirname "$file")"
    gunzip -c "$CARRY/data/$file" >"$WORK/data/${file%.gz}"
  done
  (cd "$WORK/data" && sha256sum --quiet -c "$CARRY/data/SHA256SUMS") || { log "data check failed"; return 1; }
  ln -sfn "$CARRY/model" "$WORK/model"
  if ! diff -rq "$CARRY/recipes" "$REPO/benchmarks/gpu/recipes" >/dev/null; then
    log "WARNING: .gpu_carry/recipes differ from benchmarks/gpu/recipes: run prepare.py again"
  fi
  CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')
}

recipe_path() {  # the recipe file of phase $1
  if [[ $MODE == full ]]; then
    echo "$CARRY/recipes/full/$1.yaml"
  elif ((CUDA)); then
    echo "$CARRY/recipes/smoke/$1.yaml"
  else
    printf 'base: %s\ntraining: {bf16: false, use_cpu: true}\n' "$CARRY/recipes/smoke/$1.yaml" >"$WORK/recipes/$1.yaml"
    echo "$WORK/recipes/$1.yaml"
  fi
}

phase_command() {  # the command of phase $1, run in WORK, into the array CMD
  if [[ $1 != drift_default ]]; then
    CMD=("$PY" -m nlpcal bench --recipe "$(recipe_path "$1")" --output-dir "runs/${1%%_seeds*}")
    # Smoke: the later seeds for cross-entropy alone (resume and ensembles are one path for all).
    [[ $MODE == smoke && $1 == *_seeds* ]] && CMD+=(--methods cross_entropy)
    return 0
  fi
  local size=()
  # Smoke: a model above chance on 64 rows a fold, the Gaussian family (the search and fits are
  # the same code for both; signed-gradient steps would take minutes on CPU), three corruptions.
  [[ $MODE == smoke ]] && size=(--train-samples 64 --epochs 2 --n 128 --families gaussian
    --levels 2 --drops 0.5 --search-steps 5 --corruptions char_swap word_drop punctuation)
  # One batch per fold on the GPU: the strength searches' passes are bound by launches, not size.
  ((CUDA)) && size+=(--batch-size 1024) || size+=(--use-cpu)
  CMD=("$PY" "$REPO/benchmarks/drift_default.py" --model model/all-MiniLM-L6-v2
    --train shared:sst2/train --calibration shared:sst2/dev --data-dir data
    --out runs/drift_default/drift_default.json "${size[@]}")
}

run_phases() {
  local recipe run left start status need failed=" "
  : >"$WORK/phases.tsv"
  for recipe in "${PHASES[@]}"; do
    run=${recipe%%_seeds*}
    left=$((BUDGET - SECONDS - RESERVE))
    need=30  # the runner keeps each finished cell; drift_default.py writes only at its end
    [[ $recipe == drift_default && $MODE == full ]] && need=90
    if [[ $failed == *" $run "* ]]; then
      printf '%s\t%s\tskipped_after_failure\t0\n' "$recipe" "$run" >>"$WORK/phases.tsv"
      continue
    elif ((left < need)); then
      log "$recipe: skipped, ${left}s left"
      printf '%s\t%s\tskipped_for_time\t0\n' "$recipe" "$run" >>"$WORK/phases.tsv"
      continue
    fi
    log "$recipe: start (guard ${left}s)"
    start=$SECONDS
    phase_command "$recipe"
    (cd "$WORK" && timeout -k 10 "$left" "${CMD[@]}")
    status=$?
    case $status in
      0) status=ok ;;
      124 | 137) status=timed_out ;;
      *) status=failed_$status; failed+="$run " ;;
    esac
    log "$recipe: $status after $((SECONDS - start))s"
    printf '%s\t%s\t%s\t%d\n' "$recipe" "$run" "$status" $((SECONDS - start)) >>"$WORK/phases.tsv"
  done
}

pack() {
  local run
  mkdir -p "$WORK/runs"
  for run in "$WORK"/runs/*/; do
    run=$(basename "$run")
    for file in results.json results.md; do
      [[ -f $WORK/runs/$run/$file ]] && cp "$WORK/runs/$run/$file" "$OUT/${run}_$file"
    done
  done

  # The predictions apart, so that the rest always comes back (16 MiB a file): with them, a run
  # cut by the guard can be reported here from its finished cells (nlpcal bench --methods ...).
  tar -czf "$OUT/runs.tar.gz" -C "$WORK" --exclude='*/model' --exclude='*.safetensors' --exclude='*.npz' runs
  if (($(stat -c %s "$OUT/runs.tar.gz") > 16 * 1024 * 1024 - 4096)); then
    log "runs.tar.gz over 16 MiB: packed again without figures and HTML reports"
    tar -czf "$OUT/runs.tar.gz" -C "$WORK" --exclude='*/model' --exclude='*.safetensors' \
      --exclude='*.npz' --exclude='*.png' --exclude='*.html' runs
    (($(stat -c %s "$OUT/runs.tar.gz") <= 16 * 1024 * 1024 - 4096)) ||
      log "runs.tar.gz still over 16 MiB: it will not come back (the <run>_results files will)"
  fi
  (cd "$WORK" && find runs -name '*.npz' -print0 | tar -czf "$OUT/predictions.tar.gz" --null -T -)
  if (($(stat -c %s "$OUT/predictions.tar.gz") > 16 * 1024 * 1024 - 4096)); then
    log "predictions.tar.gz over 16 MiB: not brought back"
    rm "$OUT/predictions.tar.gz"
  fi
  "$PY" - "$WORK/phases.tsv" "$OUT/timings.json" "$MODE" "$BUDGET" "$SECONDS" <<'EOF'
import json, shutil, subprocess, sys
phases_file, out, mode, budget, seconds = sys.argv[1:]
gpu = None
if shutil.which("nvidia-smi"):
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
phases = []
for line in open(phases_file).read().splitlines():
    recipe, run, status, secs = line.split("\t")
    phases.append({"recipe": recipe, "run": run, "status": status, "seconds": int(secs)})
json.dump({"mode": mode, "gpu": gpu, "budget_s": int(budget), "wall_s": int(seconds),
           "phases": phases}, open(out, "w"), indent=2)
EOF
  log "phases (recipe, run folder, status, seconds):"
  cat "$WORK/phases.tsv"
  log "results in $OUT: $(cd "$OUT" && echo *)"
}

main() {
  local status=0
  : >"$WORK/phases.tsv"
  if set_up; then
    run_phases
    if grep -q $'\tfailed' "$WORK/phases.tsv"; then
      status=1
    elif grep -qv $'\tok\t' "$WORK/phases.tsv"; then
      status=3
    fi
  else
    status=1
  fi
  pack
  log "done in ${SECONDS}s, exit status $status"
  return $status
}

main 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
