"""Emotion judging: which of a persona's labels a reply shows.

`judge.EmotionJudge` is the entry point; `classifier` is the shipped text classifier, `llm_judge` the
reply model as judge, `labels` the label sets and their mapping, `smoothing` keeps the face steady.
"""

from bot.emotion.judge import EmotionJudge, EmotionResult

__all__ = ["EmotionJudge", "EmotionResult"]
