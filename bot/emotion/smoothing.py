"""Keeping the face steady: a new label replaces the shown one only when the signal is clear.

Thresholds are relative to chance (1 / number of labels), so they mean the same for a persona with 3
labels as for one with all 28: a new label must have `min_lift` times the odds that chance gives it
(p / (1 - p) against c / (1 - c)), which is 0.18 for 10 labels, 0.5 for 3 and 0.07 for 28, and must lead
the shown label by `switch_lift` x chance.
"""

from __future__ import annotations

from collections.abc import Mapping

from bot.config import EmotionConfig


def smooth(probs: Mapping[str, float], previous: str | None, config: EmotionConfig) -> tuple[str, str]:
    """The label to show, and why the previous one was kept ("" when the face follows the new best)."""
    best = max(probs, key=lambda label: probs[label])
    if previous is None or previous not in probs or best == previous:
        return best, ""
    chance = 1.0 / len(probs)
    needed = config.min_lift * chance / (1.0 + (config.min_lift - 1.0) * chance)
    if probs[best] < needed:
        return previous, f"{best} only {probs[best]:.2f} < {needed:.2f}"
    margin = config.switch_lift * chance
    if probs[best] - probs[previous] < margin:
        return previous, f"{best} {probs[best]:.2f} not {margin:.2f} above {previous} {probs[previous]:.2f}"
    return best, ""
