"""`kubefusion run --local`: the job's resources mapped onto this machine, and failures told in one line."""

import io
import sys
from pathlib import Path

import pytest

from kubefusion import config as cfg
from kubefusion.local import OutputFilter, child_environment, plan_processes, torchrun_command


@pytest.mark.parametrize("nodes, per_node, gpus, cpus, expected", [
    (1, 2, 0, 2, (2, "cpu", "gloo", 1)),      # the demo on a 2-core laptop
    (1, 4, 0, 2, (2, "cpu", "gloo", 1)),      # more processes asked than cores
    (1, 2, 0, 16, (2, "cpu", "gloo", 8)),     # spare cores become torch threads
    (1, 4, 8, 32, (4, "cuda", "nccl", 8)),    # GPUs enough
    (2, 4, 4, 16, (4, "cuda", "nccl", 4)),    # 2 nodes x 4 collapse onto one 4-GPU machine
    (2, 4, 8, 16, (8, "cuda", "nccl", 2)),
    (1, 0, 0, 8, (1, "cpu", "gloo", 8)),      # a CPU-only job: one process per node
    (1, 4, 0, 1, (1, "cpu", "gloo", 1)),
])
def test_the_spec_maps_onto_local_processes(nodes, per_node, gpus, cpus, expected):
    plan = plan_processes(cfg.ResourcesConfig(nodes=nodes, gpus_per_node=per_node), gpus=gpus, cpus=cpus)
    assert (plan.processes, plan.device, plan.backend, plan.threads_per_process) == expected


def test_adjustments_are_explained():
    plan = plan_processes(cfg.ResourcesConfig(nodes=2, gpus_per_node=4), gpus=0, cpus=2)
    assert any("nodes=2" in n for n in plan.notes) and any("no GPU" in n for n in plan.notes)


def test_torchrun_command_is_standalone_on_the_given_port():
    plan = plan_processes(cfg.ResourcesConfig(gpus_per_node=2), gpus=0, cpus=2)
    command = torchrun_command(plan, job_file=Path("/j.yaml"), artifacts=Path("/o/artifacts"), output=Path("/o"),
                               data=Path("/o/data"), port=29511)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    text = " ".join(command)
    assert "--nproc-per-node 2" in text and "--rdzv-endpoint 127.0.0.1:29511" in text
    assert "--log-dir /o/logs/torchrun" in text  # with the run, not a /tmp/torchelastic_* left behind
    assert text.endswith("-m kubefusion train --config /j.yaml --artifacts /o/artifacts --output /o --data /o/data")


def test_cpu_processes_get_their_threads_and_sleeping_openmp_waiters():
    job = cfg.demo()
    cpu = child_environment(plan_processes(job.resources, gpus=0, cpus=16), job, {"PATH": "/bin"})
    assert cpu["OMP_NUM_THREADS"] == cpu["TF_NUM_INTRAOP_THREADS"] == "8" and cpu["OMP_WAIT_POLICY"] == "PASSIVE"
    mine = child_environment(plan_processes(job.resources, gpus=0, cpus=16), job, {"OMP_WAIT_POLICY": "ACTIVE"})
    assert mine["OMP_WAIT_POLICY"] == "ACTIVE"  # what the user set is kept
    gpu = child_environment(plan_processes(job.resources, gpus=2, cpus=16), job, {})
    assert "OMP_WAIT_POLICY" not in gpu


def feed(lines):
    echo = io.StringIO()
    out = OutputFilter(io.StringIO(), echo)
    for line in lines:
        out.feed(line + "\n")
    return out, echo.getvalue()


def test_a_rank_error_becomes_the_one_line_reason_and_torchrun_noise_is_hidden():
    out, echo = feed([
        "I0000 00:00:1795734046.822343    7247 port.cc:153] oneDNN custom operations are on. You may see",
        "data /x: train 10; 8 classes",
        "error (rank 1): /data/x.png: corrupt image",
        "Traceback (most recent call last):",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
    ])
    assert out.reason() == "rank 1: /data/x.png: corrupt image"
    assert echo == "data /x: train 10; 8 classes\n"


