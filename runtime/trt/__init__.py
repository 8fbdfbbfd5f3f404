"""Everything TensorRT, in one package: find and load the plugin library (plugins.py),
probe TensorRT / cuda-python / the GPU (env.py), build engines (build.py), describe and
check them (sidecar.py) and run them (session.py).

Importable with numpy + tensorrt (+ cuda-python to run), which is what a Jetson has:
no torch, onnx or polygraphy. Modules import TensorRT only when a function needs it.
"""
