from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path

import pytest

from bot.config import DEFAULT_LABELS, EmotionConfig
from bot.emotion import EmotionJudge
from bot.emotion.classifier import shipped
from bot.emotion.encoder_judge import SITUATIONS
from bot.emotion.evaluation import (
    HELD_OUT_FORMULAS,
    Example,
    formula_pairs,
    gold,
    read_goemotions,
    read_lines,
    score,
)
from bot.emotion.judge import combine, probe_examples
from bot.emotion.labels import GOEMOTIONS, TO_DEFAULT, canonical, project, projection, unjudgeable
from bot.emotion.llm_judge import answer_variants, calibrate, classification_messages, fold_variants
from bot.emotion.negation import DENIED, damp, denied
from bot.emotion.smoothing import smooth
from bot.emotion.text import calmest, formula_free, strip_roleplay, without_formula_sentences
from bot.llm import TURN_MARKER, answer_end_tokens

from .support.configs import REPO
from .support.parsing import parse

CONFIG = EmotionConfig(judge="classifier", min_lift=2.0, switch_lift=0.5, encoder=False)
DEV = REPO.parent / "shared" / "goemotions" / "dev.tsv"


def best(probs: dict[str, float]) -> str:
    return max(probs, key=lambda label: probs[label])


def classifier_judge() -> EmotionJudge:
    return EmotionJudge(CONFIG, None)


# -- labels ---------------------------------------------------------------------------------------------


def test_every_goemotions_label_has_a_default_face() -> None:
    assert set(TO_DEFAULT) == set(GOEMOTIONS) and set(TO_DEFAULT.values()) == set(DEFAULT_LABELS)
    assert projection(DEFAULT_LABELS) == TO_DEFAULT
    assert projection(GOEMOTIONS) == {g: g for g in GOEMOTIONS}  # all 28: each its own face


def test_subsets_and_synonyms_fall_back_to_the_nearest_face() -> None:
    small = projection(["neutral", "joy", "sadness"])
    assert small["amusement"] == "joy" and small["love"] == "joy" and small["gratitude"] == "joy"
    assert small["embarrassment"] == "sadness" and small["grief"] == "sadness"
    assert small["anger"] == "neutral"  # no angry face: the calm one, never a wrong emotion
    named = projection(["happy", "sad", "angry", "calm"])
    assert named["joy"] == "happy" and named["annoyance"] == "angry" and named["neutral"] == "calm"
    assert canonical("Embarrassed") == "embarrassment"
    assert unjudgeable(["joy", "smug", "neutral"]) == ["smug"]
    probs = project({"amusement": 0.5, "joy": 0.25, "anger": 0.25}, ["joy", "neutral"])
    assert probs == {"joy": 0.75, "neutral": 0.25}


def test_roleplay_markup_is_stripped_but_actions_kept() -> None:
    text = "Mira: *She laughs softly.* (OOC: brb, dinner) Hello <@123456789>! ((ooc note)) Joy is here."
    assert strip_roleplay(text, ["Joy"]) == "She laughs softly. Hello ! is here."


# -- the shipped classifier -----------------------------------------------------------------------------


def test_classifier_reads_roleplay_replies() -> None:
    judge = classifier_judge()
    examples = probe_examples()
    predictions = [best(judge.classify_text(text, DEFAULT_LABELS, ["Mira"])) for _, text in examples]
    result = score(predictions, [(label,) for label, _ in examples], DEFAULT_LABELS)
    # Written for this project, one clear emotion each: a judge that ignores the text (uniform
    # probabilities, one label for everything) scores 0.10 here.
    assert result.accuracy >= 0.6, result
    assert result.largest_share <= 0.3, result.predicted
    assert len(result.predicted) >= 8  # nearly every face is used


# Replies a roleplay chat is full of, each with the face it should show (written for this project).
DIALOGUE = [
    ("Where did you sail from?", "neutral"),  # a question is not confusion
    ("Do you want some tea?", "neutral"),
    ("Ok.", "neutral"),  # an acknowledgement is not joy
    ("Sure.", "neutral"),
    ("*blushes*", "embarrassment"),  # the action verbs of roleplay
    ("*sobs*", "sadness"),
    ("*trembles*", "fear"),
    ("*gasps*", "surprise"),
    ("*grins*", "joy"),
    ("*glares*", "anger"),
    ("*giggles*", "amusement"),
    ("*He sobbed quietly.*", "sadness"),
    ("😂", "amusement"),  # emoji
    ("😢", "sadness"),
    ("😡", "anger"),
    ("😱", "fear"),
    ("❤️", "love"),
    ("😳", "embarrassment"),
]


