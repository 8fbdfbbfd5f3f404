"""Size and write time of the COLMAP model and scene.glb at the export cap (100k points,
64 images: 16 steps x 4 views of mv_scene's 640x480), synthetic data, no model:

    python scripts/bench_exports.py
"""
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from runtime.exports.colmap import ColmapImage, write_colmap
from runtime.exports.glb import write_glb
rng = np.random.default_rng(0)
pts = rng.normal(size=(100_000, 3)).astype(np.float32)
cols = rng.integers(0, 255, (100_000, 3), dtype=np.uint8)
E = np.hstack([np.eye(3), np.zeros((3, 1))])
K = np.array([[500., 0, 319.5], [0, 500, 239.5], [0, 0, 1]])
ims = [ColmapImage(f"time_{t:02d}/view{v}.png", E, K, 640, 480)
       for t in range(16) for v in range(4)]
d = tempfile.mkdtemp()
t0 = time.perf_counter(); write_colmap(d, ims, pts, cols); t1 = time.perf_counter()
write_glb(os.path.join(d, "scene.glb"), ims, pts, cols); t2 = time.perf_counter()
for f in sorted(os.listdir(d)):
    print(f, round(os.path.getsize(os.path.join(d, f)) / 1e6, 2), "MB")
print(f"colmap {t1 - t0:.2f} s, glb {t2 - t1:.2f} s (100k points, 64 images)")
shutil.rmtree(d)
