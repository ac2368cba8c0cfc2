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
from bot.emotion.negation import denied

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


def read_lines(path: Path) -> list[Example]:
    """Lines written for this project: label<TAB>line (a GoEmotions label), "#" comments."""
    examples = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            label, _, text = line.partition("\t")
            if label not in GOEMOTIONS or not text.strip():
                raise ValueError(f"{path}:{number}: expected a GoEmotions label<TAB>line")
            examples.append(Example(text, (label,)))
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
    chat uses as a formula: sorry, afraid, need, thanks, please, no...: the face must stay neutral),
    `denied feelings` (comments that deny a feeling: "I'm not surprised", "don't worry") and
    `surprised questions` (comments asking a question, labelled surprise or confusion: 93 rows of dev; the
    40 that end with their question are too few to tell two judges apart). Deterministic for a seed."""
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
        "denied feelings": [e for e in examples if denied(e.text)],
        "surprised questions": [
            e for e in examples if "?" in e.text and {"surprise", "confusion"} & set(gold(e, labels))
        ],
    }


# Formulas a judge must read past, none of them among the training script's (scripts/
# train_emotion_encoder.py FORMULAS): what is measured is whether the judge learnt the use, not the list.
HELD_OUT_FORMULAS = (
    "Sorry to bother you, but ",
    "Pardon me, ",
    "Many thanks. ",
    "I'm afraid that ",
    "No thanks, ",
    "Apologies, ",
    "Thanks a lot, ",
    "Please, ",
)


def formula_pairs(examples: Sequence[Example], labels: Sequence[str], seed: int = 0) -> list[tuple[str, str]]:
    """(statement, the statement after a formula) for dev's short neutral statements: a judge lets a
    formula flip the face by itself where it reads the statement neutral and the pair's second line not."""
    rng = random.Random(seed)
    pairs = []
    for example in examples:
        text = example.text.strip().rstrip(".!")
        words = len(text.split())
        if gold(example, labels) != ("neutral",) or not 4 <= words <= 20 or text[-1:] in ("?", ""):
            continue
        lead = HELD_OUT_FORMULAS[rng.randrange(len(HELD_OUT_FORMULAS))]
        body = text if text.startswith("I ") or lead.endswith(". ") else text[0].lower() + text[1:]
        pairs.append((f"{text}.", f"{lead}{body}."))
    return pairs