@pytest.mark.parametrize(("reply", "face"), DIALOGUE)
def test_the_classifier_reads_dialogue(reply: str, face: str) -> None:
    assert best(classifier_judge().classify_text(reply, DEFAULT_LABELS)) == face


@pytest.mark.parametrize(
    ("sentence", "faces"),
    [
        ("I'm not scared of storms.", {"fear"}),
        ("I’m not really that scared.", {"fear"}),  # curly apostrophe; words between
        ("You don't have to be nervous.", {"fear"}),
        ("There's nothing to worry about.", {"fear"}),
        ("I'm not upset.", {"sadness", "anger"}),  # a word of two feelings denies both
        ("I'm not sad, I'm furious!", {"sadness"}),  # anger stated, not denied
        ("I'm not sad. I'm sad.", set()),  # the same feeling stated too: not denied
        ("I've never been so happy!", set()),
        ("Nothing makes me more excited.", set()),
        ("I can't stop laughing!", set()),
        ("I couldn't help smiling.", set()),
        ("Isn't it funny?", set()),
        ("Why aren't you happy?", {"joy"}),
        ("You won't believe how happy I am!", set()),
        ("I don't know if she's scared.", set()),
        ("I'm not gonna lie, I'm happy.", set()),
        ("Not happy. Not even a little.", {"joy"}),
    ],
)
def test_a_denied_feeling_is_found_in_its_clause(sentence: str, faces: set[str]) -> None:
    assert denied(sentence) == faces


def test_a_denied_feeling_is_damped_in_the_reading_and_nothing_else() -> None:
    reading = dict.fromkeys(GOEMOTIONS, 0.01) | {"fear": 0.5, "nervousness": 0.2, "neutral": 0.1}
    damped = damp(reading, frozenset({"fear"}))
    assert abs(sum(damped.values()) - 1.0) < 1e-9
    assert damped["fear"] / damped["neutral"] == pytest.approx(DENIED * 5)
    assert damped["nervousness"] / damped["joy"] == pytest.approx(DENIED * 20)
    assert damped["joy"] / damped["neutral"] == pytest.approx(0.1)
    assert damp(reading, frozenset()) == reading


def test_negation_curly_apostrophes_and_long_replies() -> None:
    judge = classifier_judge()

    def read(text: str) -> str:
        return best(judge.classify_text(text, DEFAULT_LABELS))

    assert read("I'm so happy!") == "joy" and read("I'm not happy about this.") != "joy"
    assert read("I am so angry.") == "anger" and read("I am not angry.") != "anger"
    straight = judge.classify_text("I don't know what you mean, I can't", DEFAULT_LABELS)
    assert judge.classify_text("I don’t know what you mean, I can’t", DEFAULT_LABELS) == straight
    calm = (
        "The kettle is on the stove. The lamp turns. The wind comes from the west. The tide is low "
        "tonight. The gulls sleep on the rocks. We should check the lamp at midnight. Good news, the "
        "nets are mended and the boat is fine."
    )
    assert read(calm) == "neutral"  # many sentences do not add up to joy
    assert read("I am so sad. " + "The boat left at dawn and the nets were mended by noon. " * 5) == "sadness"


@pytest.mark.skipif(not DEV.is_file(), reason="GoEmotions dev split not present beside the repository")
def test_long_replies_are_read_a_sentence_at_a_time() -> None:
    """On replies built from dev (several neutral comments in a row; one emotional comment among neutral
    ones), pooling the sentences beats reading the reply as one text."""
    import dataclasses

    from bot.emotion.evaluation import dialogue_sets

    sets = dialogue_sets(read_goemotions(DEV, limit=2000), DEFAULT_LABELS)
    pooled = shipped()
    assert pooled.pool_power > 0  # chosen with the fit and shipped in the model file
    whole = dataclasses.replace(pooled, pool_power=0.0)

    def accuracy(model, examples) -> float:
        labels = list(DEFAULT_LABELS)
        predictions = [best(project(model.read_reply(e.text), labels)) for e in examples]
        return score(predictions, [gold(e, labels) for e in examples], labels).accuracy

    calm, mixed = sets["long neutral"], sets["long"]
    assert accuracy(pooled, calm) > accuracy(whole, calm) + 0.1
    assert accuracy(pooled, mixed) >= accuracy(whole, mixed)


