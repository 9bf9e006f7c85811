"""Time the synth demo stage alone (bundled Gemma, 2 CPU cores):
    python benchmarks/synth/time_demo_stage.py out/demo-synth
"""
import shutil
import sys
import time
from pathlib import Path

from longforge.models import load_model
from longforge.synth.demo import synth_stage

out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/demo-synth")
shutil.rmtree(out, ignore_errors=True)  # a cold run: no query cache
lm = load_model("gemma-3-270m")
t = time.time()
print(synth_stage(out, lm))
print(f"synth demo stage: {time.time() - t:.0f}s")
