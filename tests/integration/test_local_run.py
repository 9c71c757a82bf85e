"""`kubefusion run JOB.yaml --local`: the whole product on one machine, as a newcomer runs it.

The demo job (what `make demo` runs) goes through data synthesis, preprocessing, torchrun training, evaluation and
the results table once for the whole module; the numbers it prints must be the ones README.md and
docs/results.md show. A changed job is refused in its run folder; Ctrl-C stops a run quietly and the rerun resumes
it with every logged step kept; a job that cannot start fails with one error line, no hang.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DEMO_JOB = REPO / "examples" / "local-job.yaml"
REFERENCE_CPUS = 2
"""README's and docs/results.md's numbers come from 2 processes with 1 thread each (a 2-core machine's plan):
another thread count sums in another order and may move the last digits."""


def job(tmp_path: Path, *, training=None, **text) -> Path:
    doc = {
        "apiVersion": "kubefusion.io/v1alpha1", "kind": "MultimodalTrainJob", "metadata": {"name": "tiny-local"},
        "spec": {
            "data": {"path": "builtin:demo", "demoSamples": 240, "validationFraction": 0.15, "testFraction": 0.15},
            "preprocessing": {"imageSize": 32, "tokenizer": "builtin:minilm", "maxTokens": 16},
            "model": {"vision": {"backbone": "builtin:resnet-tiny", "pretrained": False},
                      "text": {"backbone": "builtin:bert-tiny", "pretrained": False, "pooling": "mean", **text},
                      "numeric": {"hidden": [16]}, "fusion": {"type": "attention", "hidden": 32, "heads": 4,
                                                             "layers": 1, "modalityDropout": 0.2},
                      "embedDim": 16},
            "training": {"epochs": 1, "batchSizePerGPU": 32, "learningRate": 2.0e-3, "precision": "fp32",
                         "baselines": True, **(training or {})},
            "resources": {"gpusPerNode": 2},
            "monitoring": {"metricsPort": 0},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def info_step(run: Path) -> int:
    from kubefusion.train.checkpoint import read_checkpoint

    return read_checkpoint(run / "model.pt")["step"]


def _reference_cpus() -> None:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:REFERENCE_CPUS])


def kubefusion(*args: str, reference_cpus: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubefusion", *args], env=_environment(), capture_output=True,
                          text=True, timeout=900, preexec_fn=_reference_cpus if reference_cpus else None)


# ------------------------------------------------------------------------------------- the demo, once


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`make demo`, in a fresh folder, on the reference number of CPUs."""
    out = tmp_path_factory.mktemp("demo") / "run"
    done = kubefusion("run", str(DEMO_JOB), "--local", "--output", str(out), reference_cpus=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done, json.loads((out / "results.json").read_text())


def test_the_demo_trains_fused_and_baselines_and_prints_the_table(demo):
    out, done, results = demo
    assert "2 process(es) on cpu (gloo, 1 thread(s) each)" in done.stdout
    assert "| **fused** (concat" in done.stdout and "numeric only (baseline" in done.stdout
    for key in ("validation", "test", "ood"):
        assert 0.0 <= results["fused"][key]["top1"] <= 1.0
    for modality in ("image", "text", "numeric"):
        assert "top1" in results["baselines"][modality]["test"]
        assert "top1" in results["ablation"][f"without_{modality}"]["test"]
    assert results["best_achievable"]["top1"] > 0.9  # carried over from the demo data's dataset.json
    assert (out / "results.md").read_text().startswith("# Results: demo")
    assert (out / "model.pt").is_file() and len(list((out / "baselines").glob("*.pt"))) == 3
    assert list((out / "tensorboard" / "fused").glob("events.out.tfevents.*"))
    # The run folder's status.json holds what a cluster job's status shows; the bars show the same numbers.
    status = json.loads((out / "status.json").read_text())
    assert status["results"]["fusedTestTop1"] == pytest.approx(results["fused"]["test"]["top1"], abs=1e-6)
    assert status["results"]["model"] == str(out.resolve() / "model.pt")
    assert status["progress"]["percent"] == 100.0 and status["summary"]["progress"] == "100%"
    fused = status["metrics"]["validation"][0]
    assert fused["stage"] == "fused" and fused["top1"] == pytest.approx(results["fused"]["validation"]["top1"])
    assert f"val={status['summary']['valTop1']}" in done.stdout and "job=" in done.stdout
    # The demo job turns spec.training.exportOnnx off (the export would double its time on 2 cores; the
    # Ctrl-C test below covers the default): no ONNX folder, none named.
    assert "onnx" not in status["results"] and not (out / "onnx").exists()
    assert f"(to serve it: kubefusion export --checkpoint {out / 'model.pt'} --out {out / 'onnx'})" in done.stdout
    configuration = results["configuration"]["configuration"]  # what the models were trained with
    assert configuration["spec.training.learningRate"] == 0.002 and configuration["spec.training.epochs"] == 3
    assert results["configuration"] == json.loads((out / "run.json").read_text())

    from kubefusion.model import load_model_from_checkpoint

    model, info = load_model_from_checkpoint(out)
    assert info["modalities"] == ["image", "text", "numeric"] and len(info["classes"]) == 8


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


REFERENCE_CPU = ("GenuineIntel", "AVX512")
"""The CPU README's and docs/results.md's demo numbers were measured on: its vendor and torch's kernel capability.
On another CPU torch and MKL take other code paths, which sum in another order, and a few records of a 1000-record
split land on the other side of a decision (an AMD EPYC with AVX2 printed 91.70 for the fused model's OOD top-1
where the page says 92.50): there the documented numbers must agree within two standard errors, not to the digit."""
NUMBER = r"[-+]?\d+\.\d+"


def _cpu() -> tuple[str, str]:
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    vendor = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                   if line.startswith("vendor_id")), "") if cpuinfo.exists() else ""
    return vendor, torch.backends.cpu.get_cpu_capability()


