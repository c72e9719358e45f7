"""Pretraining on Ray Train: the workers' session and the driver's hold on a run's directory.

- RaySession: what the training loop sees of Ray Train (rank, device, where to resume from) and
  how a checkpoint is made durable: written beside its final place and renamed in whole (on
  object storage: uploaded with trainer_state.json last), so that it appears complete or not at
  all, whatever kills the writer.
- worker: what each Ray Train worker runs. A StopRun (a non-finite loss, a full disk) ends every
  rank at the same step and hands its one line to the driver through an Outcome actor, so that
  Ray Train does not retry what a retry cannot mend.
- run_lock, repair_ray_index, remove_orphan_staging: the driver's hold on STORAGE/RUN before the
  workers start: one run of a name at a time, Ray Train's index set aside where a full disk or a
  kill cut it off, and the leftovers of killed writers removed.
- fit: TorchTrainer.fit where Ctrl-C and SIGTERM abort the run through its controller and end as
  KeyboardInterrupt, for one line naming the checkpoint to resume from.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from pipeline import errors, outdir, remote
from pipeline.tracking import RunLogger
from pipeline.train.preemption import Watch


class RaySession:
    """The training loop's view of Ray Train: rank, world size, device, checkpoints.

    A checkpoint is written beside its final place (run_path/.checkpoint_N.tmp-PID-*) where the
    storage is a directory, and renamed into place when complete; on object storage it is written
    to a local temporary directory and uploaded with trainer_state.json last. Either way a
    checkpoint_N appears complete or not at all (for object storage: with its trainer_state.json
    or without), whatever kills the writer."""

    def __init__(self, run_path: str, resume_from: str | None = None):
        import ray
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.node = ray.get_runtime_context().get_node_id()  # which ranks share a machine
        self.run_path, self.resume_from = run_path, resume_from
        self.local = remote.Location.of(run_path).local  # None: the run is on object storage
        self.handed_over = None  # the staging directory an upload in the background now owns
        self.async_upload = True  # to object storage; bench/checkpoint_stall.py compares both

    @contextlib.contextmanager
    def resume_dir(self):
        """The newest of: Ray's newest checkpoint of this run (after a worker was replaced), the
        one the driver found in run_path at the start, and the newest complete one in run_path
        now. Ray knows of a checkpoint only once its controller has collected the report, so a
        node lost just after a save would otherwise cost every step since the last one Ray
        collected (all of them, early in a run). Rank 0 chooses; every rank loads its choice."""
        import ray.train
        import torch.distributed as dist

        from pipeline.model_dir import latest_checkpoint

        ckpt, choice = ray.train.get_checkpoint(), None
        if self.rank == 0:
            found = latest_checkpoint(self.run_path)
            paths = [p for p in (ckpt and ckpt.path, self.resume_from, found and found[0]) if p]
            choice = max(paths, key=lambda p: Path(p).name, default=None)
        if self.world_size > 1:
            box = [choice]
            dist.broadcast_object_list(box, 0)
            choice = box[0]
        if choice is None:
            yield None
        elif ckpt is not None and Path(ckpt.path).name == Path(choice).name:
            with ckpt.as_directory() as d:
                yield Path(d)
        else:
            with ray.train.Checkpoint(choice).as_directory() as d:
                yield Path(d)

    @contextlib.contextmanager
    def staging_dir(self, name: str):
        import shutil
        import tempfile

        if self.local is None:
            d = Path(tempfile.mkdtemp(prefix=f"gpt1-ckpt-{os.getpid()}-"))
            outdir.mark(d)
        else:
            d = outdir.sibling(self.local / name, "tmp")
        self.handed_over = None
        try:
            yield d
        finally:
            if self.handed_over != d:  # an upload in the background deletes it when done
                shutil.rmtree(d, ignore_errors=True)

    def _publish(self, checkpoint, name: str):
        import pyarrow.fs as pafs
        import ray.train

        from pipeline.model_dir import STATE_FILE

        if self.local is not None:
            final = self.local / name
            if final.exists():  # the same step written by an attempt that Ray's index lost
                import shutil

                shutil.rmtree(final)

            outdir.publish(Path(checkpoint.path), final)
            return ray.train.Checkpoint(str(final))
        from pipeline import remote

        fs, base = pafs.FileSystem.from_uri(self.run_path)
        dest = f"{base}/{name}"
        # trainer_state.json last: its presence says the rest is there
        remote.upload(Path(checkpoint.path), fs, dest, last=STATE_FILE)
        return ray.train.Checkpoint(dest, filesystem=fs)

    def report(self, metrics: dict, checkpoint_dir: Path | None = None, name: str | None = None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        if ckpt is not None and self.local is None and self.async_upload:
            # Uploaded in the background: training stalls for the local save alone. The local
            # copy is deleted once uploaded; trainer_state.json goes up last, so a copy cut off
            # by a failure is never taken for a complete checkpoint.
            self.handed_over = checkpoint_dir
            ray.train.report(
                metrics,
                checkpoint=ckpt,
                checkpoint_dir_name=name,
                checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
                delete_local_checkpoint_after_upload=True,
                checkpoint_upload_fn=self._publish,
            )
            return
        ray.train.report(
            metrics,
            checkpoint=ckpt,
            checkpoint_dir_name=name,
            checkpoint_upload_fn=self._publish if ckpt else None,
        )


def worker(config: dict) -> None:
    """What each Ray Train worker runs. A StopRun (a non-finite loss, a full disk) ends every
    rank at the same step; rank 0 hands its line to the driver, which Ray does not retry."""
    import ray

    from pipeline.train.loop import LoopSpec, StopRun, train_loop
    from pipeline.train.observe import system_metrics

    spec: LoopSpec = config["spec"]
    session = RaySession(spec.run_path, spec.resume_from)
    tracker = (
        # In the background: an MLflow outage must not stall or fail the run (RunLogger).
        RunLogger(spec.mlflow_uri, spec.mlflow_run_id, background=True)
        if session.rank == 0 and spec.mlflow_run_id
        else None
    )
    # One process a node (its first rank) samples the node's CPU, memory, GPUs and network into
    # the run. Nodes told apart by Ray's node id, as the network check does: Ray Train's node
    # ranks go by IP address, which a machine's simulated nodes share.
    node, first = node_of(session)
    monitor = (
        system_metrics(spec.mlflow_run_id, spec.mlflow_uri, node, spec.pretrain.system_metrics_s)
        if spec.mlflow_run_id and first
        else None
    )
    # Whether this node will go (a drain, a spot reclaim): every rank checkpoints a step later.
    session.watch = Watch(session.node, spec.pretrain.preemption_url or None, spec.pretrain.preemption_poll_s)
    try:
        train_loop(spec, session, tracker)
    except StopRun as err:
        if session.rank == 0:
            ray.get(config["outcome"].put.remote(str(err)))
    finally:
        session.watch.stop()
        if monitor is not None:
            monitor.finish()
        if tracker is not None:  # what is still queued for MLflow, before the process goes
            tracker.flush(timeout=60)


def node_of(session: RaySession) -> tuple[int, bool]:
    """(this rank's node, counted in the order of the nodes' first ranks; whether it is its
    node's first rank), from every rank's Ray node id."""
    import torch.distributed as dist

    nodes = [session.node]
    if session.world_size > 1:
        nodes = [None] * session.world_size
        dist.all_gather_object(nodes, session.node)
    order = list(dict.fromkeys(nodes))
    return order.index(session.node), nodes.index(session.node) == session.rank


def preflight_worker(config: dict) -> None:
    """What each worker of `pretrain --preflight` runs: the network measured (network.py); rank 0
    puts the rows in the driver's box (an Outcome: Ray Train keeps no metrics reported without a
    checkpoint)."""
    import json

    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from pipeline.train import network

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":  # NCCL's object collectives use the current device
        torch.cuda.set_device(device)
    nodes = [None] * world
    if world > 1:
        dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    rows = network.measure(rank, world, nodes, device, config["bytes"]) if world > 1 else []
    if rank == 0:
        ray.get(config["outcome"].put.remote(json.dumps(rows)))


class Outcome:
    """A driver-side box (a Ray actor) for the line that stopped a run, or the preflight's rows."""

    def __init__(self):
        self.line = None

    def put(self, line: str) -> None:
        self.line = line

    def get(self) -> str | None:
        return self.line


