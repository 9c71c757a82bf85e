"""Multi-process training as a user runs it: 2 gloo ranks under torchrun on CPU, tiny models.

- DDP with gradient accumulation (no_sync on all but the last micro-batch) keeps every rank's parameters
  identical, and an odd number of training records (uneven shards) neither
  hangs nor desynchronises the ranks;
- a run killed with SIGKILL mid-training resumes from its newest valid checkpoint (skipping a corrupt newest
  one with a warning naming it) and continues with exactly the losses of an uninterrupted run.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kubefusion.local import LocalPlan, free_port, torchrun_command

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
SAMPLES = 161  # -> 129 training records: odd, so the 2 ranks get uneven shards (one padding record)


def tiny_job(data_dir: Path) -> dict:
    return {
        "apiVersion": "kubefusion.io/v1alpha1", "kind": "MultimodalTrainJob", "metadata": {"name": "tiny"},
        "spec": {
            "data": {"path": str(data_dir), "validationFraction": 0.1, "testFraction": 0.1},
            "preprocessing": {"imageSize": 32, "tokenizer": "builtin:minilm", "maxTokens": 16},
            "model": {"vision": {"backbone": "builtin:resnet-tiny", "pretrained": False},
                      "text": {"backbone": "builtin:bert-tiny", "pretrained": False, "pooling": "mean"},
                      "numeric": {"hidden": [16]},
                      "fusion": {"type": "gated", "hidden": 32, "dropout": 0.1, "modalityDropout": 0.2},
                      "embedDim": 16},
            "training": {"epochs": 3, "batchSizePerGPU": 8, "learningRate": 1.0e-3, "precision": "fp32",
                         "gradAccumulation": 2, "checkpointEverySteps": 3, "keepCheckpoints": 3, "baselines": False,
                         "deterministic": True, "logEverySteps": 2, "collectiveTimeoutSeconds": 60,
                         "exportOnnx": False},
            "resources": {"nodes": 1, "gpusPerNode": 2},
            "monitoring": {"metricsPort": 0},
        },
    }


def child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from kubefusion.config import load_job_file
    from kubefusion.data.synth import ensure_demo_data
    from kubefusion.preprocess.export import prepare

    root = tmp_path_factory.mktemp("ddp")
    data = ensure_demo_data(root / "data", SAMPLES, 0)
    job_file = root / "job.yaml"
    job_file.write_text(yaml.safe_dump(tiny_job(data)))
    prepare(load_job_file(job_file), root / "artifacts", data_root=data)
    return {"root": root, "job": job_file, "artifacts": root / "artifacts", "data": data}


def train_command(setup, output: Path) -> list[str]:
    plan = LocalPlan(processes=2, device="cpu", backend="gloo", threads_per_process=1)
    return torchrun_command(plan, job_file=setup["job"], artifacts=setup["artifacts"], output=output,
                            data=setup["data"], port=free_port())


@pytest.fixture(scope="module")
def reference(setup):
    """An uninterrupted 2-rank run of the fused model through the real loop, with per-rank parameter digests."""
    output = setup["root"] / "reference"
    output.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
               "--log-dir", str(output / "torchrun"), str(HERE / "ddp_param_probe.py"), str(setup["job"]), str(setup["artifacts"]), str(setup["data"]),
               str(output)]
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return output


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def losses(output: Path) -> dict[int, float]:
    lines = (output / "logs" / "fused.steps.jsonl").read_text().splitlines()
    return {entry["step"]: entry["loss"] for entry in map(json.loads, lines)}


def test_two_gloo_ranks_keep_identical_parameters_on_uneven_data(reference):
    ranks = [json.loads((reference / f"params-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["train_records"] % 2 == 1  # uneven shards really happened
    assert ranks[0]["batches_per_epoch"] == ranks[1]["batches_per_epoch"]
    assert ranks[0]["sha256"] == ranks[1]["sha256"], (ranks[0]["first"], ranks[1]["first"])
    steps = losses(reference)
    assert len(steps) == 3 * math.ceil(ranks[0]["batches_per_epoch"] / 2)  # 2 micro-batches per step, all ran


def test_sigkill_mid_training_resumes_from_checkpoint_with_the_same_losses(setup, reference):
    output = setup["root"] / "killed"
    checkpoints = output / "checkpoints" / "fused"
    proc = subprocess.Popen(train_command(setup, output), env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len(list(checkpoints.glob("step-*.pt"))) < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoints appeared"
            time.sleep(0.05)
        for pid in reversed(process_tree(proc.pid)):  # what a pod restart does: every process dies at once
            os.kill(pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (output / "model.pt").exists(), "killed too late: training had finished"
    saved = sorted(checkpoints.glob("step-*.pt"))
    newest, previous = saved[-1], saved[-2]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])  # a write the disk lost

    again = subprocess.run(train_command(setup, output), env=child_env(), capture_output=True, text=True,
                           timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert f"skipping corrupt checkpoint {newest}" in log
    assert f"resuming from {previous}" in log

    expected, resumed = losses(reference), losses(output)
    assert sorted(resumed) == sorted(expected)
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), f"step {step}"
    results = json.loads((output / "results.json").read_text())
    assert results["fused"]["test"]["samples"] == 16 and "ood" in results["fused"]


def rank_process(root_pid: int, rank: int) -> int | None:
    """The worker process of ``rank`` among ``root_pid``'s descendants (torchrun sets RANK in its environment)."""
    for pid in process_tree(root_pid)[1:]:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


