"""Run under torchrun by test_train_distributed.py: train the fused model with the real loop, then write a
digest of this rank's parameters to OUT/params-rank<r>.json so the test can compare ranks."""

import hashlib
import json
import sys
from pathlib import Path

from kubefusion.config import load_job_file
from kubefusion.data.tokenizer import load_tokenizer
from kubefusion.preprocess.runtime import Preprocessor
from kubefusion.train import distributed
from kubefusion.train.data import load_training_data
from kubefusion.train.loop import Session, Stage, train_stage
from kubefusion.train.recipe import make_prepare

job_file, artifacts, data_dir, output = (Path(a) for a in sys.argv[1:5])
job = load_job_file(job_file)
rt = distributed.setup(60)
pre = Preprocessor.load(artifacts)
data = load_training_data(job, data_dir, manifest=pre.manifest,
                          tokenizer=load_tokenizer(str(pre.artifact_dir / "tokenizer")),
                          rank=rt.rank, world_size=rt.world_size, artifact_dir=pre.artifact_dir)
session = Session(job=job, runtime=rt, data=data, prepare=make_prepare(pre, rt.device), output=output,
                  artifact_info={"content_key": pre.content_key, "classes": data.classes,
                                 "numeric_columns": data.numeric_columns})
model = train_stage(session, Stage("fused", ("image", "text", "numeric"), 0))
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):  # parameters and (synchronised) buffers
    digest.update(name.encode())
    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
first = next(model.parameters()).detach().flatten()[:4].tolist()
(output / f"params-rank{rt.rank}.json").write_text(json.dumps(
    {"sha256": digest.hexdigest(), "first": first, "train_records": len(data.splits["train"]),
     "batches_per_epoch": data.batches_per_epoch()}))
distributed.teardown()
