"""``mac-memory train-base``: prepare the frozen base LM (the paper's QA warm-up, or a small LM from scratch).

The paper warms the base LM up on question-answer pairs of the training split so that it knows the
answer format, then freezes it. Two paths:

* ``--from-pretrained NAME``: a short QA-format fine-tune of an existing causal LM (GPT-2, Llama, Qwen...).
* ``--from-scratch``: no pretrained causal LM exists on an offline machine, so a small Llama-style LM
  and a BPE tokenizer are trained on the synthetic world. It must *read*: reading examples put a
  freshly generated document before its questions (fresh entities every time, so it cannot memorise
  them and has to copy from the context), which is also what makes the RAG baseline fair. Training
  documents (language modelling) and closed-book QA pairs of the training world teach the format.

Every example is one text; the loss is the LM loss over all its tokens with answer tokens weighted
up (``answer_weight``). The loop is plain: accumulation, clipping, warmup + cosine schedule, periodic
checkpoints with ``--resume``, and a held-out reading check (EM/F1 with the document in the prompt).
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.stream import Document, load_stream
from ..data.synthetic import WorldConfig, generate_world, iter_documents
from ..errors import ConfigError, DataFormatError
from ..prompts import format_qa, format_with_documents
from .schedule import latest_checkpoint, plot_log, step_checkpoints, warmup_cosine

logger = logging.getLogger(__name__)


@dataclass
class BaseTrainConfig:
    """Options of ``mac-memory train-base``."""

    out: str = "runs/base"
    """Directory for checkpoints (``step-*/``) and the final model (``final/``)."""
    from_pretrained: str | None = None
    """Hub name or local path of an existing causal LM to QA-warm-up; unset = train from scratch."""
    train_file: str | None = None
    """Document-stream JSONL with training documents + QA (default: the synthetic world's train split).
    With a file, reading examples are its own documents + questions (fresh synthetic people would be
    another language than yours)."""
    val_file: str | None = None
    """Document-stream JSONL whose first 48 documents make the reading check (default: the synthetic
    world's val split)."""
    world_seed: int = 0
    """Seed of the synthetic world (train split = the world's train entities)."""
    world_entities: int = 4000
    """Entities in the synthetic world (split train/val/test by entity)."""
    vocab_size: int = 2048
    """From scratch: BPE vocabulary size."""
    number_tokens: str = ""
    """Whole numbers ``"LO-HI"`` that get one token each (written with the leading space they follow a word
    with), added to the tokenizer before training; empty = none. A small LM copies a one-token number from
    its context far more easily than its BPE pieces (the v5 default copied a year's first piece and guessed
    the second). Resuming or starting from a model without them grows its embeddings; each new row starts
    at the mean of the number's old pieces."""
    hidden_size: int = 256
    """From scratch: model width."""
    num_layers: int = 4
    """From scratch: transformer layers."""
    num_heads: int = 8
    """From scratch: attention heads."""
    num_kv_heads: int = 4
    """From scratch: key/value heads (grouped-query attention when below num_heads)."""
    steps: int = 6000
    """Optimizer steps."""
    batch_size: int = 16
    """Sequences per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate (from scratch; use ~5e-5 for a pretrained LM)."""
    warmup: int = 200
    """Linear warmup steps, then cosine decay to 10%."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    answer_weight: float = 4.0
    """Extra weight of answer tokens in the LM loss."""
    text_weight: float = 1.0
    """Weight of every other token (below 1 focuses the gradient on reading: answers over invented names)."""
    reading_questions: int = 4
    """Most questions asked after the document in one reading example (1..this, each with its answer)."""
    curriculum_steps: int = 0
    """Reading curriculum: over the first N steps, reading documents keep their answer sentences plus a
    growing share of the others (distractors come back gradually); 0 = whole documents from the start."""
    reading_fraction: float = 0.7
    """Share of examples that are fresh document + questions → answers."""
    qa_fraction: float = 0.15
    """Share of closed-book QA pairs from the training world (the rest: training documents as plain text)."""
    max_length: int = 320
    """Tokens per example."""
    eval_every: int = 500
    """Steps between reading checks and checkpoints."""
    lora_rank: int = 0
    """With ``from_pretrained``: train a LoRA adapter of this rank (peft) instead of the whole LM; the
    checkpoints and ``final/`` are then small adapter directories that load as the base LM itself
    (``FrozenLM.from_pretrained(out/final)`` merges the adapter into its base). 0 = full fine-tune."""
    lora_alpha: float = 0.0
    """LoRA scaling numerator (0 = twice the rank)."""
    lora_targets: str = "all-linear"
    """Comma-separated module names the LoRA adapter wraps (e.g. ``q_proj,v_proj``), or ``all-linear``."""
    mixed_precision: str = "auto"
    """'auto' (bf16 autocast on a GPU, and on a CPU where it measures faster), 'no', 'bf16' or 'fp16'."""
    reading_docs: int = 48
    """Held-out documents of the reading check (two questions each)."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""
    seed: int = 0
    """Random seed."""
    resume: bool = False
    """Continue from the latest checkpoint in ``out``."""


def _training_world(cfg: BaseTrainConfig) -> list[Document]:
    if cfg.train_file:
        return load_stream(cfg.train_file)
    return generate_world(WorldConfig(seed=cfg.world_seed, n_entities=cfg.world_entities))["train"]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _mentions(sentence: str, answer: str) -> bool:
    """Whether ``answer`` occurs in ``sentence`` as whole words ("12" is not in "120"; "$5" is in "a $5 fee")."""
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", sentence) is not None


def _shortened(context: str, answers: list[str], keep_others: float, rng: random.Random) -> str:
    """``context`` with every sentence holding an answer and a ``keep_others`` share of the rest, in order."""
    sentences = _SENTENCE_END.split(context.strip())
    needed = [any(_mentions(s, a) for a in answers) for s in sentences]
    others = [i for i, n in enumerate(needed) if not n]
    kept = set(rng.sample(others, k=round(keep_others * len(others))))
    return " ".join(s for i, s in enumerate(sentences) if needed[i] or i in kept)


def _reading_text(doc: Document, rng: random.Random, most: int = 4, keep_others: float = 1.0,
                  fits: Callable[[str], bool] | None = None) -> tuple[str, list[str]] | None:
    """Document, then 1..``most`` of its questions each followed by its answer; returns text and answers.

    ``keep_others`` below 1 drops that share of the sentences that answer none of the chosen questions.
    ``fits`` (text → whether it fits the example length): a text too long for it would lose answers to
    truncation, so the last questions go first (as many as fit after the whole document); if not even
    the first one fits, the document is cut to whole sentences around that question's answer; None
    when even that does not fit.
    """
    qas = rng.sample(list(doc.qas), k=min(len(doc.qas), rng.randint(1, most)))
    context = doc.context
    if keep_others < 1.0:
        context = _shortened(context, [qa.answers[0] for qa in qas], keep_others, rng)

    def compose(context: str, qas: list) -> str:
        text = format_with_documents([context], qas[0].question) + " " + qas[0].answers[0]
        for qa in qas[1:]:
            text += "\n" + format_qa(qa.question, qa.answers[0])
        return text

    if fits is None:
        return compose(context, qas), [qa.answers[0] for qa in qas]
    for n in range(len(qas), 0, -1):
        text = compose(context, qas[:n])
        if fits(text):
            return text, [qa.answers[0] for qa in qas[:n]]
    first = qas[:1]
    fitted = _fitted(context, first[0].answers[0], lambda c: fits(compose(c, first)))
    return None if fitted is None else (compose(fitted, first), [first[0].answers[0]])


def _fitted(context: str, answer: str, fits: Callable[[str], bool]) -> str | None:
    """``context`` cut to a run of whole sentences that holds ``answer`` and ``fits``; None if none does.

    Sentences go one at a time from whichever end has more of them outside the answer's sentence, so
    the answer keeps as much of its surroundings as the length allows; the answer's first sentence is
    tried first, then any later one that also holds it.
    """
    sentences = _SENTENCE_END.split(context.strip())
    for held in (i for i, sentence in enumerate(sentences) if _mentions(sentence, answer)):
        lo, hi = 0, len(sentences)  # the kept run is sentences[lo:hi]
        while True:
            kept = " ".join(sentences[lo:hi])
            if fits(kept):
                return kept
            before, after = held - lo, hi - 1 - held
            if before == after == 0:
                break
            if before >= after:
                lo += 1
            else:
                hi -= 1
    return None  # the answer is in no single sentence, or no sentence of it fits


def example_stream(cfg: BaseTrainConfig, world: list[Document], fresh_seed: int,
                   progress: Callable[[], float] = lambda: 1.0,
                   fits: Callable[[str], bool] | None = None) -> Iterator[tuple[str, list[str]]]:
    """Endless mixture of (text, answers): reading examples on fresh entities, closed-book QA, documents.

    ``progress()`` (0..1) is how far the reading curriculum has got: the share of non-answer sentences
    reading documents keep. ``fits`` (text → whether it fits ``max_length``): reading examples too long
    for it are cut down around their answers (:func:`_reading_text`) instead of losing them to
    truncation; documents that cannot be cut to fit are passed over.
    """
    rng = random.Random(cfg.seed)
    fresh = iter_documents(seed=fresh_seed) if cfg.train_file is None else None
    readable = [d for d in world if d.qas]
    if fresh is None and not readable:
        raise DataFormatError(f"{cfg.train_file}: no document has questions, so there is nothing to read.")
    qa_pairs = [(qa.question, qa.answers[0]) for d in world for qa in d.qas]
    while True:
        r = rng.random()
        if r < cfg.reading_fraction:
            for _ in range(1000):
                doc = next(fresh) if fresh is not None else rng.choice(readable)
                example = _reading_text(doc, rng, cfg.reading_questions, min(1.0, progress()), fits)
                if example is not None:
                    yield example
                    break
            else:
                raise DataFormatError(f"1,000 documents in a row do not fit max_length={cfg.max_length} tokens "
                                      "with a question and its answer, even cut to the sentence that answers it; "
                                      "raise --max-length.")
        elif r < cfg.reading_fraction + cfg.qa_fraction:
            q, a = rng.choice(qa_pairs)
            yield format_qa(q, a), [a]
        else:
            yield rng.choice(world).context, []


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer for the synthetic language (pad=0, eos=1, unk=2)."""
    from ..tiny_models import build_tokenizer

    return build_tokenizer(texts, vocab_size=vocab_size)


def number_range(spec: str) -> range:
    """``"1850-2020"`` → ``range(1850, 2021)``, with a clear error for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", spec)
    if match is None or int(match[1]) > int(match[2]):
        raise ConfigError(f"number_tokens must look like 'LO-HI' with LO <= HI (e.g. '1850-2020'), got {spec!r}.")
    lo, hi = int(match[1]), int(match[2])
    if hi - lo >= 100_000:
        raise ConfigError(f"number_tokens {spec!r} would add {hi - lo + 1:,} tokens; keep the range under 100,000.")
    return range(lo, hi + 1)


def add_number_tokens(model, tokenizer, spec: str) -> int:
    """Give every whole number of ``spec`` (``"LO-HI"``) its own token, as ``" N"``; returns how many were new.

    The model's embeddings grow to the new vocabulary; each new row (input, and output when untied)
    starts at the mean of the rows of the pieces the number was split into before, so the LM begins
    from what it already knew of the number.
    """
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    words = [f" {n}" for n in number_range(spec) if f" {n}" not in vocab]
    if not words:
        return 0
    pieces = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
    tokenizer.add_tokens([AddedToken(w, normalized=False) for w in words])
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    tables = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not tables[0]:
        tables.append(output.weight)
    ids = tokenizer.convert_tokens_to_ids(words)
    with torch.no_grad():
        for table in tables:
            for new, old in zip(ids, pieces):
                table[new] = table[old].mean(0)
    logger.info("Added %d number tokens (%s); vocabulary now %d", len(words), spec, len(tokenizer))
    return len(words)


def _build_from_scratch(cfg: BaseTrainConfig, world: list[Document]):
    from transformers import AutoConfig, AutoModelForCausalLM

    rng = random.Random(cfg.seed + 1)
    corpus = [d.context for d in world] + [format_qa(qa.question, qa.answers[0]) for d in world for qa in d.qas]
    corpus += [text for d in itertools.islice(iter_documents(seed=10_000 + cfg.seed), 3000)
               for text, _ in [_reading_text(d, rng)]]
    tokenizer = train_tokenizer(corpus, cfg.vocab_size)
    config = AutoConfig.for_model(
        "llama", vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=3 * cfg.hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=1,
        rope_theta=10000.0,
    )
    torch.manual_seed(cfg.seed)
    return AutoModelForCausalLM.from_config(config), tokenizer


def _batch(tokenizer, examples: list[tuple[str, list[str]]], max_length: int, answer_weight: float,
           text_weight: float = 1.0):
    """Right-padded ids, mask and per-token loss weights (answers ``answer_weight``, other tokens
    ``text_weight``, padding 0). The token right after an answer (the line break before the next question,
    or the end token) counts as part of it: that is where the LM learns to stop answering."""
    eos = tokenizer.eos_token
    enc = tokenizer([t + eos for t, _ in examples], return_tensors="pt", padding=True, truncation=True,
                    max_length=max_length, return_offsets_mapping=True)
    weights = enc["attention_mask"].float() * text_weight
    for row, (text, answers) in enumerate(examples):
        offsets = enc["offset_mapping"][row].tolist()
        for ans in answers:
            # Weight the answer spans that follow "Answer: " (the last occurrence of each answer string).
            pos = text.rfind("Answer: " + ans)
            if pos < 0:
                continue
            lo, hi = pos + len("Answer: "), pos + len("Answer: ") + len(ans)
            span = [j for j, (a, b) in enumerate(offsets) if b > lo and a < hi]
            if span and span[-1] + 1 < len(offsets) and enc["attention_mask"][row, span[-1] + 1]:
                span.append(span[-1] + 1)  # the terminator: stop here
            weights[row, span] = answer_weight
    return enc["input_ids"], enc["attention_mask"], weights


def _fits_untruncated(tokenizer, max_length: int) -> Callable[[str], bool]:
    """Whether an example's text reaches :func:`_batch` whole: counted as it encodes it (text + end token)."""
    return lambda text: len(tokenizer(text + tokenizer.eos_token)["input_ids"]) <= max_length


def weighted_lm_loss(model, input_ids, attention_mask, weights) -> torch.Tensor:
    """Weighted next-token NLL. Only positions whose next token has a weight are projected onto the
    vocabulary: with answer-only weights (``text_weight`` 0) that skips most of the vocabulary projection,
    a fifth of a 135M LM's training compute with a 49k vocabulary."""
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # right for either padding side
    w = weights[:, 1:]
    scored = w > 0  # (B, L-1): positions whose next token counts
    decoder = _decoder_of(model)
    if decoder is None:  # a model whose body and vocabulary head cannot be reached separately
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                       use_cache=False).logits[:, :-1][scored]
    else:
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                         use_cache=False).last_hidden_state[:, :-1]  # (B, L-1, hidden)
        logits = model.get_output_embeddings()(hidden[scored])  # (n_scored, vocab)
    nll = torch.nn.functional.cross_entropy(logits.float(), input_ids[:, 1:][scored], reduction="none")
    return (nll * w[scored]).sum() / w.sum().clamp(min=1.0)


