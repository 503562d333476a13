"""A Hugging Face ``Trainer`` with the marginal-density penalty on a sequence classifier.

Text is discrete, so the penalty is taken with respect to the token embeddings: ``compute_loss``
looks the embeddings up itself, passes them as ``inputs_embeds``, and takes the logits and the
penalty of that one forward from ``reg.logits_and_penalty``. The model returns a ``ModelOutput``;
``output=lambda out: out.logits`` reads the logits from it in every pass. The penalty's gradient
reaches the embedding table through the looked-up embeddings.

    python examples/hf_trainer.py --steps 50

The classifier is a small BERT built from a config with random weights (no download; use
``AutoModelForSequenceClassification.from_pretrained`` for a real one) on random token sequences
whose label is whether token 1 occurs. It prints the median step time of the plain ``Trainer`` and
of the regularised one.

The model is passed as a function of the embeddings, with the batch's attention mask in the closure:
keep ``fraction=1`` (the default) here, since a subset of the embeddings would not match the mask.
"""
import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from margreg_fast import MarginalDensityRegularizer


class MarginalDensityTrainer(Trainer):
    """``Trainer`` whose loss is CE + weight * the penalty with respect to ``inputs_embeds``."""

    def __init__(self, *args, regularizer: MarginalDensityRegularizer, **kwargs):
        super().__init__(*args, **kwargs)
        self.regularizer = regularizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        embeds = model.get_input_embeddings()(inputs.pop("input_ids"))
        logits, penalty = self.regularizer.logits_and_penalty(lambda e: model(inputs_embeds=e, **inputs), embeds)
        loss = F.cross_entropy(logits, labels) + self.regularizer.weight * penalty
        return (loss, SequenceClassifierOutput(loss=loss, logits=logits)) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        stats = self.regularizer.last_stats
        if "loss" in logs and stats:  # training logs: the last step's penalty and the monitor's ratio
            logs = {**logs, "penalty": stats["penalty"], "secant_ratio": stats["secant_ratio"]}
        super().log(logs, *args, **kwargs)


class TokenSequences(Dataset):
    """Random sequences of ``length`` tokens (token 0 pads the tail); label 1 iff token 1 occurs."""

    def __init__(self, n: int, vocab: int, length: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(2, vocab, (n, length), generator=gen)
        self.mask = torch.ones(n, length, dtype=torch.long)
        for i, keep in enumerate(torch.randint(length // 2, length + 1, (n,), generator=gen).tolist()):
            self.ids[i, keep:], self.mask[i, keep:] = 0, 0
        has_one = torch.rand(n, generator=gen) < 0.5
        self.ids[has_one, 0] = 1
        self.labels = has_one.long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._start = [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def small_bert(vocab: int) -> BertForSequenceClassification:
    config = BertConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(config)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--weight", type=float, default=0.1)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is left out of the timing)")
    vocab = 100
    data = TokenSequences(args.steps * args.batch_size, vocab, args.length)
    times = {}
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                                          learning_rate=1e-3, logging_steps=max(1, args.steps // 2), report_to="none",
                                          save_strategy="no", disable_tqdm=True, remove_unused_columns=False, seed=0)
        for name in ("plain", "regularised"):
            torch.manual_seed(0)
            timer = StepTimer()
            extra = {} if name == "plain" else {
                "regularizer": MarginalDensityRegularizer(args.weight, output=lambda out: out.logits)}
            trainer_class = Trainer if name == "plain" else MarginalDensityTrainer
            trainer = trainer_class(model=small_bert(vocab), args=training_args, train_dataset=data, callbacks=[timer],
                                    **extra)
            trainer.train()
            times[name] = statistics.median(timer.times[1:])
    print(f"step time (batch {args.batch_size} x {args.length} tokens, median of {args.steps - 1} steps after "
          f"the first): plain {1e3 * times['plain']:.1f} ms, regularised {1e3 * times['regularised']:.1f} ms "
          f"({times['regularised'] / times['plain']:.2f}x plain)")


if __name__ == "__main__":
    main()
