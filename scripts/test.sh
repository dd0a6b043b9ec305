#!/usr/bin/env bash
# The test command: installs what the tests need (the pinned requirements, lmms-eval without its av pin, the
# project itself, Debian's Chromium for the demo's browser test and WordNet for METEOR, mamba-ssm's sdist for the
# reference-scan tests), then runs the whole suite, as CI does (.ci/run calls this script). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's WordNet 3.0 (the official METEOR's synonyms) too: no PyPI package ships it
DEBS="chromium chromium-driver wordnet-base wordnet-sense-index"
if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ] || ! [ -f /usr/share/wordnet/index.sense ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $DEBS >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $DEBS >/dev/null; }
fi
python3 -m pip install -q -r requirements.txt -r requirements-lmms-eval.txt
python3 -m pip install -q --no-deps lmms-eval==0.7.3
python3 -m pip install -q --no-deps -e .
# mamba-ssm's own selective_scan_ref, which tests/test_selective_scan.py checks the project's scan against: its
# sdist only (the package needs CUDA to build); gemma3/model/upstream.py compiles that one function from it.
if ! [ -f .cache/upstream/mamba_ssm-2.3.1.tar.gz ]; then
  MAMBA_SKIP_CUDA_BUILD=TRUE python3 -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
    mamba-ssm==2.3.1 -d .cache/upstream
fi
# WordNet and Punkt into NLTK's data folder, once, before the parallel workers score anything
python3 -m gemma3.evaluation.nltk_resources
python3 -m pytest -q tests "$@"
