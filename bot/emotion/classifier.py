"""The shipped text emotion classifier: TF-IDF word and bigram features and a softmax over GoEmotions'
28 labels, fitted by scripts/train_emotion.py on GoEmotions' train split (Demszky et al., 2020,
"GoEmotions: A Dataset of Fine-Grained Emotions", ACL; Apache-2.0 data by Google Research).

A reply of several sentences is read one sentence (and *action*) at a time, and the sentences are pooled
with more weight on those that show an emotion (`pool_power`, chosen on dev with the fit): read as one
text, the weak cues of many neutral sentences add up and a long reply drifts toward joy.

It needs only numpy, loads in milliseconds and judges a reply in well under a millisecond, so it runs on
the event loop's worker threads without touching the LLM's queue and works with every model.
"""

from __future__ import annotations

import functools
import io
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bot.emotion.labels import GOEMOTIONS
from bot.emotion.negation import damp, denied
from bot.emotion.text import calmest, features, reply_parts
from bot.errors import ModelError

MODEL_FILE = Path(__file__).parent / "data" / "goemotions-tfidf-softmax.npz"


@dataclass(frozen=True)
class TextClassifier:
    vocabulary: Mapping[str, int]
    idf: np.ndarray  # (V,) float32
    weights: np.ndarray  # (V, 28) float32
    bias: np.ndarray  # (28,) float32
    temperature: float  # fitted on dev: divides the logits so probabilities are calibrated
    labels: tuple[str, ...] = GOEMOTIONS
    # How a reply's sentences are pooled: each weighs (1 - P(neutral)) ** pool_power; 0 reads the reply
    # as one text.
    pool_power: float = 0.0

    @classmethod
    def load(cls, path: Path = MODEL_FILE) -> TextClassifier:
        try:
            with np.load(path, allow_pickle=False) as data:
                vocabulary = bytes(data["vocabulary"]).decode("utf-8").split("\n")
                labels = tuple(bytes(data["labels"]).decode("utf-8").split("\n"))
                model = cls(
                    vocabulary={term: i for i, term in enumerate(vocabulary)},
                    idf=data["idf"].astype(np.float32),
                    weights=data["weights"].astype(np.float32),
                    bias=data["bias"].astype(np.float32),
                    temperature=float(data["temperature"]),
                    labels=labels,
                    pool_power=float(data["pool_power"]) if "pool_power" in data else 0.0,
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"emotion classifier {path} cannot be read: {exc}") from None
        if model.weights.shape != (len(vocabulary), len(labels)) or set(labels) != set(GOEMOTIONS):
            raise ModelError(f"emotion classifier {path} has inconsistent shapes or labels")
        return model

    def vector(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Sparse TF-IDF vector (indices, values), L2-normalised; the same maths as in training."""
        counts = Counter(i for i in map(self.vocabulary.get, features(text)) if i is not None)
        if not counts:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        index = np.fromiter(counts.keys(), np.int64, len(counts))
        tf = np.fromiter((1.0 + math.log(c) for c in counts.values()), np.float32, len(counts))
        values = tf * self.idf[index]
        return index, values / np.linalg.norm(values)

    def logits(self, text: str) -> np.ndarray:
        index, values = self.vector(text)
        return values @ self.weights[index] + self.bias

    def probabilities(self, text: str) -> dict[str, float]:
        """Probability of each of the 28 GoEmotions labels for this text (sums to 1)."""
        z = self.logits(text) / self.temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        return dict(zip(self.labels, p.tolist(), strict=True))

    def read_reply(self, text: str, names: Iterable[str] = ()) -> dict[str, float]:
        """The 28 probabilities for a whole reply, roleplay markup stripped: its sentences and *actions*
        read one at a time and pooled (see the module's docstring)."""
        parts = reply_parts(text, names, apart=self.pool_power > 0)
        read = calmest(parts, lambda texts: [self.probabilities(t) for t in texts], _calm)
        read = [damp(r, denied(part)) for r, part in zip(read, parts, strict=True)]
        if len(read) == 1:
            return read[0]
        weights = [(1.0 - p["neutral"]) ** self.pool_power + 1e-6 for p in read]
        total = sum(weights)
        return {
            label: sum(w * p[label] for w, p in zip(weights, read, strict=True)) / total
            for label in self.labels
        }


def _calm(probs: Mapping[str, float]) -> bool:
    return max(probs, key=probs.__getitem__) == "neutral"


@functools.cache
def shipped() -> TextClassifier:
    """The classifier shipped in the package, loaded once per process."""
    return TextClassifier.load()


def save(
    path: Path,
    vocabulary: list[str],
    idf: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray,
    temperature: float,
    pool_power: float,
) -> None:
    """Write a model file (float16 weights keep the shipped file at a few MB)."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        vocabulary=np.frombuffer("\n".join(vocabulary).encode("utf-8"), np.uint8),
        labels=np.frombuffer("\n".join(GOEMOTIONS).encode("utf-8"), np.uint8),
        idf=idf.astype(np.float16),
        weights=weights.astype(np.float16),
        bias=bias.astype(np.float32),
        temperature=np.float32(temperature),
        pool_power=np.float32(pool_power),
    )
    path.write_bytes(buffer.getvalue())
