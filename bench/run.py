"""Run every benchmark in this folder, one after another (they share the 2 cores; never in parallel)."""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).parent
for script in ("bench_tokenizers.py", "bench_sampling.py", "bench_fid.py", "bench_steps.py"):
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, str(here / script)], check=True)
