"""The worker: Synchronize loop, executor chain, input cache and runner.

Module map (composition root: `cli.serve`; `python -m redbarn.worker` runs it alone;
digests, instance names and worker ids come from `redbarn.digests`, shared with the
frontend and the scheduler; nothing here imports `redbarn.queue`):

    client.py        WorkerThread: one worker identity's Synchronize loop (bb_worker BuildClient)
    executors/       BuildExecutor chain, innermost first: local, container (a
                     container-image platform property), timestamped, resource_usage,
                     caching, metrics, logging (see cli.build_executor)
    inputs.py        fetch input roots, measure them against the limits before building,
                     copy them (hardlink under --run-as) into build directories
    cache.py         LocalCache: content-addressed files on disk, LRU, sealed against
                     rewrites, re-hashed after a restart
    runas.py         --run-as: the dedicated action user, checked at start
    sweep.py         kill what an action left running (its uid, or its marked processes)
    outputs.py       output path checks, parent creation, collection (Tree blobs)
    runner.py        one command in its own process group, deadline, wait4 rusage
    cas.py           CAS/AC/ByteStream client (batched small blobs, streamed large ones)
    builddir.py      per-action build directories
    status.py        errors -> google.rpc.Status, first error wins
    auth.py          bearer token on every call
    config.py, cli.py  WorkerConfig and `redbarn worker`
"""
