"""``mac-memory train``: meta-train the amortization and aggregation networks of MAC.

One step, as in the paper: sample ``B`` training documents and one question each; amortize the
documents (only a ``1 - backprop_dropout`` share of them with gradients, the rest under no-grad);
the ``B`` memory entries form the memory for all ``B`` questions (``memory=batch``), so the aggregator
must *select*; the loss is the frozen LM's answer NLL under each question's aggregated prefix. With
``memory=gold`` each question sees only its own document (the ladder's first rung: can a document's
modulation carry its facts at all?). A batch larger than the aggregation window is aggregated
hierarchically, so training sees the hierarchy too.

The loop is one visible function: Accelerate for device placement, DDP and mixed precision; gradient
accumulation, clipping, warmup + cosine schedule; validation EM/F1 every ``eval_every`` steps;
checkpoints (``step-N/`` = a loadable MAC checkpoint + ``trainer_state.pt``) and ``--resume``; a JSONL
log of the curves and a PNG plot of them.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import AggregatorConfig, AmortizerConfig, BaseLMConfig, MACConfig, ModulationConfig
from ..data.stream import Document, load_stream
from ..data.synthetic import WorldConfig, generate_world
from ..evaluation.metrics import score_predictions
from ..frozen_lm import FrozenLM
from ..model import MACModel
from .schedule import latest_checkpoint, plot_log, step_checkpoints, warmup_cosine

logger = logging.getLogger(__name__)


@dataclass
class MetaTrainConfig:
    """Options of ``mac-memory train``."""

    base_lm: str = "runs/base/final"
    """Hub name or local path of the frozen base LM (e.g. the output of ``train-base``)."""
    out: str = "runs/mac"
    """Directory for checkpoints (``step-*/``), the final checkpoint (``final/``), log and plot."""
    init: str | None = None
    """Start from this MAC checkpoint instead of fresh networks."""
    train_file: str | None = None
    """Document-stream JSONL of training documents + QA (default: the synthetic world's train split)."""
    val_file: str | None = None
    """Document-stream JSONL for validation (default: the synthetic world's val split)."""
    world_seed: int = 0
    """Seed of the synthetic world used when no files are given."""
    world_entities: int = 4000
    """Entities of the synthetic world used when no files are given."""
    fresh_fraction: float = 0.0
    """Share of each batch's documents that are fresh synthetic people written with *other* worlds'
    invented cities and companies (``fresh_vocabularies`` of them), never repeated. Trained on the world
    alone, the networks learn its fixed vocabulary: on the embedded default, gold-memory F1 fell from
    55.8 on held-out people of the training world to 27.5 on a world with other cities. A share of 0.5
    did not fix that within 3,000 steps on that small base LM (27.2 and 10.2 F1; it reads other worlds'
    names poorly itself): docs/results.md. Synthetic world only (no ``train_file``)."""
    fresh_vocabularies: int = 16
    """How many other worlds' vocabularies the fresh documents use (world seeds 1,000,000 + j)."""
    kind: str = "kv_anchored"
    """Amortizer kind: kv_anchored, t5 or encoder."""
    backbone: str | None = None
    """Backbone (hub name or path) of the t5/encoder amortizer."""
    num_tokens: int = 8
    """T: memory tokens per document."""
    d_mem: int = 256
    """Width of a memory token."""
    agg_layers: int = 4
    """Cross-attention blocks of the aggregation network."""
    agg_heads: int = 8
    """Attention heads of the aggregation network."""
    window: int = 16
    """Aggregation window (larger candidate sets are aggregated hierarchically)."""
    readout: str = "slot"
    """Aggregator read-out: 'slot' (merged token t averages token t of the candidates; one document passes
    through exactly) or 'token' (the paper's: each merged token attends to all stored tokens)."""
    memory: str = "batch"
    """What each question sees: 'batch' (all documents of the batch, the paper's) or 'gold' (its own)."""
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 16
    """Documents (and questions) per micro-batch; also the memory size per question with memory=batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    backprop_dropout: float = 0.0
    """Share of a batch's documents amortized without gradients (the paper keeps 25%: 0.75)."""
    lr: float = 5e-4
    """Peak learning rate (AdamW)."""
    warmup: int = 100
    """Linear warmup steps, then cosine decay to 10%."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    lm_recompute_chunk: int = 0
    """Recompute the frozen LM's answer-loss activations in backward, this many questions at a time,
    instead of keeping the whole batch's (activation checkpointing; 0 = keep them). With a large base LM
    those activations are a large share of a step's memory and backprop dropout cannot touch them; recomputing
    costs one more forward of the LM and gives the same loss and gradients."""
    lm_dropout: bool = False
    """Keep the base LM's dropout on during training (the paper does; weights stay frozen)."""
    mixed_precision: str = "auto"
    """'auto' (bf16 on a GPU, and on a CPU where bf16 autocast measures faster: see mac_memory.precision),
    'no', 'bf16' or 'fp16'."""
    eval_every: int = 200
    """Steps between validation and checkpoints."""
    eval_questions: int = 128
    """Validation questions per evaluation."""
    keep_checkpoints: int = 2
    """Step checkpoints kept on disk (older ones are deleted)."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""
    seed: int = 0
    """Random seed."""
    resume: bool = False
    """Continue from the latest ``step-*`` checkpoint in ``out``."""

    def __post_init__(self) -> None:
        from ..errors import ConfigError

        if self.memory not in ("batch", "gold"):
            raise ConfigError(f"MetaTrainConfig.memory={self.memory!r} is invalid: choose 'batch' or 'gold'.")
        if not 0.0 <= self.backprop_dropout < 1.0:
            raise ConfigError(f"MetaTrainConfig.backprop_dropout={self.backprop_dropout!r} is invalid: "
                              "must be in [0, 1) (at least one document needs gradients).")
        if isinstance(self.lm_recompute_chunk, bool) or not isinstance(self.lm_recompute_chunk, int) \
                or self.lm_recompute_chunk < 0:
            raise ConfigError(f"MetaTrainConfig.lm_recompute_chunk={self.lm_recompute_chunk!r} is invalid: "
                              "must be an integer >= 0 (0 keeps the LM's activations).")
        if self.batch_size < 1 or self.steps < 1 or self.grad_accum < 1:
            raise ConfigError("MetaTrainConfig.batch_size, steps and grad_accum must be positive integers.")
        if not 0.0 <= self.fresh_fraction <= 1.0:
            raise ConfigError(f"MetaTrainConfig.fresh_fraction={self.fresh_fraction!r} is invalid: "
                              "must be in [0, 1].")
        if self.fresh_fraction > 0 and self.train_file is not None:
            raise ConfigError("MetaTrainConfig.fresh_fraction mixes in synthetic people: it needs the synthetic "
                              "world (no train_file); set fresh_fraction=0 to train on your own documents.")
        if isinstance(self.fresh_vocabularies, bool) or not isinstance(self.fresh_vocabularies, int) \
                or self.fresh_vocabularies < 1:
            raise ConfigError(f"MetaTrainConfig.fresh_vocabularies={self.fresh_vocabularies!r} is invalid: "
                              "must be a positive integer.")

    def mac_config(self) -> MACConfig:
        return MACConfig(
            base_lm=BaseLMConfig(self.base_lm),
            amortizer=AmortizerConfig(kind=self.kind, backbone=self.backbone, num_tokens=self.num_tokens,
                                      d_mem=self.d_mem),
            aggregator=AggregatorConfig(num_layers=self.agg_layers, num_heads=self.agg_heads, window=self.window,
                                        readout=self.readout),
            modulation=ModulationConfig(),
        )


class MetaStep(nn.Module):
    """One training step as a module (so DDP sees a real ``forward``): documents + QA → loss."""

    def __init__(self, mac: MACModel, backprop_dropout: float, memory: str, recompute_chunk: int = 0) -> None:
        super().__init__()
        self.mac = mac
        self.backprop_dropout = backprop_dropout
        self.memory = memory
        self.recompute_chunk = recompute_chunk

    def forward(self, documents: list[str], questions: list[str], answers: list[str]) -> torch.Tensor:
        memory = amortize_with_dropout(self.mac, documents, self.backprop_dropout if self.training else 0.0)
        if self.memory == "gold":
            memory = memory.unsqueeze(1)  # (B, 1, T, d): each question sees only its own document
        return self.mac.loss(questions, answers, memory, recompute_chunk=self.recompute_chunk)


def amortize_with_dropout(mac: MACModel, documents: list[str], dropout: float) -> torch.Tensor:
    """``(N, T, d)`` memory where only a random ``1 - dropout`` share of documents carries gradients."""
    n = len(documents)
    keep = max(1, math.ceil(n * (1.0 - dropout)))
    if keep >= n:
        return mac.amortize(documents)
    order = torch.randperm(n).tolist()
    with_grad, without = sorted(order[:keep]), sorted(order[keep:])
    parts = {}
    tokens = mac.amortize([documents[i] for i in with_grad])
    parts.update(zip(with_grad, tokens))
    with torch.no_grad():
        tokens = mac.amortize([documents[i] for i in without])
    parts.update(zip(without, tokens))
    return torch.stack([parts[i] for i in range(n)])


def _load_splits(cfg: MetaTrainConfig) -> tuple[list[Document], list[Document]]:
    world = None
    if cfg.train_file is None or cfg.val_file is None:
        world = generate_world(WorldConfig(seed=cfg.world_seed, n_entities=cfg.world_entities))
    train = load_stream(cfg.train_file) if cfg.train_file else world["train"]
    val = load_stream(cfg.val_file) if cfg.val_file else world["val"]
    return [d for d in train if d.qas], [d for d in val if d.qas]


FRESH_SEED = 1_000_000
"""World seeds of the fresh documents' vocabularies: far from any world a user or the evaluation names."""


class DocumentSampler:
    """Training documents for one batch: the world's, with a ``fresh_fraction`` share of fresh people.

    Fresh documents come round-robin-at-random from ``fresh_vocabularies`` endless streams (one per other
    world's vocabulary); ``stream`` separates processes and resumed runs, so none repeats a document.
    """

    def __init__(self, docs: list[Document], cfg: MetaTrainConfig, rng: random.Random, stream: int) -> None:
        from ..data.synthetic import iter_documents

        self.docs, self.rng, self.fraction = docs, rng, cfg.fresh_fraction
        self.fresh = [iter_documents(seed=FRESH_SEED + j, stream=stream) for j in range(cfg.fresh_vocabularies)]

    def sample(self, n: int) -> list[Document]:
        if not self.fraction:  # the world alone: the same draws as before fresh documents existed
            return self.rng.sample(self.docs, k=min(n, len(self.docs)))
        n_fresh = sum(self.rng.random() < self.fraction for _ in range(n))
        batch = self.rng.sample(self.docs, k=min(n - n_fresh, len(self.docs)))
        batch += [next(self.rng.choice(self.fresh)) for _ in range(n_fresh)]
        self.rng.shuffle(batch)
        return batch


def _shortest(answers) -> str:
    return min(answers, key=len)  # the official code trains on the shortest reference answer


@torch.no_grad()
def validate(mac: MACModel, docs: list[Document], n_questions: int, batch_size: int, seed: int = 0
             ) -> dict[str, float]:
    """EM/F1 on validation questions: gold document only, and a batch of ``batch_size`` documents as memory."""
    rng = random.Random(seed)
    pairs = [(d, qa) for d in docs for qa in d.qas]
    pairs = rng.sample(pairs, k=min(n_questions, len(pairs)))
    was_training = mac.training
    mac.eval()
    out: dict[str, float] = {}
    for mode in ("gold", "batch"):
        preds, refs = [], []
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            memory = mac.amortize([d.context for d, _ in chunk])
            if mode == "gold":
                memory = memory.unsqueeze(1)
            answers, _ = mac.generate([qa.question for _, qa in chunk], memory, max_new_tokens=16)
            preds += answers
            refs += [list(qa.answers) for _, qa in chunk]
        scores = score_predictions(preds, refs)
        out[f"val_{mode}_em"], out[f"val_{mode}_f1"] = scores.em, scores.f1
    mac.train(was_training)
    return out


def train_mac(cfg: MetaTrainConfig) -> Path:
    """Meta-train MAC; returns the directory of the final checkpoint."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from .. import precision as amp

    precision = amp.resolve(cfg.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu")
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    out = Path(cfg.out)
    resume_from = latest_checkpoint(out) if cfg.resume else None
    torch.manual_seed(cfg.seed + accelerator.process_index)
    rng = random.Random(cfg.seed * 1000 + accelerator.process_index)

    lm = FrozenLM.from_pretrained(cfg.base_lm, device=str(accelerator.device))
    if resume_from is not None:
        mac = MACModel.from_pretrained(resume_from, lm=lm)
    elif cfg.init:
        mac = MACModel.from_pretrained(cfg.init, lm=lm)
    else:
        mac = MACModel(cfg.mac_config(), lm)
    mac.train()
    lm.model.train(cfg.lm_dropout)  # dropout only; the weights stay frozen
    train_docs, val_docs = _load_splits(cfg)
    step_module = MetaStep(mac, cfg.backprop_dropout, cfg.memory, cfg.lm_recompute_chunk)
    params = [p for p in step_module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_lambda(step: int) -> float:
        return warmup_cosine(step, cfg.warmup, cfg.steps)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    # The scheduler is stepped by hand once per optimizer step: a prepared one steps once per process.
    step_module, optimizer = accelerator.prepare(step_module, optimizer)
    start = 0
    if resume_from is not None:
        state = torch.load(resume_from / "trainer_state.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["step"])
        rng.seed(int(state["rng_seed"]))
        logger.info("Resumed from %s at step %d", resume_from, start)
    sampler = DocumentSampler(train_docs, cfg, rng, stream=cfg.seed * 10_000_000 + start * 64
                              + accelerator.process_index)

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    log_path = out / "log.jsonl"
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train",
               disable=not accelerator.is_main_process)
    for step in bar:
        total = 0.0
        for _ in range(cfg.grad_accum):
            with accelerator.accumulate(step_module):
                batch = sampler.sample(cfg.batch_size)
                qas = [rng.choice(d.qas) for d in batch]
                with accelerator.autocast():
                    loss = step_module([d.context for d in batch], [qa.question for qa in qas],
                                       [_shortest(qa.answers) for qa in qas])
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                total += float(loss.detach()) / cfg.grad_accum
        bar.set_postfix(loss=f"{total:.3f}")
        record: dict[str, Any] = {"step": step + 1, "loss": total, "lr": scheduler.get_last_lr()[0]}
        done = step + 1 == cfg.steps
        if (step + 1) % cfg.eval_every == 0 or done:
            if accelerator.is_main_process:
                record.update(validate(accelerator.unwrap_model(step_module).mac, val_docs,
                                       cfg.eval_questions, cfg.batch_size, seed=cfg.seed))
                _save_step(accelerator.unwrap_model(step_module).mac, optimizer, scheduler, out, step + 1,
                           rng, cfg.keep_checkpoints)
                logger.info("step %d: %s", step + 1,
                            {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()})
            accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            with log_path.open("a") as log:
                log.write(json.dumps(record) + "\n")
    final = out / "final"
    if accelerator.is_main_process:
        accelerator.unwrap_model(step_module).mac.save_pretrained(final)
        plot_curves(log_path, out / "curves.png")
    accelerator.wait_for_everyone()
    return final


def _save_step(mac: MACModel, optimizer, scheduler, out: Path, step: int, rng: random.Random, keep: int) -> None:
    path = mac.save_pretrained(out / f"step-{step}")
    seed = rng.randrange(2**31)
    rng.seed(seed)  # the resumed run re-seeds with this and continues the same sample sequence
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                "rng_seed": seed}, path / "trainer_state.pt")
    for old in step_checkpoints(out)[:-keep]:
        shutil.rmtree(old)


def plot_curves(log_path: Path, png: Path) -> None:
    """Training loss and validation F1 against steps, from the JSONL log."""
    plot_log(log_path, png, "answer NLL", "validation F1",
             (("val_gold_f1", "gold document"), ("val_batch_f1", "batch as memory")))
