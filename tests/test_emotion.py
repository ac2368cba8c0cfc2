from __future__ import annotations

from bot.config import EmotionConfig
from bot.emotion import answer_variants, classification_messages, fold_variants, smooth

CONFIG = EmotionConfig(min_confidence=0.35, switch_margin=0.10)


def test_variants_fold_into_labels() -> None:
    variants = answer_variants(["joy", "anger"])
    assert variants == {"joy": "joy", "Joy": "joy", "anger": "anger", "Anger": "anger"}
    probs = fold_variants({"joy": 0.2, "Joy": 0.4, "anger": 0.1, "Anger": 0.3}, variants)
    assert abs(probs["joy"] - 0.6) < 1e-9 and abs(probs["anger"] - 0.4) < 1e-9


def test_smoothing_keeps_the_face_on_weak_signals() -> None:
    assert smooth({"joy": 0.5, "anger": 0.5}, None, CONFIG) == "joy"  # first turn: the best
    assert smooth({"joy": 0.3, "anger": 0.25, "fear": 0.45}, "joy", CONFIG) == "fear"
    assert smooth({"joy": 0.2, "anger": 0.3, "fear": 0.5}, "anger", CONFIG) == "fear"
    # Weak winner: keep the previous expression.
    assert smooth({"joy": 0.3, "anger": 0.34, "fear": 0.36}, "joy", CONFIG) == "joy"
    # Strong enough, but barely ahead of the previous one: keep it.
    assert smooth({"joy": 0.38, "anger": 0.45, "fear": 0.17}, "joy", CONFIG) == "joy"
    # A previous label the persona no longer has is ignored.
    assert smooth({"joy": 0.6, "anger": 0.4}, "smug", CONFIG) == "joy"


def test_question_extends_the_replys_conversation() -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    out = classification_messages(messages, "reply", "Mira")
    assert out[:2] == messages and out[2] == {"role": "assistant", "content": "reply"}
    assert out[3]["role"] == "user" and "Mira" in out[3]["content"]
