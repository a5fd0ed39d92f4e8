#!/usr/bin/env bash
# A throwaway AllenNLP 2.10.1 for the ELMo speed comparison, never installed into
# the project's environment. AllenNLP pins torch<1.13 and spaCy<3.4, so the wheel
# is unpacked (--no-deps) into DIR/site, and the third-party modules its import
# chain touches but _ElmoBiLm never uses get inert stubs in DIR/stubs.
#
#   bash benchmarks/setup_allennlp.sh /tmp/allennlp
set -euo pipefail
dir=${1:?usage: setup_allennlp.sh DIR}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$dir/site" "$dir/stubs"
"$python" -m pip download -q --no-deps allennlp==2.10.1 -d "$dir"
(cd "$dir/site" && unzip -qo ../allennlp-2.10.1-py3-none-any.whl)
stub='class _Stub:
    def __init__(self, *a, **k): pass
    def __call__(self, *a, **k): return _Stub()
    def __getattr__(self, name): return _Stub()
    def __mro_entries__(self, bases): return ()
def __getattr__(name):
    return _Stub()'
for _ in $(seq 1 40); do
  out=$(PYTHONPATH="$dir/site:$dir/stubs" "$python" -c "from allennlp.modules.elmo import _ElmoBiLm; print('IMPORTED')" 2>&1 || true)
  if grep -q IMPORTED <<<"$out"; then echo "AllenNLP _ElmoBiLm importable from $dir"; exit 0; fi
  missing=$(grep -oP "No module named '\K[^']+" <<<"$out" | head -1)
  [ -n "$missing" ] || { echo "$out" >&2; exit 1; }
  mkdir -p "$dir/stubs/${missing//.//}"
  printf '%s\n' "$stub" > "$dir/stubs/${missing//.//}/__init__.py"
done
echo "gave up stubbing" >&2; exit 1
