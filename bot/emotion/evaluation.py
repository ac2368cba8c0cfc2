"""GoEmotions files and the measures used to fit, tune and benchmark emotion judges.

Rows are `text<TAB>label ids<TAB>comment id`. A comment may carry several labels; mapped onto a smaller
label set it is judged right when the prediction is any of its mapped labels, and for per-label figures
(macro-F1) its gold label is the prediction when that was right, else its first mapped label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.emotion.labels import GOEMOTIONS, projection


@dataclass(frozen=True)
class Example:
    text: str
    labels: tuple[str, ...]  # GoEmotions labels


def read_goemotions(path: Path, limit: int | None = None) -> list[Example]:
    examples: list[Example] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2:
                raise ValueError(f"{path}:{number}: expected text<TAB>label ids")
            ids = [int(i) for i in parts[1].split(",")]
            examples.append(Example(parts[0], tuple(GOEMOTIONS[i] for i in ids)))
            if limit is not None and len(examples) >= limit:
                break
    return examples


def gold(example: Example, labels: Sequence[str]) -> tuple[str, ...]:
    """The example's labels mapped onto a label set, first-listed first, without repeats."""
    mapping = projection(labels)
    return tuple(dict.fromkeys(mapping[g] for g in example.labels if g in mapping))


@dataclass(frozen=True)
class Scores:
    accuracy: float
    macro_f1: float
    predicted: Counter[str]
    n: int

    @property
    def largest_share(self) -> float:
        return max(self.predicted.values()) / self.n if self.n else 0.0


def score(predictions: Sequence[str], golds: Sequence[tuple[str, ...]], labels: Sequence[str]) -> Scores:
    right = 0
    true_pos: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    actual: Counter[str] = Counter()
    for prediction, allowed in zip(predictions, golds, strict=True):
        target = prediction if prediction in allowed else (allowed[0] if allowed else "")
        right += prediction == target
        true_pos[prediction] += prediction == target
        predicted[prediction] += 1
        actual[target] += 1
    f1s = []
    for label in labels:
        if not actual[label] and not predicted[label]:
            continue
        precision = true_pos[label] / predicted[label] if predicted[label] else 0.0
        recall = true_pos[label] / actual[label] if actual[label] else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    n = len(predictions)
    return Scores(right / n if n else 0.0, sum(f1s) / len(f1s) if f1s else 0.0, predicted, n)
