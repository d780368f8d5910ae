"""Turn SmolLM2's GGUF file into a Hugging Face folder that vLLM's CPU build can load.

transformers dequantizes a GGUF file on load but refuses to save a model that still carries its
`quantization_config`, so build a fresh model from the config without it and copy the weights over.

Usage: python prepare_model.py FILE.gguf OUT_DIR   (run with the vLLM environment's Python)
"""

import sys
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


def main(gguf_path: str, out_dir: str) -> None:
    folder, name = str(Path(gguf_path).parent), Path(gguf_path).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise SystemExit(f"weights do not match: missing={missing} unexpected={unexpected}")
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    print(f"saved {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