def test_a_killed_rank_is_named_with_its_signal():
    out, _ = feed(["[0]:", "  time      : 2026-11-26_23:10:01", "  host      : box",
                   "  rank      : 1 (local_rank: 1)", "  exitcode  : -9 (pid: 4242)"])
    assert out.reason() == "rank 1 was killed by SIGKILL"


def test_a_crash_reports_its_exception_line():
    out, _ = feed(["Traceback (most recent call last):", '  File "x.py", line 1', "RuntimeError: boom"])
    assert out.reason() == "RuntimeError: boom"


def test_the_demo_example_is_the_demo_preset_and_presets_are_valid():
    example = cfg.load_job_file(Path(__file__).parents[2] / "examples" / "local-job.yaml")
    assert example.to_dict() == cfg.demo().to_dict()
    plan = plan_processes(example.resources, gpus=0, cpus=2)
    assert plan.processes == 2 and example.training.precision == "fp32"
    big = cfg.resnet50_bert_base()
    assert (big.resources.gpus_per_node, big.training.precision) == (4, "bf16")
    assert big.model.vision.backbone == "microsoft/resnet-50" and big.model.vision.pooling == "attention"
    assert big.model.text.backbone == "bert-base-uncased"
    for preset in cfg.PRESETS.values():  # every preset survives its own YAML round trip
        job = preset()
        assert cfg.job_from_dict(cfg.job_to_dict(job)).to_dict() == job.to_dict()


@pytest.mark.parametrize("command", ["run", "train"])
def test_an_output_path_under_a_file_is_one_error_line(tmp_path, command, capsys):
    from kubefusion.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    job = Path(__file__).parents[2] / "examples" / "local-job.yaml"
    args = ["run", str(job), "--local"] if command == "run" else \
        ["train", "--config", str(job), "--artifacts", str(tmp_path)]
    assert main([*args, "--output", str(blocker / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --output {blocker / 'out'}: cannot use it as the output folder (not a directory); " \
                  "give a folder path that can be created and written"


def test_a_killed_rank_is_the_reason_not_the_peer_errors_it_causes():
    out, _ = feed([
        "[rank0]: RuntimeError: [../gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer.",
        "Failures:", "[1]:", "  rank      : 0 (local_rank: 0)", "  exitcode  : -15 (pid: 30034)  (SIGTERM)",
        "Root Cause (first observed failure):", "[0]:", "  rank      : 1 (local_rank: 1)",
        "  exitcode  : -9 (pid: 30035)  (SIGKILL)"])
    assert out.reason() == "rank 1 was killed by SIGKILL"


TORCHRUN_FAILURE = [
    "E1204 21:01:32.634000 10197 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: -11) "
    "local_rank: 0 (pid: 10216) of binary: /venv/bin/python",
    "Traceback (most recent call last):",
    '  File "<frozen runpy>", line 198, in _run_module_as_main',
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
    "=======================================================",
    "kubefusion FAILED",
    "Root Cause (first observed failure):",
    "[0]:",
    "  rank      : 0 (local_rank: 0)",
    "  exitcode  : -11 (pid: 10216)  (SIGSEGV)",
    "=======================================================",
]


def test_torchruns_own_traceback_and_report_are_never_echoed():
    out, echo = feed(["[fused] resuming from x", *TORCHRUN_FAILURE])
    assert echo == "[fused] resuming from x\n"
    assert out.reason() == "rank 0 was killed by SIGSEGV"


def test_nothing_is_echoed_once_the_run_is_being_stopped():
    echo = io.StringIO()
    out = OutputFilter(io.StringIO(), echo)
    out.feed("fused: step 26\n")
    out.mute()  # Ctrl-C: what torchrun prints as it stops (its SignalException traceback) is for the log only
    for line in ["torch.distributed.elastic.multiprocessing.api.SignalException: Process 7 got signal: 15",
                 "W1204 21:01:32.634000 1 api.py:1] Sending process 8 closing signal SIGTERM"]:
        out.feed(line + "\n")
    assert echo.getvalue() == "fused: step 26\n"