def test_a_rank_dying_mid_training_ends_the_run_promptly_with_one_error_line(setup, tmp_path):
    from kubefusion.local import run_filtered

    output = tmp_path / "dies"
    checkpoints = output / "checkpoints" / "fused"
    timeout = json.loads(json.dumps(tiny_job(setup["data"])))["spec"]["training"]["collectiveTimeoutSeconds"]
    result: dict = {}

    def kill_rank_1_once_training_runs():
        deadline = time.monotonic() + 180
        while not list(checkpoints.glob("step-*.pt")) and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = rank_process(result["torchrun"], 1)
        result["killed_at"] = time.monotonic()
        os.kill(victim, signal.SIGKILL)  # what the OOM killer does to one pod's process

    import threading
    from unittest import mock

    real_popen = subprocess.Popen

    def remembering_popen(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        result["torchrun"] = proc.pid
        threading.Thread(target=kill_rank_1_once_training_runs, daemon=True).start()
        return proc

    with mock.patch("kubefusion.local.subprocess.Popen", remembering_popen):
        code, out = run_filtered(train_command(setup, output), env=child_env(), log_path=tmp_path / "torchrun.log")
    ended_after = time.monotonic() - result["killed_at"]
    assert code != 0 and not (output / "model.pt").exists()
    assert ended_after < timeout / 2, f"the run took {ended_after:.0f} s to end after rank 1 died"
    assert out.reason() == "rank 1 was killed by SIGKILL", (tmp_path / "torchrun.log").read_text()[-3000:]


class HangingEndpoint:
    """Accepts connections and never answers: what a blackholed or wedged endpoint looks like to a client.
    ``holds`` records, per connection, when it was accepted and when the client gave up on it (None: still open)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.holds: list[list[float | None]] = []
        self.held: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            hold: list[float | None] = [time.monotonic(), None]
            self.holds.append(hold)
            self.held.append(connection)
            threading.Thread(target=self._until_closed, args=(connection, hold), daemon=True).start()

    @staticmethod
    def _until_closed(connection, hold: list[float | None]) -> None:
        try:
            while connection.recv(65536):
                pass
        except OSError:
            pass
        hold[1] = time.monotonic()

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


def test_only_rank_0_reports_progress_and_a_hanging_endpoint_holds_up_nothing(setup, tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[tuple[float, str, dict]] = []

    class Endpoint(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((time.monotonic(), self.headers["User-Agent"], body))
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args):
            pass

    live = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=live.serve_forever, daemon=True).start()
    hanging = HangingEndpoint()
    env = {**child_env(), "KUBEFUSION_PROGRESS_URL": f"http://127.0.0.1:{live.server_port}/progress",
           "KUBEFUSION_PROGRESS_INTERVAL_SECONDS": "0.2", "KUBEFUSION_PROGRESS_FINAL_TIMEOUT_SECONDS": "1",
           # Kubeflow Trainer's status server, wedged: each attempt waits out its timeout on the sender thread.
           "KUBEFLOW_TRAINER_SERVER_URL": f"http://127.0.0.1:{hanging.port}/status"}
    output = tmp_path / "reported"
    try:
        done = subprocess.run(train_command(setup, output), env=env, capture_output=True, text=True, timeout=240)
    finally:
        live.shutdown()
        live.server_close()
        hanging.close()
    assert done.returncode == 0, done.stderr[-3000:]

    assert received and {agent for _, agent, _ in received} == {"kubefusion-trainer rank/0"}
    # While the wedged endpoint held a request, training went on: the live endpoint saw steps advance. (Held
    # intervals as the endpoint saw them, not a fixed window: on a busy machine a step can take longer than one.)
    holds = [(start, end if end is not None else math.inf) for start, end in hanging.holds]
    during = [{body["progress"]["step"] for at, _, body in received if start <= at <= end} for start, end in holds]
    assert max(map(len, during), default=0) >= 2, (holds, [(at, b["progress"]["step"]) for at, _, b in received])
    assert "progress report to http://127.0.0.1:%d/status failed" % hanging.port in done.stderr

    last = received[-1][2]
    results = json.loads((output / "results.json").read_text())
    assert last["progress"]["percent"] == 100.0 and last["progress"]["step"] == last["progress"]["steps"]
    assert last["results"]["fusedTestTop1"] == pytest.approx(results["fused"]["test"]["top1"], abs=1e-6)
    assert last["results"]["model"] == str(output / "model.pt")
    assert last["checkpoint"]["stage"] == "fused" and last["metrics"]["validation"][0]["stage"] == "fused"
    # The run folder holds the same report (what `kubefusion run --local` leaves behind).
    status = json.loads((output / "status.json").read_text())
    assert {k: v for k, v in status.items() if k != "progress"} == \
        {k: v for k, v in last.items() if k not in ("progress", "schema")}
