"""Which emotion a reply shows, from the judges the config allows.

- `classifier`: the shipped text judge (fast, model-independent): the sentence encoder that reads meaning
  (encoder_judge.py) once it has loaded in the background, the TF-IDF classifier before that and wherever
  the encoder is missing, broken or switched off (`[emotion] encoder`);
- `llm`: the reply model itself, constrained to the labels (good only on capable models);
- `both`: the two combined (geometric mean of their probabilities);
- `auto`: whichever of the three scores best on a small labelled probe set (bot/emotion/data/probe.tsv)
  for the loaded model; measured once per model file in the background, one line at a time while the
  model has nothing else to do, the score so far kept across restarts, the classifier serving until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.config import EmotionConfig
from bot.emotion.classifier import TextClassifier, shipped
from bot.emotion.encoder import LoadedOnce
from bot.emotion.encoder_judge import EncoderJudge, load_shipped
from bot.emotion.labels import project, unjudgeable
from bot.emotion.llm_judge import Classifier, LLMJudge
from bot.emotion.smoothing import smooth
from bot.errors import BotError, ModelError
from bot.files import atomic_write
from bot.llm.base import Message

_log = logging.getLogger(__name__)

PROBE_FILE = Path(__file__).parent / "data" / "probe.tsv"
# The measurement is the chat's guest on the model: it asks its next probe line only once the model has
# served nobody for this long, so a turn waits for one probe line at most, and the few model calls of
# one turn are never split by probes.
QUIET_SECONDS = 1.0
POLL_SECONDS = 0.05
PROBE_SYSTEM = "You are Mira, a lighthouse keeper, in a roleplay chat. Stay in character."
MODES = ("classifier", "llm", "both")


@dataclass(frozen=True)
class EmotionResult:
    label: str  # the expression to show (after smoothing)
    raw_label: str  # the most probable label for this reply alone
    probabilities: dict[str, float]
    judge: str = "classifier"  # which judge decided: classifier, llm or both
    kept: str = ""  # why the previous face was kept instead of raw_label ("" when it was not)


def combine(first: Mapping[str, float], second: Mapping[str, float]) -> dict[str, float]:
    """Geometric mean of two distributions over the same labels, renormalised. Each is mixed with a
    little of the uniform distribution first, so one judge's zero cannot veto the other's choice."""
    n = len(first)
    mixed = {
        label: math.sqrt((0.9 * first[label] + 0.1 / n) * (0.9 * second.get(label, 0.0) + 0.1 / n))
        for label in first
    }
    total = sum(mixed.values())
    return {label: p / total for label, p in mixed.items()}


# The shipped encoder judge, loaded once per process (100 MB of RAM). load_shipped is looked up at each
# load, so that a test can put another loader in its place.
shared_encoder = LoadedOnce(lambda: load_shipped())


def probe_examples(path: Path = PROBE_FILE) -> list[tuple[str, str]]:
    """(label, roleplay line) pairs written for this project, over the 10 default labels."""
    rows = []
    for line in path.read_text("utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            label, text = line.split("\t", 1)
            rows.append((label, text))
    return rows


class EmotionJudge:
    """Judges replies for every channel; create one per engine."""

    def __init__(
        self,
        config: EmotionConfig,
        llm: Classifier | None,
        *,
        model_id: str = "",
        verdict_file: Path | None = None,
        classifier: TextClassifier | None = None,
    ) -> None:
        self.config = config
        self.classifier = classifier or shipped()
        self.llm = LLMJudge(llm) if llm is not None else None
        self.model_id = model_id
        self.verdict_file = verdict_file
        self._mode = config.judge if config.judge != "auto" else self._known_verdict()
        self._probe: asyncio.Task[str] | None = None
        self._warned: set[tuple[str, ...]] = set()
        self.encoder: EncoderJudge | None = None
        self._encoder_load: asyncio.Task[None] | None = None
        if self._mode in ("llm", "both") and self.llm is None:
            raise BotError(f"emotion.judge = {self._mode!r} needs a language model")

    @property
    def mode(self) -> str:
        """The judge in use now ("classifier" while `auto` is still measuring)."""
        return self._mode or "classifier"

    def describe(self) -> str:
        """The judge in use, for people: 'encoder (auto: measuring the model)' and the like."""
        mode = self.text_judge if self.mode == "classifier" else self.mode
        if self.mode == "both":
            mode = f"both ({self.text_judge} and the model)"
        if self.config.judge != "auto":
            return mode
        return f"{mode} (auto{': measuring the model' if self._mode is None else ''})"

    # -- the encoder ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading the sentence encoder in the background (once; a no-op when it is off). Turns
        judged meanwhile are read by the classifier: none waits for the load."""
        if self.config.encoder and self._encoder_load is None:
            self._encoder_load = asyncio.ensure_future(self._load_encoder())

    async def _load_encoder(self) -> None:
        try:
            self.encoder = await asyncio.to_thread(shared_encoder)
        except ModelError as exc:
            _log.warning("emotion judge: the sentence encoder is not used (%s); the classifier judges", exc)
            return
        _log.info(
            "emotion judge: reading meaning with the sentence encoder (%s)",
            "int8" if self.encoder.int8 else "float32",
        )

    async def encoder_ready(self) -> bool:
        """Wait for the encoder's load to end; whether it is in use."""
        self.start()
        if self._encoder_load is not None:
            await asyncio.shield(self._encoder_load)
        return self.encoder is not None

    @property
    def text_judge(self) -> str:
        """Which text judge reads replies now: "encoder" or "classifier"."""
        return "encoder" if self.encoder is not None else "classifier"

    # -- judging --------------------------------------------------------------------------------------

    def classify_text(self, text: str, labels: Sequence[str], names: Sequence[str] = ()) -> dict[str, float]:
        """The text judge's probabilities over `labels` for a reply (roleplay markup stripped): the
        encoder's once it has loaded, the classifier's before."""
        key = tuple(labels)
        if key not in self._warned:
            self._warned.add(key)
            missing = unjudgeable(labels)
            if missing:
                _log.warning("the emotion judge never picks %s (no GoEmotions label maps there)", missing)
        reader: EncoderJudge | TextClassifier = self.encoder or self.classifier
        return project(reader.read_reply(text, names), labels)

    async def judge(
        self,
        *,
        name: str,
        labels: Sequence[str],
        reply: str,
        messages: Sequence[Message] = (),
        previous: str | None = None,
        speakers: Sequence[str] = (),
        session: Hashable = None,
    ) -> EmotionResult:
        """The face for a reply: the judges' probabilities, then smoothing against the previous face."""
        if self._mode is None:
            self._start_probe()
        self.start()
        mode = self.mode
        probs: dict[str, float] | None = None
        if mode in ("classifier", "both"):
            if mode == "classifier":
                mode = self.text_judge
            probs = await asyncio.to_thread(self.classify_text, reply, labels, [name, *speakers])
        if mode in ("llm", "both"):
            assert self.llm is not None
            judged = await self.llm.probabilities(messages, reply, name, labels, session=session)
            probs = judged if probs is None else combine(probs, judged)
        assert probs is not None
        raw = max(probs, key=lambda label: probs[label])
        label, kept = smooth(probs, previous, self.config)
        return EmotionResult(label, raw, probs, mode, kept)

    # -- auto: measure once per model -----------------------------------------------------------------

    def _known_verdict(self) -> str | None:
        # Without a model, or without a file to remember the verdict in (tests, benchmarks), there is
        # nothing to measure: the classifier judges.
        if self.llm is None or self.verdict_file is None:
            return "classifier"
        verdict = self._entry().get("judge")
        return verdict if verdict in MODES else None

    def _verdicts(self) -> dict[str, Any]:
        """The verdict file: model id -> its verdict, or the measurement's progress so far."""
        if self.verdict_file is None or not self.verdict_file.is_file():
            return {}
        try:
            verdicts = json.loads(self.verdict_file.read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        return verdicts if isinstance(verdicts, dict) else {}

    def _entry(self) -> dict[str, Any]:
        entry = self._verdicts().get(self.model_id)
        return entry if isinstance(entry, dict) else {}

    def _start_probe(self) -> None:
        if self._probe is None:
            self._probe = asyncio.ensure_future(self.measure())
            self._probe.add_done_callback(self._probe_done)

    def _probe_done(self, task: asyncio.Task[str]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # Whatever went wrong, the chat goes on with the judge that needs nothing from the model.
            _log.warning(
                "emotion judge: measuring the model failed (%s); using the classifier", task.exception()
            )
            self._mode = "classifier"

    async def measure(self) -> str:
        """Score each judge on the probe set with the loaded model, adopt the best and remember it. Each
        line waits for the model to be idle, and the score so far is kept after each line, so a restart
        goes on where the last run stopped."""
        examples = probe_examples()
        labels = [label for label in dict.fromkeys(label for label, _ in examples)]
        probe_set = hashlib.sha256(json.dumps(examples).encode()).hexdigest()[:16]
        done, right = self._progress(probe_set, len(examples))
        for index, (label, text) in enumerate(examples[done:], done):
            await self._model_is_quiet()
            by_text = self.classify_text(text, labels, ["Mira"])
            options = {"classifier": by_text}
            if self.llm is not None:
                messages: list[Message] = [
                    {"role": "system", "content": PROBE_SYSTEM},
                    {"role": "user", "content": "Hello?"},
                ]
                try:
                    by_llm = await self.llm.probabilities(messages, text, "Mira", labels, session="probe")
                except BotError as exc:
                    _log.warning(
                        "emotion judge: the model could not be probed (%s); using the classifier", exc
                    )
                    self._mode = "classifier"
                    return self._mode
                options |= {"llm": by_llm, "both": combine(by_text, by_llm)}
            for mode, probs in options.items():
                right[mode] += max(probs, key=lambda lab: probs[lab]) == label
            self._save({"progress": {"set": probe_set, "done": index + 1, "right": right}})
        # Ties go to the cheaper judge: the classifier, then the LLM alone.
        best = max(MODES, key=lambda mode: (right[mode], -MODES.index(mode)))
        summary = ", ".join(f"{mode} {right[mode]}/{len(examples)}" for mode in MODES)
        _log.info(
            "emotion judge: auto chose %s for %s (probe: %s)", best, self.model_id or "the model", summary
        )
        self._mode = best
        self._save({"judge": best, "probe": {m: f"{right[m]}/{len(examples)}" for m in MODES}})
        return best

    def _progress(self, probe_set: str, total: int) -> tuple[int, dict[str, int]]:
        """Lines already measured and their score, from an earlier run on the same probe set."""
        fresh = (0, dict.fromkeys(MODES, 0))
        progress = self._entry().get("progress")
        if not isinstance(progress, dict) or progress.get("set") != probe_set:
            return fresh
        done, right = progress.get("done"), progress.get("right")
        if not (isinstance(done, int) and 0 <= done <= total and isinstance(right, dict)):
            return fresh
        scores = {mode: right.get(mode) for mode in MODES}
        if not all(isinstance(v, int) and 0 <= v <= done for v in scores.values()):
            return fresh
        return done, {mode: int(v or 0) for mode, v in scores.items()}

    async def _model_is_quiet(self) -> None:
        """Return once no request has kept the model busy for QUIET_SECONDS."""
        loop = asyncio.get_running_loop()
        quiet_since: float | None = None
        while True:
            backend = self.llm.llm if self.llm is not None else None
            busy = int(getattr(backend, "pending", 0) or 0) > 0
            now = loop.time()
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= QUIET_SECONDS:
                return
            await asyncio.sleep(POLL_SECONDS)

    def _save(self, entry: dict[str, Any]) -> None:
        """This model's entry in the verdict file (the other models' stay)."""
        if self.verdict_file is None or not self.model_id:
            return
        verdicts = self._verdicts()
        verdicts[self.model_id] = entry
        try:
            self.verdict_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.verdict_file, json.dumps(verdicts, indent=1).encode("utf-8"))
        except OSError as exc:
            _log.warning("emotion judge: cannot save the verdict to %s: %s", self.verdict_file, exc)

    async def close(self) -> None:
        if self._encoder_load is not None and not self._encoder_load.done():
            # The load runs on a worker thread and cannot be stopped; it finishes for the next engine.
            self._encoder_load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._encoder_load
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError, BotError):
                await self._probe