def _tolerance(documented: str) -> float:
    """How far a number may move on another CPU: two standard errors of an accuracy over 1000 records for a
    percentage (two decimals), 0.05 for a loss (four decimals), 3 points for a difference of two accuracies."""
    decimals, value = len(documented.split(".")[1]), abs(float(documented))
    if decimals == 2:
        share = min(value, 100.0) / 100
        return max(0.2, 2 * 100 * math.sqrt(share * (1 - share) / 1000))
    return 0.05 if decimals == 4 else 3.0


def _shown(printed: str, page: str, *, exact: bool) -> bool:
    """Whether ``page`` shows the ``printed`` line: as it is, or (not ``exact``) with the same words and every
    number within its tolerance."""
    if exact or printed in page:
        return printed in page
    words = re.split(NUMBER, printed)
    pattern = f"({NUMBER})".join(re.escape(part) for part in words)
    wanted = [float(n) for n in re.findall(NUMBER, printed)]
    return any(all(abs(float(documented) - value) <= _tolerance(documented)
                   for documented, value in zip(match.groups(), wanted))
               for match in re.finditer(pattern, page))


def test_readme_and_results_page_show_the_numbers_the_demo_prints(demo):
    out, _, results = demo
    fused, base, best = results["fused"], results["baselines"], results["best_achievable"]["top1"]
    modalities = ("image", "text", "numeric")
    readme = (REPO / "README.md").read_text()
    expected_readme = [
        f"| fused (image + text + numeric) | {_pct(fused['test']['top1'])} | {_pct(fused['ood']['top1'])} |",
        f"| image only / text only / numeric only | {' / '.join(_pct(base[m]['test']['top1']) for m in modalities)} | "
        f"{' / '.join(_pct(base[m]['ood']['top1']) for m in modalities)} |",
        f"| best achievable (label noise 3%) | {_pct(best)} | {_pct(best)} |",
    ]
    exact = _cpu() == REFERENCE_CPU
    how = "" if exact else f" (on {_cpu()}, not the {REFERENCE_CPU} they were measured on: within two standard errors)"
    stale = [row for row in expected_readme if not _shown(row, readme, exact=exact)]
    assert not stale, f"README.md's demo table is stale{how}; the demo prints now: {stale}"

    page = (REPO / "docs" / "results.md").read_text()
    table = [line for line in (out / "results.md").read_text().splitlines()
             if line.startswith("|") or line.startswith("Records per split")]
    ablation = " / ".join(_pct(results["ablation"][f"without_{m}"]["test"]["top1"]) for m in modalities)
    summary = results["summary"]
    expected_page = [*table,
                     f"| concat (the demo's) | {_pct(fused['test']['top1'])} | {_pct(fused['test']['macro_f1'])} | "
                     f"{_pct(fused['ood']['top1'])} | {ablation} |",
                     f"+{summary['fusion_gain_test_points']:.1f} points top-1 on test",
                     f"+{summary['fusion_gain_ood_points']:.1f} points on the out-of-distribution split",
                     f"top-1 ({_pct(fused['test']['top1'])}%)"]
    stale = [line for line in expected_page if not _shown(line, page, exact=exact)]
    assert not stale, f"docs/results.md is stale{how}; the demo prints now: {stale}"


