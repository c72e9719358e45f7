"""The runbook, clusters/README.md, as a user runs it: every line of its bash blocks.

Lines marked `# AWS only` need an AWS account: `ray up` / `ray down` / `ray dashboard` ... name a
cluster file, which must pass Ray's own validation (what `ray up` runs first), and every `aws`
line must parse against botocore's model of that AWS API (its files must exist and be JSON).
Every other line runs, in order, on Ray's autoscaling simulator (the fake_multinode provider,
the node types of gpu.yaml as 1-CPU stand-ins, all starting at 0 nodes, on a head that takes no
work), with a real `mlflow server` whose artifacts are on a local S3 (moto), as gpu.yaml starts
one. The only substitutions: the bucket is the moto bucket, $ADDR the local dashboard,
`--device cuda` is `--device cpu`, and the sizes are shrunk with options the test appends
(SHRINK); the runbook's text is what a user types.
"""

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from test_pretrain_job import free_port, free_ports

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RUNBOOK = ROOT / "clusters" / "README.md"
AWS_ONLY = "# AWS only"
BUCKET = "gpt1-runbook"
# Appended to each job's command line: the runbook's sizes, shrunk for two cores.
SHRINK = {
    "pipeline/prepare.py": ["--set", "n_ctx=64", "--set", "chunk_mb=1"],
    "pipeline/pretrain.py": [
        *("--set", "model=tiny", "--set", "max_steps=4", "--set", "warmup_steps=1"),
        *("--set", "checkpoint_every=2", "--set", "eval_every=2", "--set", "log_every=1"),
        *("--set", "eval_blocks=8"),
    ],
    "tuning/sweep.py": [
        "--samples",
        "2",
        "--set",
        "epochs=1",
        "--set",
        "max_train=200",
        "--set",
        "batch_size=16",
    ],
}
# Ray commands that act on the cloud through a cluster file: AWS only.
RAY_ON_AWS = ("up", "down", "dashboard", "attach", "rsync-down", "rsync-up", "exec")


