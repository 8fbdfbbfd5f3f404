"""Writers of the files people load into other tools, numpy + stdlib only (trimesh for GLB,
imported when a GLB is written):

- cameras.py: cameras.jsonl (strict JSON, null for non-finite numbers) and TUM trajectories;
- colmap.py: a COLMAP sparse model (text and binary) of the cameras and a point cloud;
- glb.py: one glTF binary scene, coloured points and a frustum per camera.

Shared by ``infer`` (runtime/predictor.py) and ``infer --stream`` (runtime/streaming.py).
"""
