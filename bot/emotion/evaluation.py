"""GoEmotions files and the measures used to fit, tune and benchmark emotion judges.

Rows are `text<TAB>label ids<TAB>comment id`. A comment may carry several labels; mapped onto a smaller
label set it is judged right when the prediction is any of its mapped labels, and for per-label figures
(macro-F1) its gold label is the prediction when that was right, else its first mapped label.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.emotion.labels import GOEMOTIONS, projection

_NEGATION = re.compile(r"\b(?:not|no|never|nothing|nobody)\b|n't\b", re.IGNORECASE)
# Emotion words that chat mostly uses as formulas: an apology for a refusal, "I'm afraid", "I need".
_FORMULA = re.compile(
    r"\b(?:sorry|afraid|need|thanks|thank you|please|excuse me|unfortunately|no)\b", re.IGNORECASE
)


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


def dialogue_sets(
    examples: Sequence[Example], labels: Sequence[str], seed: int = 0
) -> dict[str, list[Example]]:
    """Reply-shaped sets made from labelled comments, to see how a judge reads chat rather than Reddit:
    `short` (four words or fewer), `questions`, `negations`, `long` (one comment with an emotion set
    among one to three neutral ones, labelled with its emotion) and `long neutral` (three to six neutral
    comments in a row: a long reply that shows no emotion), `formulas` (neutral comments holding a word
    chat uses as a formula: sorry, afraid, need, thanks, please, no...: the face must stay neutral) and
    `surprised questions` (questions labelled surprise or confusion). Deterministic for a seed."""
    rng = random.Random(seed)
    neutral = [e for e in examples if gold(e, labels) == ("neutral",)]
    emotional = [e for e in examples if gold(e, labels) and "neutral" not in gold(e, labels)]
    long: list[Example] = []
    for example in emotional:
        pads = rng.sample(neutral, rng.randint(1, 3))
        cut = rng.randint(0, len(pads))
        text = " ".join([p.text for p in pads[:cut]] + [example.text] + [p.text for p in pads[cut:]])
        long.append(Example(text, example.labels))
    long_neutral = [
        Example(" ".join(p.text for p in rng.sample(neutral, rng.randint(3, 6))), ("neutral",))
        for _ in range(min(len(neutral) // 3, 500))
    ]
    return {
        "short": [e for e in examples if len(e.text.split()) <= 4],
        "questions": [e for e in examples if e.text.rstrip().endswith("?")],
        "negations": [e for e in examples if _NEGATION.search(e.text)],
        "long": long,
        "long neutral": long_neutral,
        "formulas": [e for e in neutral if _FORMULA.search(e.text)],
        "surprised questions": [
            e
            for e in examples
            if e.text.rstrip().endswith("?") and {"surprise", "confusion"} & set(gold(e, labels))
        ],
    }