def test_politeness_formulas_are_read_past_and_meant_words_kept() -> None:
    assert formula_free("Sorry, we don't deliver on Sundays.") == "We don't deliver on Sundays."
    assert formula_free("Sorry to bother you, but the shop is shut.") == "The shop is shut."
    assert formula_free("I'm afraid the ferry left.") == "The ferry left."
    for meant in (
        "I'm afraid of the dark.",
        "I'm so sorry, I didn't mean it.",
        "Thank you!",
        "No.",
        "Sorry.",
    ):
        assert formula_free(meant) is None
    assert without_formula_sentences(["Thanks.", "The train leaves."]) == ["The train leaves."]
    assert without_formula_sentences(["Sorry."]) == ["Sorry."]  # nothing else said: it is the reply


def test_a_formula_can_calm_a_sentence_but_never_set_its_face() -> None:
    """Each sentence is read with and without its formula: without it, unless only with it is calm."""
    calm = {"Sorry, it is closed.": True, "It is closed.": False}  # the formula calms a terse line
    calm |= {"Sorry, you broke it.": False, "You broke it.": True}  # the formula alone would set a face
    calm |= {"Thanks, I hate it.": False, "I hate it.": False}  # not calm either way: read without it
    asked: list[list[str]] = []

    def read(texts: list[str]) -> list[str]:
        asked.append(texts)
        return texts

    parts = ["Sorry, it is closed.", "Sorry, you broke it.", "Thanks, I hate it.", "Fine."]
    chosen = calmest(parts, read, lambda text: calm.get(text, True))
    assert chosen == ["Sorry, it is closed.", "You broke it.", "I hate it.", "Fine."]
    # the reply whole without its formulas, then as written; a reply with none is read once
    assert asked == [["It is closed.", "You broke it.", "I hate it.", "Fine."], parts]
    assert calmest(["Fine.", "Go."], read, lambda text: True) == ["Fine.", "Go."] and len(asked) == 3
    # every sentence with a formula calm without it: nothing the formulas could change, read once
    assert calmest(["Sorry, it is closed.", "I hate it."], read, lambda text: text != "I hate it.") == [
        "It is closed.",
        "I hate it.",
    ]
    assert len(asked) == 4


def test_the_situations_measured_are_none_the_encoder_was_trained_with() -> None:
    trained = read_lines(SITUATIONS)
    measured = read_lines(REPO / "benchmarks" / "situations.tsv")

    def key(example: Example) -> str:
        return " ".join(strip_roleplay(example.text).lower().strip(" .!?").split())

    assert len(trained) >= 100 and len(measured) >= 50
    assert not {key(e) for e in trained} & {key(e) for e in measured}
    # Both hold events of every kind a face shows, and plain statements.
    for rows in (trained, measured):
        assert {"fear", "sadness", "joy", "anger", "surprise", "embarrassment", "neutral"} <= {
            TO_DEFAULT[e.labels[0]] for e in rows
        }


def test_written_lines_with_a_label_that_is_not_goemotions_are_refused(tmp_path: Path) -> None:
    lines = tmp_path / "lines.tsv"
    lines.write_text("# a comment\nfear\tThe door opened.\nscared\tThe lights went out.\n", "utf-8")
    with pytest.raises(ValueError, match=r"lines\.tsv:3: expected a GoEmotions label"):
        read_lines(lines)
    lines.write_text("fear\tThe door opened.\n\n# done\n", "utf-8")
    assert read_lines(lines) == [Example("The door opened.", ("fear",))]


