#!/usr/bin/env bash
# The baselines of docs/results.md "Real text (SQuAD-Seq)": the QA-warmed SmolLM2 on the SQuAD-Seq test
# stream (the same 1,000 fixed questions for every row), the zero-shot one, online fine-tuning's learning-rate
# sweep on the validation stream and its run on the test stream, RAG with 4 documents and a bf16-vs-float32 check. Reports (JSON + Markdown + PNG) go to docs/results/squad-seq/.
#   bash benchmarks/squad_seq_baselines.sh [DATA_DIR]     (default ../shared/data/squad-seq)
# Steps run in order and each is skipped when its report exists (delete it to re-run).
set -euo pipefail
cd "$(dirname "$0")/.."
D="${1:-../shared/data/squad-seq}"
OUT=docs/results/squad-seq
MAC=".venv/bin/mac-memory"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
TEST=(--data "$D/squad_seq_test.jsonl.gz" --max-questions 1000 --no-retention --threads 2)

run() {  # run NAME ARGS...: one eval, unless its report is already there
  local name="$1"; shift
  if [ -f "$OUT/$name.json" ]; then echo "[skip] $name"; return; fi
  echo "[run] $name: $*"; date
  "$MAC" eval "$@" --out "$OUT/$name.json"
}

run warmed-k1 --base-lm smollm2-135m-instruct-qa --methods no_memory rag_gold rag --k 1 "${TEST[@]}"
for lr in 1e-4 1e-5; do  # online fine-tuning ("Uniform"): its learning rate, chosen on validation
  run "online-ft-val-lr$lr" --base-lm smollm2-135m-instruct-qa --methods no_memory online_ft --ft-lr "$lr" \
      --data "$D/squad_seq_val.jsonl.gz" --limit-docs 100 --max-questions 200 --no-retention --threads 2
done
# online fine-tuning at the chosen rate over the whole test stream, with retention of the first 200 documents
run online-ft-test --base-lm smollm2-135m-instruct-qa --methods online_ft --ft-lr 1e-4 --retention \
    --data "$D/squad_seq_test.jsonl.gz" --max-questions 1000 --threads 2
run warmed-k4 --base-lm smollm2-135m-instruct-qa --methods rag --k 4 "${TEST[@]}"
run zero-shot --base-lm smollm2-135m-instruct --methods no_memory rag_gold "${TEST[@]}"
SMALL=(--data "$D/squad_seq_test.jsonl.gz" --no-retention --threads 2)
for mp in no bf16; do  # what bf16 autocast does to F1 and speed on this CPU (same 50 questions)
  run "precision-$mp" --base-lm smollm2-135m-instruct-qa --methods rag_gold --mixed-precision "$mp" \
      --max-questions 50 "${SMALL[@]}"
done
date; echo done
