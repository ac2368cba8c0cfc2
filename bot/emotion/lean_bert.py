"""The sentence encoder's forward pass for inference, written out: the same operations as transformers'
BertModel in the same order (its outputs are equal), without the per-call work of its modules (hooks,
argument checks, mask building, attention dispatch). A judgement reads a sentence of a few dozen tokens,
where that work was a fifth of the time (about 3 ms a sentence on a 2-core VM); training keeps the
transformers model, whose gradients the low-rank updates need.

Built from the model as it runs (merged and quantised): its linear layers are called as they are, int8
or float.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional

Linear = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Layer:
    query: Linear
    key: Linear
    value: Linear
    attention_out: Linear
    attention_norm: tuple[torch.Tensor, torch.Tensor]
    intermediate: Linear
    out: Linear
    out_norm: tuple[torch.Tensor, torch.Tensor]


def _linear(module: torch.nn.Module) -> Linear:
    # The module's own forward, past nn.Module.__call__ (hooks, tracing checks): an int8 layer keeps its
    # quantised kernel and settings, a float one is functional.linear.
    forward: Linear = module.forward
    return forward


def _norm(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    assert isinstance(module, torch.nn.LayerNorm)
    return module.weight, module.bias


class LeanBert:
    """BertModel's last hidden state, for inference only."""

    def __init__(self, model: Any) -> None:
        """`model`: a transformers BertModel (Any: transformers is imported only where an encoder loads)."""
        config = model.config
        shape = (config.hidden_act, getattr(config, "position_embedding_type", "absolute"), config.is_decoder)
        if shape != ("gelu", "absolute", False):
            raise ValueError(f"no lean forward for a BERT of activation, positions and decoding {shape}")
        embeddings = model.embeddings
        self.words = embeddings.word_embeddings.weight
        self.positions = embeddings.position_embeddings.weight
        self.token_type = embeddings.token_type_embeddings.weight[0]
        self.embedding_norm = _norm(embeddings.LayerNorm)
        self.eps = float(config.layer_norm_eps)
        self.heads = int(config.num_attention_heads)
        self.scaling = (int(config.hidden_size) // self.heads) ** -0.5
        self.layers = [
            _Layer(
                query=_linear(layer.attention.self.query),
                key=_linear(layer.attention.self.key),
                value=_linear(layer.attention.self.value),
                attention_out=_linear(layer.attention.output.dense),
                attention_norm=_norm(layer.attention.output.LayerNorm),
                intermediate=_linear(layer.intermediate.dense),
                out=_linear(layer.output.dense),
                out_norm=_norm(layer.output.LayerNorm),
            )
            for layer in model.encoder.layer
        ]

    def __call__(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Hidden states (batch, tokens, dim) of token ids (batch, tokens) at positions (batch or 1,
        tokens); `attention_mask` is what sdpa takes (bool, True where a token may attend, or additive
        float), broadcast over heads, or None where every token sees every other."""
        x = self.words[input_ids] + self.token_type + self.positions[position_ids]
        x = self._norm(x, self.embedding_norm)
        batch, tokens = input_ids.shape
        split = (batch, tokens, self.heads, -1)
        for layer in self.layers:
            attended = functional.scaled_dot_product_attention(
                layer.query(x).view(split).transpose(1, 2),
                layer.key(x).view(split).transpose(1, 2),
                layer.value(x).view(split).transpose(1, 2),
                attn_mask=attention_mask,
                scale=self.scaling,
            )
            attended = attended.transpose(1, 2).reshape(batch, tokens, -1)
            x = self._norm(layer.attention_out(attended) + x, layer.attention_norm)
            x = self._norm(layer.out(functional.gelu(layer.intermediate(x))) + x, layer.out_norm)
        return x

    def _norm(self, x: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return functional.layer_norm(x, (x.shape[-1],), norm[0], norm[1], self.eps)