def test_a_rerun_with_a_changed_job_is_refused_naming_what_changed(demo, tmp_path):
    out, _, _ = demo
    before = (out / "results.json").read_bytes()
    changed = tmp_path / "job.yaml"
    changed.write_text(DEMO_JOB.read_text().replace("learningRate: 2.0e-3", "learningRate: 5e-3"))
    done = kubefusion("run", str(changed), "--local", "--output", str(out))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: --output {out} was trained with another configuration (spec.training.learningRate 0.002 -> "
        "0.005): its checkpoints and results belong to that one. Give a new --output for this configuration, or "
        f"add --restart to discard that run (checkpoints, models, results, TensorBoard curves) and start over in "
        f"{out}"]
    assert (out / "results.json").read_bytes() == before


# ------------------------------------------------------------------------------------ Ctrl-C, resume


def _tensorboard_steps(folder: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [e.step for e in events.Scalars("train/loss")]


def test_ctrl_c_stops_quietly_and_the_rerun_resumes_with_every_logged_step(tmp_path):
    path = job(tmp_path, training={"epochs": 4, "batchSizePerGPU": 16, "checkpointEverySteps": 1,
                                   "logEverySteps": 1, "baselines": False})
    out = tmp_path / "run"
    command = [sys.executable, "-m", "kubefusion", "run", str(path), "--local", "--output", str(out)]
    # A terminal's process gets SIGINT's default action; a suite started in the background (`make test &` in a
    # script) passes SIGINT down ignored, and an ignored Ctrl-C is what a user meant by running it that way.
    proc = subprocess.Popen(command, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoints = out / "checkpoints" / "fused"
    deadline = time.monotonic() + 600
    while not list(checkpoints.glob("step-*.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends to `kubefusion run`
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert stderr.splitlines()[-1] == "interrupted"
    assert "Traceback" not in stderr and "SignalException" not in stderr
    interrupted_at = max(int(re.search(r"(\d+)", p.name).group(1)) for p in checkpoints.glob("step-*.pt"))

    done = kubefusion("run", str(path), "--local", "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[fused] resuming from" in done.stderr
    steps = [json.loads(line)["step"] for line in (out / "logs" / "fused.steps.jsonl").read_text().splitlines()]
    total = len(steps)
    assert interrupted_at < total and steps == list(range(1, total + 1))
    assert _tensorboard_steps(out / "tensorboard" / "fused") == list(range(1, total + 1))

    # the same folder for another configuration: refused, then started over on request
    changed = job(tmp_path, training={"epochs": 4, "batchSizePerGPU": 16, "checkpointEverySteps": 1,
                                      "logEverySteps": 1, "baselines": False, "learningRate": 1.0e-3})
    assert kubefusion("run", str(changed), "--local", "--output", str(out)).returncode == 2
    done = kubefusion("run", str(changed), "--local", "--output", str(out), "--restart")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" not in done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["configuration"]["configuration"]["spec.training.learningRate"] == 0.001
    assert _tensorboard_steps(out / "tensorboard" / "fused") == list(range(1, total + 1))
    # spec.training.exportOnnx (the default): the restarted run's fused model as ONNX beside it, named in the
    # results, and served by `kubefusion predict --artifacts OUT/onnx`.
    status = json.loads((out / "status.json").read_text())
    assert status["results"]["onnx"] == str(out.resolve() / "onnx")
    assert json.loads((out / "onnx" / "model.json").read_text())["checkpoint"]["step"] == info_step(out)


def test_a_missing_pretrained_model_fails_with_one_error_line_before_preprocessing(tmp_path):
    done = kubefusion("run", str(job(tmp_path, backbone="nobody/missing-bert", pretrained=True)), "--local",
                      "--output", str(tmp_path / "run"))
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith("error: spec.model.text.backbone: no folder 'nobody/missing-bert'")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "artifacts").exists()  # told before preprocessing, the data or torchrun
