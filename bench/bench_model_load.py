"""First load of the embedded model (GGUF -> safetensors conversion) vs a cached load, in one run.

Usage: .venv/bin/python bench/bench_model_load.py  (uses a fresh temporary model cache)
"""

import json
import tempfile
import time
from pathlib import Path

from stage1_assets.core import model_loader


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        timings = {}
        for label in ("first_load_with_conversion_s", "cached_load_s"):
            start = time.perf_counter()
            loaded = model_loader.load_model(models_dir=Path(cache), device="cpu")
            timings[label] = round(time.perf_counter() - start, 2)
            timings[label.replace("_s", "_converted")] = loaded.info.converted_from_gguf
            del loaded
    print(json.dumps(timings, indent=2))


if __name__ == "__main__":
    main()
