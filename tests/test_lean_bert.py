"""The encoder's lean forward (bot/emotion/lean_bert.py) gives what transformers' BertModel gives, on every
path the bot reads through: padded batches, packed sentences, int8, and the low-rank updates of training."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import tokenizers
import torch
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import BertConfig, BertModel

from bot.emotion.encoder import SentenceEncoder, encoder_dir
from bot.emotion.lean_bert import LeanBert

TEXTS = ["hi .", "i can not believe you did that , it is wonderful !", "she sighs and looks away .", "no ."]
WORDS = ["[PAD]", "[UNK]", *sorted({word for text in TEXTS for word in text.split()})]


def tiny(hidden_act: str = "gelu") -> SentenceEncoder:
    """A two-layer BERT with random weights and a word-level tokenizer, as the bot would load one."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_act=hidden_act,
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    tokenizer = tokenizers.Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.enable_padding(pad_id=0)
    return SentenceEncoder(model, tokenizer)


def transformers_embed(encoder: SentenceEncoder, texts: list[str]) -> np.ndarray:
    with torch.inference_mode():
        return encoder.forward(encoder.batch(texts)).numpy()


def transformers_packed(encoder: SentenceEncoder, texts: list[str]) -> np.ndarray:
    """embed_packed's reading, run through transformers' own forward."""
    encoder.lean = False
    try:
        return encoder.embed_packed(texts)
    finally:
        encoder.lean = True


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
def test_the_lean_forward_gives_transformers_outputs(int8: bool) -> None:
    encoder = tiny()
    if int8:
        assert encoder.quantize()
    # A padded batch (sentences of different lengths), and one sentence alone (no padding at all).
    assert np.abs(encoder.embed(TEXTS) - transformers_embed(encoder, TEXTS)).max() < 1e-6
    assert np.abs(encoder.embed(TEXTS[1:2]) - transformers_embed(encoder, TEXTS[1:2])).max() < 1e-6
    # Packed: one sequence, positions restarting at each sentence, a block-diagonal mask.
    assert np.abs(encoder.embed_packed(TEXTS) - transformers_packed(encoder, TEXTS)).max() < 1e-6
    lean = encoder._lean_forward()
    assert isinstance(lean, LeanBert) and lean.stacked == int8  # int8: query, key and value in one product


def test_a_stacking_that_would_change_the_numbers_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Query, key and value stack into one int8 product only where the probe reads the same numbers as
    the three layers; otherwise each is read alone, and the embeddings stay transformers' own."""
    quantize_per_channel = torch.quantize_per_channel

    def rounded_otherwise(weights: torch.Tensor, scales: torch.Tensor, *rest: Any) -> torch.Tensor:
        return quantize_per_channel(weights, scales * 1.01, *rest)

    monkeypatch.setattr(torch, "quantize_per_channel", rounded_otherwise)
    encoder = tiny()
    assert encoder.quantize()
    lean = encoder._lean_forward()
    assert lean is not None and not lean.stacked
    assert np.abs(encoder.embed(TEXTS) - transformers_embed(encoder, TEXTS)).max() < 1e-6


def test_quantised_after_a_reading_the_next_reads_int8() -> None:
    """The lean forward holds the model's layers: replaced by their int8 versions, it is built again."""
    encoder = tiny()
    float_reading = encoder.embed(TEXTS)
    assert encoder.quantize()
    int8_reading = encoder.embed(TEXTS)
    assert np.abs(int8_reading - transformers_embed(encoder, TEXTS)).max() < 1e-6
    assert np.abs(int8_reading - float_reading).max() > 1e-4  # int8 does read otherwise


def test_embed_reads_through_the_updates_training_adds() -> None:
    encoder = tiny()
    before = encoder.embed(TEXTS)
    for layer in encoder.add_lora(rank=2, alpha=4.0).values():
        torch.nn.init.normal_(layer.b)
    after = encoder.embed(TEXTS)
    assert np.abs(after - transformers_embed(encoder, TEXTS)).max() < 1e-6
    assert np.abs(after - before).max() > 1e-3


def test_a_bert_it_does_not_cover_runs_on_transformers_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    encoder = tiny(hidden_act="relu")
    with pytest.raises(ValueError, match="relu"):
        LeanBert(encoder.model)
    with caplog.at_level(logging.INFO, logger="bot.emotion.encoder"):
        reading = encoder.embed(TEXTS)
    assert np.abs(reading - transformers_embed(encoder, TEXTS)).max() < 1e-6
    assert "transformers' forward runs it" in caplog.text


@pytest.mark.skipif(encoder_dir() is None, reason="the sentence encoder wheel is not installed")
def test_the_shipped_encoder_reads_exactly_as_through_transformers() -> None:
    """The judge's head was fitted on embeddings transformers computed: the lean forward must not move
    them by a bit, int8 included."""
    folder = encoder_dir()
    assert folder is not None
    encoder = SentenceEncoder.load(folder)
    assert encoder.quantize()
    texts = ["Okay.", "I can't believe you would do this to me!", "*She looks away.* There's a monster..."]
    assert np.array_equal(encoder.embed(texts), transformers_embed(encoder, texts))
    lean = encoder._lean_forward()
    assert lean is not None and lean.stacked
    assert np.array_equal(encoder.embed_packed(texts), transformers_packed(encoder, texts))
