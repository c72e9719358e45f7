import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# What training verifies and stages once per machine goes to a cache of the test run's own (set
# before any Ray worker starts, so that the workers see it too).
os.environ["GPT1_DATA_CACHE"] = tempfile.mkdtemp(prefix="gpt1-test-data-cache-")
# Ray Train's controller polls its workers every 0.2 s, as a local instance of the project's
# does (pipeline/runtime.py), on the simulated clusters and `ray start` heads too: at Ray's 2 s,
# each checkpoint of a test's run of a few seconds waits for the poll.
from pipeline.runtime import POLL  # noqa: E402

os.environ.setdefault(POLL, "0.2")

from model import GPT, GPTConfig, build  # noqa: E402

# The modules whose tests take longest (tests/README.md's profile), heaviest first.
HEAVIEST = (
    "test_readme.py",
    "test_pretrain_cluster.py",
    "test_runbook.py",
    "test_demo.py",
    "test_faults_runs.py",
    "test_pretrain_job.py",
)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`-n 2`; CI runs one process, tests/README.md), the slow tests first,
    the heaviest modules first: each process takes the next test as it frees up
    (`--maxschedchunk 1`, pyproject.toml), so the long ones run side by side and the short ones
    fill the gaps at the end. A run of one process keeps the file order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return

    def weight(item) -> tuple:
        name = item.path.name
        heavy = HEAVIEST.index(name) if name in HEAVIEST else len(HEAVIEST)
        return (item.get_closest_marker("slow") is None, heavy)

    items.sort(key=weight)  # stable: within a module, the file's order


@pytest.fixture
def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny")).eval()


@pytest.fixture
def ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, GPTConfig.preset("tiny").vocab_size, (3, 20), generator=g)


@pytest.fixture(scope="session", autouse=True)
def ray_logging_on_the_process_stderr():
    """Ray's libraries set up their log handlers when first imported, on the sys.stderr of that
    moment: import them once here, on the process's own, never inside a test's capsys stream,
    which is closed when that test ends."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    try:
        import ray.data  # noqa: F401
        import ray.train.torch  # noqa: F401
        import ray.tune  # noqa: F401
    finally:
        sys.stdout, sys.stderr = saved
    yield


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for every test that needs one."""
    import ray

    # Ray's log handlers keep the sys.stderr of the moment they are made (at ray.init, and at
    # Ray Data's first use): the process's own, never a test's capsys stream, which is closed
    # when that test ends (whatever order a test lists its fixtures in).
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    try:
        if not ray.is_initialized():
            # "local": a new instance, always. With no address, ray.init joins any Ray it finds
            # running on the machine, such as one an earlier test's subprocess is still shutting down.
            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        ray.data.range(1).count()
    finally:
        sys.stdout, sys.stderr = saved
    yield ray
    ray.shutdown()


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def task_checkpoint(tmp_path_factory):
    """A model directory: a tiny GPT (random weights) and a tokenizer learned on review text."""
    from corpus_gen import reviews

    from pipeline.data.tokenizer import save_tokenizer, train_tokenizer

    d = tmp_path_factory.mktemp("ckpt")
    tok = train_tokenizer([s for s, _ in reviews(300, 9)], n_merges=200)
    torch.manual_seed(0)
    GPT(GPTConfig.preset("tiny", vocab_size=tok.get_vocab_size())).save_pretrained(d)
    save_tokenizer(tok, d / "tokenizer.json")
    return d


@pytest.fixture(scope="session")
def lstm_checkpoint(tmp_path_factory, task_checkpoint):
    """task_checkpoint's LSTM counterpart: the lstm-tiny network (random weights), same tokenizer."""
    import shutil

    d = tmp_path_factory.mktemp("lstm-run") / "checkpoint"  # its own run directory, not task_checkpoint's
    torch.manual_seed(0)
    vocab_size = GPT.from_pretrained(task_checkpoint).config.vocab_size
    build(GPTConfig.preset("lstm-tiny", vocab_size=vocab_size)).save_pretrained(d)
    shutil.copy(task_checkpoint / "tokenizer.json", d / "tokenizer.json")
    return d


@pytest.fixture(scope="session")
def sst2(tmp_path_factory):
    from corpus_gen import write_sst2

    d = tmp_path_factory.mktemp("sst2")
    write_sst2(d)
    return d


@pytest.fixture
def s3(monkeypatch, tmp_path):
    """A moto S3 server on a free port, a bucket, and the environment that points pyarrow at it."""
    moto = Path(sys.executable).parent / "moto_server"
    if not moto.exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(moto), "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True)
    for _ in range(100):  # the server takes a moment to listen
        try:
            fs.create_dir("gpt1-test")
            break
        except OSError:
            time.sleep(0.1)
    else:
        pytest.fail(f"the moto server on port {port} did not come up")
    yield env
    proc.terminate()
    proc.wait()


@pytest.fixture
def cluster(s3, monkeypatch):
    """A simulated cluster (ray.cluster_utils.Cluster): a head with no CPUs, so that all work goes
    to the two worker nodes of 1 CPU each; the nodes see the S3 server through the environment.

    Ray Train's first restart after a node is killed still counts that node's CPU (Ray has not
    yet declared it dead) and waits out its worker-group start timeout, 60 s by default, before it
    goes on with the workers left: 30 s here, still far above a start on this machine (~5 s)."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "30")

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 200 << 20})
    for _ in range(2):
        c.add_node(num_cpus=1, object_store_memory=200 << 20)
    c.wait_for_nodes()
    yield c
    c.shutdown()
    # Cluster.shutdown also clears this process's internal-KV client, which the session's own
    # local instance (ray_session), still up, goes on needing (pipeline.cluster reads the
    # autoscaler's report through it).
    import ray

    if ray.is_initialized():
        from ray.experimental.internal_kv import _initialize_internal_kv

        _initialize_internal_kv(ray._private.worker.global_worker.gcs_client)