def test_formula_pairs_use_formulas_the_encoder_was_not_trained_with() -> None:
    script = (REPO / "scripts" / "train_emotion_encoder.py").read_text()
    trained = next(
        ast.literal_eval(node.value)
        for node in ast.walk(parse(script))
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "FORMULAS"
    )
    assert HELD_OUT_FORMULAS and not {f.strip(" ,.").lower() for f in HELD_OUT_FORMULAS} & {
        f.strip(" ,.").lower() for f in trained
    }
    rows = [Example("The bus stops by the old mill.", ("neutral",)), Example("I hate it.", ("anger",))]
    pairs = formula_pairs(rows, DEFAULT_LABELS)
    assert len(pairs) == 1 and pairs[0][0] == "The bus stops by the old mill."
    led = pairs[0][1]
    assert led.lower().endswith("the bus stops by the old mill.")
    assert led[: -len(pairs[0][0])] in HELD_OUT_FORMULAS


def test_action_verbs_are_known_in_every_form() -> None:
    from bot.emotion.lexicon import ACTION_WORDS, verb_forms

    assert verb_forms("sob") >= {"sobs", "sobbed", "sobbing"}
    assert verb_forms("cry") >= {"cries", "cried", "crying"}
    assert verb_forms("giggle") >= {"giggles", "giggled", "giggling"}
    assert verb_forms("blush") >= {"blushes", "blushed", "blushing"}
    assert ACTION_WORDS["giggles"] == ("haha", "funny")


@pytest.mark.skipif(not DEV.is_file(), reason="GoEmotions dev split not present beside the repository")
def test_classifier_on_goemotions_dev() -> None:
    judge = classifier_judge()
    examples = read_goemotions(DEV, limit=1500)
    predictions = [best(judge.classify_text(e.text, DEFAULT_LABELS)) for e in examples]
    result = score(predictions, [gold(e, DEFAULT_LABELS) for e in examples], DEFAULT_LABELS)
    assert result.accuracy >= 0.55 and result.largest_share <= 0.5, result


def test_classifier_probabilities_are_a_distribution_over_28_labels() -> None:
    probs = shipped().probabilities("thank you so much, this made my day")
    assert set(probs) == set(GOEMOTIONS) and abs(sum(probs.values()) - 1) < 1e-5
    assert best(probs) == "gratitude"
    empty = shipped().probabilities("")  # nothing known: the bias alone, still a distribution
    assert abs(sum(empty.values()) - 1) < 1e-5


def test_score_counts_any_mapped_label_as_right() -> None:
    result = score(["joy", "anger", "neutral"], [("joy", "love"), ("sadness",), ("neutral",)], DEFAULT_LABELS)
    assert result.accuracy == pytest.approx(2 / 3) and result.predicted["anger"] == 1


# -- smoothing and combining ----------------------------------------------------------------------------


def test_smoothing_scales_with_the_number_of_labels() -> None:
    assert smooth({"joy": 0.5, "anger": 0.5}, None, CONFIG) == ("joy", "")  # first turn: the best
    # Twice chance's odds: 0.50 for 3 labels, 0.18 for 10, 0.07 for 28.
    label, why = smooth({"joy": 0.45, "anger": 0.25, "fear": 0.30}, "fear", CONFIG)
    assert label == "fear" and why == "joy only 0.45 < 0.50"
    assert smooth({"joy": 0.55, "anger": 0.25, "fear": 0.20}, "fear", CONFIG) == ("joy", "")
    ten = dict.fromkeys(DEFAULT_LABELS, 0.8 / 9)
    ten["fear"] = 0.2
    assert smooth(ten, "joy", CONFIG) == ("fear", "")
    many = dict.fromkeys(GOEMOTIONS, 0.92 / 27)
    many["fear"] = 0.08
    assert smooth(many, "joy", CONFIG) == ("fear", "")
    many["fear"] = 0.06
    assert smooth(many, "joy", CONFIG)[0] == "joy"
    # Clear, but barely ahead of the face shown (0.5 x chance = 0.17 for 3 labels): keep it.
    label, why = smooth({"joy": 0.40, "anger": 0.52, "fear": 0.08}, "joy", CONFIG)
    assert label == "joy" and why == "anger 0.52 not 0.17 above joy 0.40"
    assert smooth({"joy": 0.6, "anger": 0.4}, "smug", CONFIG) == ("joy", "")  # unknown previous face


def test_combining_judges_lets_neither_veto() -> None:
    combined = combine({"joy": 1.0, "anger": 0.0}, {"joy": 0.2, "anger": 0.8})
    assert abs(sum(combined.values()) - 1) < 1e-9 and 0 < combined["anger"] < combined["joy"]