def runbook_lines(text: str) -> list[str]:
    """Every command of the runbook's bash blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def aws_only(line: str) -> bool:
    return AWS_ONLY in line


def words(line: str) -> list[str]:
    return shlex.split(line, comments=True)


def test_every_runbook_line_runs_here_or_is_marked_aws_only():
    lines = runbook_lines(RUNBOOK.read_text())
    assert len(lines) > 15
    for line in lines:
        argv = words(line)
        # docker: the EFA image, built and pushed to ECR (no Docker daemon on CI).
        on_aws = argv[0] in ("aws", "docker") or (argv[:1] == ["ray"] and argv[1] in RAY_ON_AWS)
        assert on_aws == aws_only(line), f"mark it '{AWS_ONLY}', or not: {line}"
        if not on_aws:  # what the simulated cluster runs
            assert (
                argv[0] == "export"
                or re.fullmatch(r"[A-Z_]+=\S+", argv[0])
                or argv[:3] in (["ray", "job", "submit"], ["ray", "job", "list"])
            ), line


def test_the_cluster_files_that_ray_lines_name_pass_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    files = {w for line in runbook_lines(RUNBOOK.read_text()) for w in words(line) if w.endswith(".yaml")}
    assert files == {"clusters/gpu.yaml"}
    for f in files:
        validate_config(prepare_config(yaml.safe_load((ROOT / f).read_text())))


CLI_COMMANDS = {("ecr", "get-login-password"): "GetAuthorizationToken"}


def check_aws(argv: list[str]) -> None:
    """argv parses as the AWS CLI would take it: a known service and operation (botocore's
    models), known parameters, the required ones given, and local files that exist."""
    import botocore.session

    if "|" in argv:  # `aws ... | docker login ...`: the aws command is what is checked here
        argv = argv[: argv.index("|")]
    args, i = [], 2
    while i < len(argv):  # global options first
        if argv[i] in ("--region", "--profile"):
            i += 2
        else:
            args.append(argv[i])
            i += 1
    service, op, rest = argv[1], args[0], args[1:]
    for value in rest:
        if value.startswith("file://"):
            json.loads((ROOT / value[len("file://") :]).read_text())
    if service == "s3":  # the CLI's own S3 commands, which botocore has no model of
        assert op in ("mb", "cp", "sync", "ls", "rm"), argv
        uris = [a for a in rest if a.startswith("s3://")]
        assert uris and all(re.fullmatch(r"s3://[a-zA-Z0-9.-]+(/\S*)?", u) for u in uris), argv
        return
    model = botocore.session.get_session().get_service_model(service)
    # The CLI's own commands over an API call: the call's model checks them.
    name = CLI_COMMANDS.get((service, op)) or "".join(w.capitalize() for w in op.split("-"))
    assert name in model.operation_names, argv
    shape = model.operation_model(name).input_shape
    members = {re.sub(r"(?<!^)(?=[A-Z])", "-", m).lower(): m for m in shape.members}
    given = set()
    for flag, _ in zip(rest[::2], rest[1::2], strict=False):
        assert flag.startswith("--") and flag[2:] in members, (flag, argv)
        given.add(members[flag[2:]])
    assert set(shape.required_members) <= given, argv


def test_every_aws_line_parses():
    lines = [words(line) for line in runbook_lines(RUNBOOK.read_text()) if words(line)[0] == "aws"]
    assert len(lines) >= 10
    for argv in lines:
        check_aws(argv)
    with pytest.raises(AssertionError):
        check_aws(["aws", "iam", "create-role", "--role-name", "x"])  # the trust policy missing
    with pytest.raises(AssertionError):
        check_aws(["aws", "iam", "create-rolee", "--role-name", "x"])


# The simulated cluster.


def wait_listening(port: int, proc: subprocess.Popen, what: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"{what} exited: {proc.stdout.read().decode()[-3000:]}")
            time.sleep(0.5)
    pytest.fail(f"{what} did not listen on {port} within {seconds} s")


def fake_cluster_config(gcs_address: str) -> dict:
    """gpu.yaml's node types on Ray's fake multi-node provider: each worker type a 1-CPU stand-in
    with its accelerator type's label (so --accelerator places workers as on AWS), a head that
    takes no work, all starting at 0 nodes."""
    gpu = yaml.safe_load((ROOT / "clusters" / "gpu.yaml").read_text())
    accelerators = {"g5.12xlarge": "A10G", "p4d.24xlarge": "A100", "p5.48xlarge": "H100"}
    types = {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}}
    for name, t in gpu["available_node_types"].items():
        if name == gpu["head_node_type"]:
            continue
        label = accelerators.get(t["node_config"]["InstanceType"])
        resources = {"CPU": 1, **({f"accelerator_type:{label}": 1} if label else {})}
        types[name] = {
            "resources": resources,
            "node_config": {},
            "min_workers": 0,
            "max_workers": min(t["max_workers"], 8),
        }
    return {
        "cluster_name": "runbook",
        "max_workers": 12,
        "upscaling_speed": 100,
        "idle_timeout_minutes": gpu["idle_timeout_minutes"],
        "provider": {
            "type": "external",  # the fake provider, each node with its own runtime-env directory
            "module": "own_disk_nodes.OwnDiskProvider",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        # What `ray up` would have filled in (prepare_config): the monitor reads them.
        **{k: [] for k in ("cluster_synced_files", "initialization_commands", "setup_commands")},
        **{k: [] for k in ("head_setup_commands", "worker_setup_commands", "rsync_exclude", "rsync_filter")},
        **{k: [] for k in ("head_start_ray_commands", "worker_start_ray_commands")},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }


def start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen) -> None:
    """The process and everything it started (its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.slow
def test_the_runbook_runs_on_an_autoscaling_cluster(s3, tmp_path):
    import pyarrow.fs as pafs
    from corpus_gen import documents, released_vocabulary, write_sst2
    from mlflow.tracking import MlflowClient
    from ray._private.services import get_node_ip_address

    # The bucket's contents, as the runbook's `aws s3 cp` lines put them there.
    endpoint = s3["AWS_ENDPOINT_URL"]
    fs = pafs.S3FileSystem(
        endpoint_override=endpoint.split("//")[1], scheme="http", allow_bucket_creation=True
    )
    fs.create_dir(BUCKET)
    local = tmp_path / "upload"
    (local / "corpus").mkdir(parents=True)
    for i in range(2):
        (local / "corpus" / f"part{i}.txt").write_text("\n\n".join(documents(400, seed=i)) + "\n")
    released_vocabulary(local / "gpt1-vocab")
    (local / "glue" / "SST-2").mkdir(parents=True)
    write_sst2(local / "glue" / "SST-2", n_train=200, n_dev=60, n_test=10)
    pafs.copy_files(str(local), BUCKET, destination_filesystem=fs)

    procs = []
    try:
        # MLflow as gpt1.yaml starts it: SQLite on the head, artifacts in the bucket.
        mlflow_port = free_port()
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_S3_ENDPOINT_URL": endpoint}
        env.pop("RAY_ADDRESS", None)
        env.pop("MLFLOW_TRACKING_URI", None)
        mlflow = start(
            [
                str(BIN / "mlflow"),
                *("server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"),
                *("--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"),
                *("--artifacts-destination", f"s3://{BUCKET}/gpt1/mlflow"),
            ],
            env,
            tmp_path / "mlflow.log",
        )
        procs.append(mlflow)
        # The head, as gpu.yaml starts it: the jobs inherit MLflow's address and the storage.
        port, dash, client, agent = free_ports(4)
        config = tmp_path / "autoscaling.yaml"
        config.write_text(yaml.safe_dump(fake_cluster_config(f"{get_node_ip_address()}:{port}")))
        uri = f"http://127.0.0.1:{mlflow_port}"
        head_env = {
            **env,
            "RAY_FAKE_CLUSTER": "1",
            "PYTHONPATH": str(Path(__file__).parent),  # where the monitor finds own_disk_nodes
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "RAY_AUTH_MODE": "token",
            "GPT1_STORAGE": f"s3://{BUCKET}/gpt1/runs",
            "MLFLOW_TRACKING_URI": uri,
        }
        temp = tempfile.mkdtemp(prefix="rayrb-", dir="/tmp")  # short: it holds Unix sockets
        head = start(
            [
                str(BIN / "ray"),
                *("start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}"),
                *(f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}"),
                *("--num-cpus=0", "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp}"),
                f"--autoscaling-config={config}",
            ],
            head_env,
            tmp_path / "head.log",
        )
        procs.append(head)
        wait_listening(mlflow_port, mlflow, "mlflow server")
        wait_listening(dash, head, "the Ray head's dashboard")

        # The runbook, line by line, on the laptop: this process's environment and the repository.
        client_env = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "GPT1_STORAGE")}
        shell_vars, outputs = {}, {}
        for line in runbook_lines(RUNBOOK.read_text()):
            if aws_only(line):
                continue
            line = line.replace("YOUR-BUCKET", BUCKET).replace("--device cuda", "--device cpu")
            argv = words(line)
            if argv[0] == "export":
                client_env.update(a.split("=", 1) for a in argv[1:])
                continue
            if "=" in argv[0] and len(argv) == 1:  # ADDR=...: the dashboard, here the local one
                name, _ = argv[0].split("=", 1)
                shell_vars[name] = f"http://127.0.0.1:{dash}"
                continue
            argv = [shell_vars.get(a[1:], a) if a.startswith("$") else a for a in argv]
            script = next((a for a in argv if a.endswith(".py")), None)
            argv = [str(BIN / "ray"), *argv[1:], *SHRINK.get(script, [])]
            out = subprocess.run(argv, cwd=ROOT, env=client_env, capture_output=True, text=True, timeout=900)
            assert out.returncode == 0, f"{line}\n{out.stdout[-4000:]}\n{out.stderr[-3000:]}"
            outputs[script or argv[2]] = out.stdout

        # The autoscaler started the nodes each command asked for.
        assert "waiting for 1 CPUs for prepare's workers" in outputs["pipeline/prepare.py"]
        pretrain = outputs["pipeline/pretrain.py"]
        assert "waiting for 8 A100 CPUs for --workers 8" in pretrain
        assert "the cluster has the 8 A100 CPUs for --workers 8" in pretrain
        assert "run gpt1-books done at step 4" in pretrain
        sweep = outputs["tuning/sweep.py"]
        assert "its newest checkpoint is s3://gpt1-runbook/gpt1/runs/gpt1-books/checkpoint_000000004" in sweep
        assert "running on CPU" in sweep  # --device auto: no GPU node type here
        assert "| sst-2 | accuracy |" in sweep
        assert outputs["list"].count("status=<JobStatus.SUCCEEDED") == 3, outputs["list"]

        # More workers than the autoscaler can add: one line after --wait-minutes, and exit 1.
        submit = [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dash}",
            "--working-dir",
            ".",
        ]
        data = f"s3://{BUCKET}/gpt1/data/books"
        too_many = [*submit, "--", "python", "pipeline/pretrain.py", "--data", data, "--workers", "16"]
        too_many += ["--set", "batch_size=16"]  # one sequence a worker
        too_many += ["--device", "cpu", "--wait-minutes", "0.2", "--no-mlflow", "--name", "too-many"]
        out = subprocess.run(too_many, cwd=ROOT, env=client_env, capture_output=True, text=True, timeout=300)
        assert out.returncode != 0
        assert "pretrain: --workers 16: after 0.2 minute(s) the cluster has" in out.stdout + out.stderr
        assert "exit code 1" in out.stdout + out.stderr

        # The GLUE table, read back through the MLflow server (its artifacts in the bucket).
        client = MlflowClient(uri)
        (run,) = client.search_runs(
            [client.get_experiment_by_name("gpt1-pretrain").experiment_id],
            filter_string="status = 'FINISHED'",
        )
        assert run.data.tags["world_size"] == "8"
        exp = client.get_experiment_by_name("gpt1-finetune-sst-2")
        (parent,) = [
            r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags
        ]
        assert "| accuracy |" in (
            Path(client.download_artifacts(parent.info.run_id, "results.md", str(tmp_path))).read_text()
        )
        # Lineage: the pretrain run by id, and by its page on the server, a link in the UI.
        assert parent.data.tags["pretrain_run_id"] == run.info.run_id
        assert parent.data.tags["pretrain_run_url"] == (
            f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
            "?workflowType=machine_learning"
        )
        table = client.download_artifacts(parent.info.run_id, "ablations_summary.md", str(tmp_path))
        for row in ("full", "no_aux_lm", "no_pretraining"):
            assert f"| {row} |" in Path(table).read_text()
        assert fs.get_file_info(pafs.FileSelector(f"{BUCKET}/gpt1/mlflow", recursive=True))  # on S3
    finally:
        for proc in reversed(procs):
            stop(proc)