def _decoder_of(model):
    """The transformer body of a HF causal LM (``model.model``, ``model.transformer``...), under a peft
    wrapper too; None when it has no separate body and vocabulary head."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    if body is None or body is inner or inner.get_output_embeddings() is None:
        return None
    config = inner.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None  # the head does more than the projection (Gemma 2, Cohere): use the model's own logits
    return body


@torch.no_grad()
def reading_check(model, tokenizer, docs: list[Document], max_new_tokens: int = 12) -> dict[str, float]:
    """F1 answering held-out questions with the gold document in the prompt (``rag_gold_f1``), and without
    it (``no_memory_f1``): two questions per document, taken in turn through each document's questions so
    that every kind of question is asked. Questions that name their kind (the synthetic world's
    ``attribute``) also get ``rag_gold_f1/<attribute>``: a from-scratch LM learns to read one kind of fact
    at a time, and the mean hides which ones it still guesses."""
    from ..evaluation.metrics import score_by_group, score_predictions
    from ..frozen_lm import FrozenLM

    was_training, padding_side = model.training, tokenizer.padding_side
    trainable = [p for p in model.parameters() if p.requires_grad]
    lm = FrozenLM(model, tokenizer, "in-training")  # switches to eval, frozen, left padding: undone below
    questions = [(d, d.qas[(2 * i + j) % len(d.qas)]) for i, d in enumerate(docs) if d.qas
                 for j in range(min(2, len(d.qas)))]
    refs = [list(qa.answers) for _, qa in questions]
    out: dict[str, float] = {}
    for name, prompts in (
        ("rag_gold", [format_with_documents([d.context], qa.question) for d, qa in questions]),
        ("no_memory", [format_qa(qa.question) for _, qa in questions]),
    ):
        preds = []
        for i in range(0, len(prompts), 32):
            texts = lm.generate(prompts[i : i + 32], max_new_tokens=max_new_tokens)
            preds += [t.strip().split("\n")[0].strip() for t in texts]
        out[f"{name}_f1"] = score_predictions(preds, refs).f1
        if name == "rag_gold":
            kinds = [qa.metadata.get("attribute") if isinstance(qa.metadata.get("attribute"), str) else None
                     for _, qa in questions]
            out.update({f"rag_gold_f1/{kind}": sc.f1 for kind, sc in score_by_group(preds, refs, kinds).items()})
    model.train(was_training)
    for p in trainable:  # a LoRA run trains its adapter only: the rest stays frozen
        p.requires_grad_(True)
    tokenizer.padding_side = padding_side
    return out


def _load_pretrained(cfg: BaseTrainConfig, resume_from: Path | None):
    """The LM to warm up (any name :meth:`FrozenLM.from_pretrained` takes), wrapped in a LoRA adapter when
    ``lora_rank`` is set (resumed from ``resume_from``'s adapter if given)."""
    from ..frozen_lm import FrozenLM

    lm = FrozenLM.from_pretrained(cfg.from_pretrained, device="cpu")
    model, tokenizer = lm.model, lm.tokenizer
    model.requires_grad_(True)
    if not cfg.lora_rank:
        return model, tokenizer
    from peft import LoraConfig, PeftModel, get_peft_model

    if resume_from is not None:
        model = PeftModel.from_pretrained(model, resume_from, is_trainable=True)
    else:
        targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else [
            t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
        model = get_peft_model(model, LoraConfig(
            r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank, lora_dropout=0.0,
            target_modules=targets, task_type="CAUSAL_LM"))
    # The adapter names its base as the user did (a short name resolves on any machine; a path would not).
    model.peft_config["default"].base_model_name_or_path = cfg.from_pretrained
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("LoRA rank %d on %s: %.2fM trainable parameters", cfg.lora_rank, cfg.lora_targets, trainable / 1e6)
    return model, tokenizer


def _save(model, tokenizer, path: Path, lora: bool, final: bool = False) -> None:
    """An HF model directory, or (LoRA) an adapter directory that loads as the warmed LM: float32 in the
    step checkpoints a run resumes from, float16 in ``final/`` (the copy that ships)."""
    if lora:
        model.save_pretrained(path, safe_serialization=True)
        if final:
            _to_float16(path / "adapter_model.safetensors")
        return
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _to_float16(file: Path) -> None:
    """Store an adapter's weights in float16 (half the bytes; merged into a float32 LM, the difference is
    far below what a warm-up step changes)."""
    from safetensors.torch import load_file, save_file

    tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(str(file)).items()}
    save_file(tensors, str(file), metadata={"format": "pt"})


def train_base(cfg: BaseTrainConfig) -> Path:
    """Run base-LM preparation; returns the directory of the final model (HF format, safetensors), or of
    the final adapter with ``lora_rank``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .. import precision

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.number_tokens:
        number_range(cfg.number_tokens)  # a malformed range fails before anything is loaded or written
    if cfg.lora_rank and not cfg.from_pretrained:
        raise ConfigError("lora_rank needs from_pretrained: a LoRA adapter warms up an existing LM.")
    if cfg.lora_rank and cfg.number_tokens:
        raise ConfigError("number_tokens grows the vocabulary, which a LoRA adapter cannot carry; "
                          "use a full fine-tune (lora_rank 0).")
    if cfg.lora_rank < 0:
        raise ConfigError(f"lora_rank must be >= 0, got {cfg.lora_rank}.")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    amp = precision.resolve(cfg.mixed_precision, device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    world = _training_world(cfg)
    if cfg.val_file:
        val_world = [d for d in load_stream(cfg.val_file) if d.qas][: cfg.reading_docs]
    else:
        val_world = generate_world(WorldConfig(seed=cfg.world_seed, n_entities=cfg.world_entities))["val"]
        val_world = val_world[: cfg.reading_docs]
    start_step = 0
    resume_from = latest_checkpoint(out) if cfg.resume else None
    if resume_from is not None:
        state = json.loads((resume_from / "trainer_state.json").read_text())
        start_step = state["step"]
        logger.info("Resuming from %s (step %d)", resume_from, start_step)
    if cfg.from_pretrained and (cfg.lora_rank or resume_from is None):
        model, tokenizer = _load_pretrained(cfg, resume_from)
    elif resume_from is not None:
        model = AutoModelForCausalLM.from_pretrained(resume_from)
        tokenizer = AutoTokenizer.from_pretrained(resume_from)
    else:
        model, tokenizer = _build_from_scratch(cfg, world)
    model = model.to(device)
    grown = add_number_tokens(model, tokenizer, cfg.number_tokens) if cfg.number_tokens else 0
    tokenizer.padding_side = "right"
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    if resume_from is not None and (resume_from / "optimizer.pt").is_file():
        if grown:  # the embedding's moments no longer fit; a warm restart begins from fresh ones
            logger.info("Vocabulary grew by %d tokens: the optimizer starts afresh", grown)
        else:
            optimizer.load_state_dict(torch.load(resume_from / "optimizer.pt", weights_only=True))

    def lr_at(step: int) -> float:
        return cfg.lr * warmup_cosine(step, cfg.warmup, cfg.steps)

    # Fresh entities differ per resume so a restarted run never replays the same reading examples.
    current = [start_step]
    stream = example_stream(cfg, world, fresh_seed=100_000 + cfg.seed * 1000 + start_step,
                            progress=lambda: current[0] / cfg.curriculum_steps if cfg.curriculum_steps else 1.0,
                            fits=_fits_untruncated(tokenizer, cfg.max_length))
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc="train-base")
    tokens_seen, t0 = 0, time.time()
    with (out / "log.jsonl").open("a") as log:
        for step in bar:
            current[0] = step
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            total = 0.0
            for _ in range(cfg.grad_accum):
                examples = [next(stream) for _ in range(cfg.batch_size)]
                ids, mask, weights = _batch(tokenizer, examples, cfg.max_length, cfg.answer_weight, cfg.text_weight)
                with precision.autocast(amp, device):
                    loss = weighted_lm_loss(model, ids.to(device), mask.to(device), weights.to(device))
                loss = loss / cfg.grad_accum
                loss.backward()
                total += float(loss.detach())
                tokens_seen += int(mask.sum())
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{total:.3f}", tok_s=f"{tokens_seen / (time.time() - t0):.0f}")
            record = {"step": step + 1, "loss": total, "lr": lr_at(step), "seconds": time.time() - t0}
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                model.eval()
                with precision.autocast(amp, device):
                    record.update(reading_check(model, tokenizer, val_world))
                model.train()
                ckpt = out / f"step-{step + 1}"
                _save(model, tokenizer, ckpt, bool(cfg.lora_rank))
                torch.save(optimizer.state_dict(), ckpt / "optimizer.pt")
                (ckpt / "trainer_state.json").write_text(json.dumps({"step": step + 1}))
                for old in step_checkpoints(out)[:-2]:
                    shutil.rmtree(old)
                logger.info("step %d: %s", step + 1, {k: round(v, 3) for k, v in record.items()})
            log.write(json.dumps(record) + "\n")
            log.flush()
    final = out / "final"
    model.eval()
    tokenizer.padding_side = "left"
    _save(model, tokenizer, final, bool(cfg.lora_rank), final=True)
    plot_log(out / "log.jsonl", out / "curves.png", "weighted NLL", "reading check (held-out F1)",
             (("rag_gold_f1", "document in the prompt"), ("no_memory_f1", "no document")))
    return final