async def test_judge_follows_the_text_and_explains_a_kept_face() -> None:
    judge = classifier_judge()
    laugh = await judge.judge(
        name="Mira", labels=DEFAULT_LABELS, reply="*She bursts out laughing.* Haha, LOL!"
    )
    assert (laugh.label, laugh.raw_label, laugh.judge, laugh.kept) == (
        "amusement",
        "amusement",
        "classifier",
        "",
    )
    scared = await judge.judge(
        name="Mira",
        labels=DEFAULT_LABELS,
        reply="I'm terrified. Something is on the stairs!",
        previous="amusement",
    )
    assert scared.label == "fear"
    strict = EmotionJudge(
        EmotionConfig(judge="classifier", min_lift=9.0, encoder=False), None
    )  # needs p >= 0.5
    shrug = await strict.judge(name="Mira", labels=DEFAULT_LABELS, reply="Well.", previous="fear")
    assert shrug.label == "fear" and shrug.raw_label != "fear" and shrug.kept.startswith(shrug.raw_label)


# -- the LLM judge ------------------------------------------------------------------------------------


def test_question_lists_the_labels_and_extends_the_conversation() -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    out = classification_messages(messages, "reply", "Mira", ["joy", "anger"])
    assert out[:2] == messages and out[2] == {"role": "assistant", "content": "reply"}
    assert out[3]["role"] == "user" and "Mira" in out[3]["content"] and "joy, anger" in out[3]["content"]
    variants = answer_variants(["joy", "anger"])
    assert variants == {" joy": "joy", " Joy": "joy", " anger": "anger", " Anger": "anger"}
    probs = fold_variants({" joy": 0.2, " Joy": 0.4, " anger": 0.1, " Anger": 0.3}, variants)
    assert probs["joy"] == pytest.approx(0.6)
    assert calibrate({"joy": 0.8, "anger": 0.2}, {"joy": 0.8, "anger": 0.2}) == pytest.approx(
        {"joy": 0.5, "anger": 0.5}
    )


@pytest.mark.slow
def test_answer_ends_include_the_templates_end_of_turn(model) -> None:
    vocab = model._llm
    [im_end] = vocab.tokenize(b"<|im_end|>", add_bos=False, special=True)
    assert im_end in model._answer_ends  # ChatML, the bundled model's template
    # A template whose turns end with a token other than EOS (as Llama 3's <|eot_id|> does); this
    # vocabulary's <|endoftext|> stands in for it.
    [other] = vocab.tokenize(b"<|endoftext|>", add_bos=False, special=True)
    assert other != vocab.token_eos()
    llama3_like = f"<|im_start|>assistant\n\n{TURN_MARKER}<|endoftext|>"
    assert other in answer_end_tokens(vocab, llama3_like)
    assert other not in answer_end_tokens(vocab, f"<|im_start|>assistant\n{TURN_MARKER}<|im_end|>")


@pytest.mark.slow
async def test_llm_scores_whole_labels_from_the_text(model) -> None:
    def prompt(word: str) -> str:
        return model.render([{"role": "user", "content": f"Repeat exactly one word: {word}"}])

    # " Sadness" is " Sad" + "ness": only scoring every token and then the end of the answer tells
    # the two apart (with the first token alone, " Sad" always wins).
    options = [" Sad", " Sadness", " Nervous", " Nervousness", " anger"]
    for word in ("Sad", "Sadness", "Nervous", "Nervousness", "anger"):
        probs = await model.classify(prompt(word), options, session="t")
        assert best(probs) == f" {word}", (word, probs)


@pytest.mark.slow
async def test_auto_measures_once_and_remembers(model, tmp_path: Path, monkeypatch) -> None:
    import bot.emotion.judge as judge_module

    few = probe_examples()[::4]  # ten lines: enough to exercise the measurement
    monkeypatch.setattr(judge_module, "probe_examples", lambda: few)
    verdicts = tmp_path / "emotion-judge.json"
    config = EmotionConfig(judge="auto", encoder=False)
    judge = EmotionJudge(config, model, model_id="smollm", verdict_file=verdicts)
    assert judge.mode == "classifier"  # until measured
    assert judge.describe() == "classifier (auto: measuring the model)"
    first = await judge.judge(name="Mira", labels=DEFAULT_LABELS, reply="Haha, that's hilarious!")
    assert first.judge == "classifier"
    assert judge._probe is not None
    chosen = await asyncio.wait_for(judge._probe, 300)
    saved = json.loads(verdicts.read_text())["smollm"]
    assert saved["judge"] == chosen == judge.mode and set(saved["probe"]) == {"classifier", "llm", "both"}
    assert judge.describe() == f"{chosen} (auto)"
    again = EmotionJudge(config, model, model_id="smollm", verdict_file=verdicts)
    assert again.mode == chosen and again._mode == chosen  # remembered: no second measurement
    other = EmotionJudge(config, model, model_id="another model", verdict_file=verdicts)
    assert other._mode is None


