"""How prepare's work items run: on a pool of Ray Data actors (a fixed pool, or one that grows with
the cluster), or one after another in this process; and the training split's word counts, merged
across the cluster by a groupby, for learning the tokenizer. What each item does is work.py's.
"""

from __future__ import annotations

import contextlib
from collections import Counter

from pipeline import cluster
from pipeline.data.work import ERROR_MARK, CountWords, Tokenize, row_error
from pipeline.runtime import ray_init


def on_ray_data(worker_cls, kwargs: dict, items: list[dict], cfg, merge=None):
    """worker_cls's output for every work item, in input order, from a pool of Ray Data actors
    (or, with merge, what merge makes of that Dataset)."""
    import ray

    ray_init()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    if cfg.parallelism or not cluster.can_grow():
        # A pool of fixed size. More workers than CPUs, where asked for, share them.
        workers = min(cfg.parallelism or cpus, len(items))
        pool, num_cpus = ray.data.ActorPoolStrategy(size=workers), min(1.0, cpus / workers)
    else:
        # A pool that grows with the cluster: Ray Data adds workers while work waits, and the
        # autoscaler adds CPU nodes for them.
        pool, num_cpus = ray.data.ActorPoolStrategy(min_size=1, max_size=len(items)), 1.0
    # Each worker tokenizes with one thread: the parallelism is Ray's, not tokenizers'.
    env = {"env_vars": {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}}
    out = ds.map_batches(
        worker_cls,
        batch_size=1,
        fn_constructor_kwargs=kwargs,
        num_cpus=num_cpus,
        compute=pool,
        runtime_env=env,
    )
    if merge is not None:
        out = merge(out)
    fmt = "pyarrow" if worker_cls is Tokenize else "numpy"
    # Closed on the way out, also when a bad input or a full disk stops the reader: Ray Data then
    # shuts its executor down now, not later in a background thread of another command.
    with contextlib.closing(iter(out.iter_batches(batch_size=None, batch_format=fmt))) as batches:
        yield from batches


def word_counts(kwargs: dict, items: list[dict], cfg, local: bool) -> Counter:
    """Each distinct word of the training split with its count over the whole corpus. On Ray,
    the work items' tables are merged by a groupby across the cluster; the driver receives the
    merged table only."""
    if local:
        batches = (
            {"word": b["word"], "sum(count)": b["count"]} for b in in_process(CountWords, kwargs, items, cfg)
        )
    else:
        batches = on_ray_data(
            CountWords, kwargs, items, cfg, merge=lambda ds: ds.groupby("word").sum("count")
        )
    counts: Counter = Counter()
    with contextlib.closing(iter(batches)) as it:
        for b in it:
            for word, c in zip(b["word"], b["sum(count)"], strict=True):
                if word.startswith(ERROR_MARK):
                    raise row_error(word[len(ERROR_MARK) :])
                counts[word] += int(c)
    return counts


def in_process(worker_cls, kwargs: dict, items: list[dict], cfg):
    """The same, one work item after another in this process: no Ray."""
    work = worker_cls(**kwargs)
    for item in items:
        yield from work({k: [v] for k, v in item.items()})