@contextlib.contextmanager
def run_lock(run_path: str):
    """Hold the run for this process: a second pretrain of the same run is refused while this one
    lives, from any machine. Locally an flock, so that a crashed or killed run leaves nothing
    stuck; on object storage the run's lease (Location.hold: conditional writes on S3), which a
    run that stopped renewing it (killed, its machine lost) leaves to be taken over."""
    where = remote.Location.of(run_path)
    if where.local is None:
        with where.hold("pretrain"):
            yield
        return
    refused = "another pretrain of this run is running (pid {}); wait for it to end, or pass another --name"
    lock_file = where.local / ".gpt1.lock"
    with outdir.held_alone(lock_file, lambda pid: errors.ConfigError(f"{run_path}: {refused.format(pid)}")):
        yield


def repair_ray_index(run_path: str) -> None:
    """Remove Ray Train's checkpoint index of the run where it cannot be used (cut off by a full
    disk or a kill, or naming checkpoints that are gone): it is Ray's own record, rebuilt as the
    run goes on, and the run resumes from its newest complete checkpoint without it."""
    import pyarrow.fs as pafs

    fs, base = remote.filesystem(run_path)
    index = f"{base}/checkpoint_manager_snapshot.json"
    if fs.get_file_info(index).type != pafs.FileType.File:
        return
    try:
        with fs.open_input_stream(index) as f:
            state = json.loads(f.read())
        names = [
            r["checkpoint_dir_name"]
            for r in state.get("checkpoint_results", [])
            if isinstance(r, dict) and "checkpoint_dir_name" in r
        ]
        usable = all(fs.get_file_info(f"{base}/{n}").type == pafs.FileType.Directory for n in names)
    except (ValueError, UnicodeDecodeError, TypeError, AttributeError):
        usable = False
    if not usable:
        fs.delete_file(index)