@pytest.mark.slow
async def test_a_failed_measurement_leaves_the_classifier_judging(
    model, tmp_path: Path, monkeypatch, caplog
) -> None:
    async def broken(*_args, **_kwargs):
        raise RuntimeError("the model fell over")

    monkeypatch.setattr(model, "classify", broken)
    judge = EmotionJudge(
        EmotionConfig(judge="auto", encoder=False), model, model_id="m", verdict_file=tmp_path / "v.json"
    )
    await judge.judge(name="Mira", labels=DEFAULT_LABELS, reply="Haha!")
    assert judge._probe is not None
    with pytest.raises(RuntimeError):
        await judge._probe
    await asyncio.sleep(0)  # the done-callback runs on the next loop iteration
    assert judge.mode == "classifier" and judge._mode == "classifier"
    assert "measuring the model failed (the model fell over)" in caplog.text
    assert not (tmp_path / "v.json").exists()  # nothing remembered: the next start measures again


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["llm", "both"])
async def test_every_judge_runs_in_real_turns(config, mode: str) -> None:
    import dataclasses

    from bot.core.app import open_engine

    config = dataclasses.replace(config, emotion=dataclasses.replace(config.emotion, judge=mode))
    async with open_engine(config) as engine:
        assert engine.judge.mode == mode
        for n in range(2):
            result = await engine.turn(3, "Sam", f"Tell me a story. ({n})")
            emotion = result.emotion
            assert emotion.judge == mode and emotion.label in DEFAULT_LABELS
            assert abs(sum(emotion.probabilities.values()) - 1) < 1e-6
            assert result.image.path is not None and result.image.path.name == f"{emotion.label}.png"


@pytest.mark.slow
async def test_llm_judge_reads_the_reply(model, monkeypatch) -> None:
    from bot.emotion.llm_judge import PRIME, LLMJudge
    from bot.llm import unmarked

    asked: list[str] = []
    real = model.classify

    async def spy(prompt, options, *, session=None):
        asked.append(prompt)
        return await real(prompt, options, session=session)

    monkeypatch.setattr(model, "classify", spy)
    judge = LLMJudge(model)
    messages = [{"role": "system", "content": "You are Mira."}, {"role": "user", "content": "Hi"}]
    laugh = await judge.probabilities(
        messages, "Hahaha, that is hilarious!", "Mira", DEFAULT_LABELS, session="j"
    )
    cry = await judge.probabilities(messages, "I am so sad, I cannot stop crying.", "Mira", DEFAULT_LABELS)
    question = unmarked(asked[0])
    assert "Hahaha, that is hilarious!" in question and question.endswith(PRIME)
    assert all(label in question for label in DEFAULT_LABELS)  # the labels are listed in the question
    # The answer depends on the reply. Only that: the 135M model barely tells emotions apart (its
    # probabilities move by about 0.002), which is why `auto` measures it and picks the classifier.
    assert max(abs(laugh[label] - cry[label]) for label in DEFAULT_LABELS) > 1e-4


# Where each default label's emotion goes when a persona lacks it, written out here (not read from the
# module): the broader label of GoEmotions' grouping, then neutral, and never a different emotion.
BROADER = {"amusement": "joy", "love": "joy", "embarrassment": "sadness", "confusion": "surprise"}


