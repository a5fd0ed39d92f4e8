#!/usr/bin/env bash
# Everything benchmarks/gpu_check.sh needs on the GPU machine, in .gpu/ (run here, from the
# project root, after the README's set-up command; 3-6 minutes):
#   - ../shared/gpu/pack.sh's wheels, less the [ray] extra's ray, pyarrow and pandas: nothing in
#     the GPU check imports them, and with them .gpu/ is about
#     130 MiB, over the 64 MiB that a device call carries with the working tree;
#   - UD EWT train and dev (the BERT arms' documents and the ELMo arms' sentences);
#   - AllenNLP for the ELMo comparison (benchmarks/setup_allennlp.sh).
# It fails if the result would not fit.
set -euo pipefail
data=${DATA_DIR:-../shared/data}
bash ../shared/gpu/pack.sh
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
tar xJf .gpu/site.txz -C "$site"
rm -rf "$site"/ray "$site"/ray-*.dist-info "$site"/pyarrow "$site"/pyarrow-*.dist-info \
  "$site"/pandas "$site"/pandas-*.dist-info
tar cJf .gpu/site.txz -C "$site" .
mkdir -p .gpu/ud_english_ewt
cp "$data"/ud_english_ewt/en_ewt-ud-{train,dev}.conllu .gpu/ud_english_ewt/
rm -rf .gpu/allennlp
bash benchmarks/setup_allennlp.sh .gpu/allennlp >/dev/null
rm -f .gpu/allennlp/*.whl  # (unpacked into site/)
tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
carried=$(du -sb .gpu | cut -f1)
limit=$((64 * 1024 * 1024))
echo "working tree $((tree / 1024)) KiB + .gpu $((carried / 1024)) KiB (limit $((limit / 1024)) KiB)"
if [ $((tree + carried)) -gt $((limit - 4 * 1024 * 1024)) ]; then
  echo "too large to carry to the device: see du -sh .gpu/*" >&2
  exit 1
fi
echo "ready: device call with carry [\".gpu\"]: source .gpu/device-env.sh && bash benchmarks/gpu_check.sh"
