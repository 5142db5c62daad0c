"""`transformers.Trainer` for sptbench models: saves write what the method trains, in `sptbench.save`'s format.

A `Classifier` already plugs into the stock `transformers.Trainer` for training and prediction: its forward takes
`labels` and returns a `SequenceClassifierOutput` (`loss`, `logits`). What the stock Trainer cannot do is save it:
`Trainer.save_model` (and every checkpoint) writes the model's whole `state_dict` (the frozen backbone too) under
names `sptbench.load` cannot read. `sptbench.Trainer` changes only that:

- `save_model(folder)` and every checkpoint write `trained.safetensors` (the trained parameters and the head:
  `Classifier.export_state`) and `model.yaml`, i.e. `sptbench.save(model, folder)`; `sptbench.load(folder)` reads
  them (the tokenizer and `training_args.bin` are written beside them, as the stock Trainer does);
- resuming (`train(resume_from_checkpoint=...)`) and `load_best_model_at_end` read those files back.

Use it as the stock one: `sptbench.Trainer(model=sptbench.build_model(...), args=TrainingArguments(...), ...)`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import transformers

from sptbench.core.errors import SptbenchError
from sptbench.run.persist import WEIGHTS, import_weights, read_weights, save_model


class Trainer(transformers.Trainer):
    """`transformers.Trainer` whose saves hold only what the method trains (sptbench.save's format), and whose
    resume / best-model loads read them back. Everything else is the stock Trainer."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`sptbench.save(model, output_dir)` (main process only), the tokenizer and the training arguments."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if getattr(model, "sptbench_manifest", None) is None:
            raise SptbenchError("sptbench.Trainer saves models of sptbench.build_model or sptbench.load")
        save_model(model, output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, transformers.trainer.TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Resuming: the checkpoint's trained parameters onto the model (strict, as `sptbench.load`)."""
        load_trained_into(self.accelerator.unwrap_model(model if model is not None else self.model),
                          resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """`load_best_model_at_end`: the best checkpoint's trained parameters onto the model."""
        load_trained_into(self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint)


def load_trained_into(model, folder: str | Path) -> None:
    """The `trained.safetensors` of a folder `Trainer.save_model` (or `sptbench.save`) wrote, onto `model`."""
    path = Path(folder) / WEIGHTS
    import_weights(model, read_weights(path), path)