def test_a_missing_label_falls_back_to_its_broader_one_never_to_another_emotion() -> None:
    import itertools

    others = [label for label in DEFAULT_LABELS if label != "neutral"]
    for size in range(len(others) + 1):
        for kept in itertools.combinations(others, size):
            labels = ["neutral", *kept]
            mapping = projection(labels)
            for goemotion in GOEMOTIONS:
                group = TO_DEFAULT[goemotion]
                allowed = [group, BROADER.get(group, group), "neutral"]
                expected = next(label for label in allowed if label in labels)
                assert mapping[goemotion] == expected, (goemotion, labels)
    # The case named in the README: confusion shows surprise, then neutral; never fear.
    assert projection(["neutral", "surprise", "fear"])["confusion"] == "surprise"
    assert projection(["neutral", "fear"])["confusion"] == "neutral"


def recording(judge, monkeypatch, events: list[tuple[str, str]], ended: asyncio.Event):
    """Record when each probe line asks the model (the LLM judge, around its real calls)."""
    real = judge.llm.probabilities

    async def probabilities(*args, **kwargs):
        events.append(("probe", "start"))
        try:
            return await real(*args, **kwargs)
        finally:
            events.append(("probe", "end"))
            ended.set()

    monkeypatch.setattr(judge.llm, "probabilities", probabilities)


@pytest.mark.slow
async def test_auto_yields_the_model_to_a_chat_turn(model, tmp_path: Path, monkeypatch) -> None:
    """A turn that arrives while `auto` measures waits for one probe line at most: no probe line starts
    while the turn's model calls run, also between its two calls."""
    import bot.emotion.judge as judge_module

    monkeypatch.setattr(judge_module, "probe_examples", lambda: probe_examples()[::4])
    events: list[tuple[str, str]] = []
    ended = asyncio.Event()
    judge = EmotionJudge(
        EmotionConfig(judge="auto", encoder=False), model, model_id="m", verdict_file=tmp_path / "v.json"
    )
    recording(judge, monkeypatch, events, ended)
    try:
        await judge.judge(name="Mira", labels=DEFAULT_LABELS, reply="Haha!")  # starts measuring
        await ended.wait()  # the first probe line has been asked
        events.append(("turn", "start"))
        prompt = model.render([{"role": "user", "content": "Tell me about the lighthouse."}])
        for _ in range(2):  # a turn's model calls: the reply, then (in a cast) who speaks next
            generation = model.generate(prompt, max_tokens=16, session="chat")
            async for _chunk in generation.chunks():
                pass
        events.append(("turn", "end"))
        during = events[events.index(("turn", "start")) : events.index(("turn", "end"))]
        assert ("probe", "start") not in during, events
        assert await asyncio.wait_for(judge._probe, 300) in ("classifier", "llm", "both")  # type: ignore[arg-type]
    finally:
        await judge.close()


@pytest.mark.slow
async def test_auto_goes_on_where_it_stopped_after_a_restart(model, tmp_path: Path, monkeypatch) -> None:
    import bot.emotion.judge as judge_module

    few = probe_examples()[::4]  # ten lines
    monkeypatch.setattr(judge_module, "probe_examples", lambda: few)
    monkeypatch.setattr(judge_module, "QUIET_SECONDS", 0.1)
    events: list[tuple[str, str]] = []
    ended = asyncio.Event()
    verdicts = tmp_path / "emotion-judge.json"
    first = EmotionJudge(
        EmotionConfig(judge="auto", encoder=False), model, model_id="m", verdict_file=verdicts
    )
    recording(first, monkeypatch, events, ended)
    await first.judge(name="Mira", labels=DEFAULT_LABELS, reply="Haha!")
    while events.count(("probe", "end")) < 3:
        ended.clear()
        await ended.wait()
    await first.close()  # the chat is closed mid-measurement
    progress = json.loads(verdicts.read_text())["m"]["progress"]
    assert 1 <= progress["done"] < len(few)
    asked = progress["done"]
    again = EmotionJudge(
        EmotionConfig(judge="auto", encoder=False), model, model_id="m", verdict_file=verdicts
    )
    assert again._mode is None  # not decided yet: it measures on
    lines: list[str] = []
    real = again.classify_text
    monkeypatch.setattr(
        again, "classify_text", lambda text, *a, **k: lines.append(text) or real(text, *a, **k)
    )
    chosen = await again.measure()
    assert lines == [text for _, text in few[asked:]]  # only the lines not yet measured
    saved = json.loads(verdicts.read_text())["m"]
    assert saved["judge"] == chosen and "progress" not in saved
    assert all(score.endswith(f"/{len(few)}") for score in saved["probe"].values())
