"""Training: ``kubefusion train`` (:mod:`.cli`) runs the recipe (:mod:`.recipe`): the fused model and the
single-modality baselines through the DDP loop (:mod:`.loop`), evaluation (:mod:`.evaluate`) and the results
table (:mod:`.results`). Around them: process groups (:mod:`.distributed`), checkpoints (:mod:`.checkpoint`),
AdamW + schedule (:mod:`.optim`), the data view (:mod:`.data`) and Prometheus metrics (:mod:`.metrics`).
Importing this package imports nothing heavy."""
