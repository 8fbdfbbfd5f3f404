"""Offline batch inference on Ray: many clips on Ray Data (``map_batches`` over stateful
actors that each hold one loaded session), and the windows of one long video on a pool of
Ray Core actors.

    items.py   what the items are, their done markers, batch.json and the summary (no Ray)
    worker.py  SessionWorker: one Predictor, runs an item or a stream window (no Ray)
    data.py    the Ray Data pipeline and ItemMapper (its callable class), attempt counting
    pool.py    Ray: start or join a cluster; the Core actor pool of the stream windows
    run.py     run_batch (items -> OUT/<item>/) and ParallelWindows (infer --stream --workers)
    command.py the `batch` command

Ray is the optional ``batch`` extra (``pip install -e .[batch]``: ray[data]) and is imported
only inside functions: the runtime imports without it.
"""
