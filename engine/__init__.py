"""The run engine shared by the train and test scripts.

- `engine.cli`: arguments, ``--gpus`` / ``--cpu-processes``, one-line errors.
- `engine.run`: the fit and evaluate flows (config -> data module, task module, Trainer).
- `engine.trainer`: seeding, the run folder, loggers, checkpoint callbacks, the Lightning Trainer.
- `engine.task_module`: the LightningModule base of the tasks (evaluation lifecycle, AdamW + OneCycleLR).
- `engine.optimizer`: the training optimiser (fused AdamW).
- `engine.callbacks`: non-finite loss guard, per-epoch seeding, config recording.
- `engine.checkpoints`: atomic writes, loading and checking checkpoints, the ``--resume`` config check.
- `engine.metrics`, `engine.losses`: evaluation metrics and training losses.
- `engine.errors`: the errors of a run reported as one line.
- `engine.host_allocator`: the scripts' host allocator policy (freed memory reused).
"""
