"""Offline batch inference on Ray: many clips (or the windows of one long video) on a
pool of actors that each hold one loaded session.

    items.py   what the items are, their done markers, batch.json and the summary (no Ray)
    worker.py  SessionWorker: one Predictor, runs an item or a stream window (no Ray)
    pool.py    Ray: start or join a cluster, the actor pool with retries on actor death
    run.py     run_batch (items -> OUT/<item>/) and ParallelWindows (infer --stream --workers)
    command.py the `batch` command

Ray is the optional ``batch`` extra (``pip install -e .[batch]``) and is imported only
by pool.py, inside its functions: the runtime imports without it.
"""
