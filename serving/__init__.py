"""Serving VGGT_MV with NVIDIA Triton Inference Server.

Layer: above runtime/ (beside accuracy/); it imports runtime/ and the standard library,
tritonclient only inside the client. Modules:

- ``pbtxt``: config.pbtxt writer, strict parser and schema check;
- ``repository``: ``export-triton`` (a model repository from exported buckets);
- ``triton_model``: the Python-backend model copied into the repository;
- ``server``: find and run ``tritonserver`` (``serve``), readiness, clean stop;
- ``verify``: ``serve``'s checks of a repository before the server starts;
- ``client``: ``infer --server`` over HTTP or gRPC (tritonclient);
- ``load``: concurrent closed-loop clients (bench and tests);
- ``commands``: the typer commands cli.py registers.
"""