def remove_orphan_staging(run_path: str) -> None:
    """Checkpoints whose writer died before renaming them into place."""
    import shutil
    import tempfile

    here = remote.Location.of(run_path).local
    for p in here.glob(f".checkpoint_*.{outdir.MARKER}tmp-*") if here is not None else []:
        outdir.remove_orphans(here / p.name.split(".")[1])
    for p in Path(tempfile.gettempdir()).glob("gpt1-ckpt-*-*"):
        if outdir.orphaned(p):
            shutil.rmtree(p, ignore_errors=True)


def fit(trainer):
    """trainer.fit(), where Ctrl-C and SIGTERM abort the run the way Ray Train aborts it on
    Ctrl-C (its controller stops the workers and its own helpers first), and then end as
    KeyboardInterrupt here, for one line naming the checkpoint to resume from. Ray Train's own
    handler would end the process with status 1 and no word of where to resume, and a plain
    SIGTERM ended it with a C++ stack dump. A checkpoint cut off by the abort is never mistaken
    for a complete one: its writer renames it into place only when done."""
    import signal

    import ray.exceptions

    signals: list[int] = []

    def register(controller) -> None:  # Ray Train's hook, called from fit() on the main thread
        def abort(signum, frame):
            signals.append(signum)
            errors.note_signal(signum)
            if len(signals) > 1:  # a second Ctrl-C: stop waiting for the abort
                raise KeyboardInterrupt
            controller.abort.remote()

        signal.signal(signal.SIGINT, abort)
        signal.signal(signal.SIGTERM, abort)

    trainer._register_sigint_handler = register
    old = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        result = trainer.fit()
    except ray.exceptions.RayActorError:  # the aborted controller
        if not signals:
            raise
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])
    if signals:  # also where the run ended just as it was aborted
        raise KeyboardInterrupt
    return result
