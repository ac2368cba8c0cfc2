"""`python -m bot bench emotion`: how well each emotion judge reads GoEmotions' dev split mapped onto the
10 default labels, next to always-neutral and a keyword lexicon; the sentence encoder and the keyword
classifier side by side on reply-shaped sets built from dev, with their time per judgement (p50/p95),
the encoder's load time and memory; and what each judge costs next to a 60-token reply on the loaded
model."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from unittest import mock

from benchmarks.common import load_average, loaded_model, machine
from bot.config import DEFAULT_LABELS, Config
from bot.core.prompt import PromptBuilder, Turn
from bot.emotion import negation
from bot.emotion.encoder_judge import EncoderJudge, load_shipped
from bot.emotion.evaluation import (
    Example,
    Scores,
    dialogue_sets,
    formula_pairs,
    gold,
    read_goemotions,
    read_lines,
    score,
)
from bot.emotion.judge import EmotionJudge, combine
from bot.emotion.labels import project
from bot.emotion.negation import denied
from bot.emotion.smoothing import smooth
from bot.errors import ModelError
from bot.personas import PersonaLibrary

REPLY_TOKENS = 60
CONTEXT_LINE = "So, what do you make of all that?"  # the member's line before each judged reply
SITUATIONS = Path(__file__).with_name("situations.tsv")
LLM_SAMPLE = 200  # dev rows judged by the LLM (each is a model call); the classifier reads them all

# A plain keyword lexicon: the baseline any judge must beat.
LEXICON: dict[str, tuple[str, ...]] = {
    "joy": ("happy", "glad", "great", "awesome", "yay", "wonderful", "excited", "thanks", "thank", "good"),
    "amusement": ("lol", "haha", "lmao", "funny", "hilarious", "laugh", "joke", "rofl"),
    "sadness": ("sad", "sorry", "miss", "cry", "unfortunately", "depressing", "lost", "hurts", "lonely"),
    "anger": ("angry", "hate", "stupid", "furious", "idiot", "damn", "annoying", "worst", "disgusting"),
    "fear": ("scared", "afraid", "fear", "terrified", "nervous", "worried", "scary", "anxious"),
    "surprise": ("wow", "whoa", "omg", "surprised", "unexpected", "shocked", "really", "realized"),
    "love": ("love", "adore", "darling", "sweet", "care", "beautiful", "cute", "dear"),
    "embarrassment": ("embarrassing", "embarrassed", "awkward", "blush", "ashamed", "cringe"),
    "confusion": ("confused", "why", "what", "huh", "understand", "wonder", "how", "curious"),
}
_WORDS = re.compile(r"[a-z']+")


def lexicon_label(text: str) -> str:
    words = Counter(_WORDS.findall(text.lower()))
    hits = {label: sum(words[w] for w in keys) for label, keys in LEXICON.items()}
    best = max(hits, key=lambda label: hits[label])
    return best if hits[best] > 0 else "neutral"


def describe(scores: Scores) -> tuple[str, str, str, str]:
    top = ", ".join(f"{label} {n / scores.n:.2f}" for label, n in scores.predicted.most_common(4))
    return f"{scores.accuracy:.3f}", f"{scores.macro_f1:.3f}", f"{scores.largest_share:.2f}", top


def print_table(title: str, rows: Sequence[tuple[str, str, str, str, str, str]]) -> None:
    head = ("judge", "rows", "accuracy", "macro-F1", "largest label share", "most predicted")
    print(f"\n{title}\n")
    print("| " + " | ".join(head) + " |\n|" + "|".join("---" for _ in head) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def resident_mb() -> float:
    """This process's resident memory, in MB (Linux; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def judged(examples: list[Example], predict: Callable[[str], str]) -> tuple[list[str], float]:
    started = time.perf_counter()
    predictions = [predict(e.text) for e in examples]
    return predictions, (time.perf_counter() - started) / max(1, len(examples))


async def bench_emotion(config: Config, args: argparse.Namespace) -> int:
    data = args.data or config.root.parent / "shared" / "goemotions" / "dev.tsv"
    if not Path(data).is_file():
        print(f"bench emotion: {data} not found (pass --data path/to/goemotions/dev.tsv)")
        return 2
    labels = list(DEFAULT_LABELS)
    examples = read_goemotions(Path(data))
    golds = [gold(e, labels) for e in examples]
    sample_size = 60 if args.quick else LLM_SAMPLE
    sample = examples[:sample_size]
    sample_golds = golds[:sample_size]
    judge = EmotionJudge(config.emotion, None)

    def classify(text: str) -> dict[str, float]:
        return judge.classify_text(text, labels)

    def best(probs: dict[str, float]) -> str:
        return max(probs, key=lambda label: probs[label])

    by_classifier, classifier_s = judged(examples, lambda text: best(classify(text)))
    rows = [
        ("always neutral", str(len(examples)), *describe(score(["neutral"] * len(examples), golds, labels))),
        (
            "keyword lexicon",
            str(len(examples)),
            *describe(score(judged(examples, lexicon_label)[0], golds, labels)),
        ),
        ("classifier (shipped)", str(len(examples)), *describe(score(by_classifier, golds, labels))),
    ]

    # The sentence encoder, loaded as the bot loads it; its cost in time and memory.
    rss_before, started = resident_mb(), time.perf_counter()
    try:
        encoder: EncoderJudge | None = load_shipped()
    except ModelError as exc:
        print(f"bench emotion: the sentence encoder is not measured: {exc}")
        encoder = None
    load_s, load_mb = time.perf_counter() - started, resident_mb() - rss_before
    readers: dict[str, Callable[[str], dict[str, float]]] = {"classifier (keywords)": classify}
    if encoder is not None:
        readers["encoder (meaning)"] = lambda text: project(encoder.read_reply(text), labels)
        by_encoder, _ = judged(examples, lambda text: best(readers["encoder (meaning)"](text)))
        rows.append(
            (
                f"encoder ({'int8' if encoder.int8 else 'float32'})",
                str(len(examples)),
                *describe(score(by_encoder, golds, labels)),
            )
        )

    # Reply-shaped sets built from the same rows: short replies, questions, negations, long replies,
    # politeness formulas, surprised questions; each judge beside always-neutral.
    shaped = []
    by_encoder_on: dict[str, list[str]] = {}  # the encoder's faces per set, for the second opinion below
    # Plus written situations (held out: never trained on), events that carry an emotion unnamed.
    sets = dialogue_sets(examples, labels) | {"situations (written)": read_lines(SITUATIONS)}
    for name, subset in sets.items():
        subset_golds = [gold(e, labels) for e in subset]
        neutral = score(["neutral"] * len(subset), subset_golds, labels)
        for judge_name, read in readers.items():
            predicted = [best(read(e.text)) for e in subset]
            if judge_name == "encoder (meaning)":
                by_encoder_on[name] = predicted
            shaped.append(
                (
                    name,
                    judge_name,
                    str(len(subset)),
                    *describe(score(predicted, subset_golds, labels)),
                    neutral,
                )
            )

    # A formula put before a neutral statement (formulas the encoder was not trained with): how often it
    # flips the face by itself, counted where the judge reads the bare statement neutral.
    flips = []
    for judge_name, read in readers.items():
        pairs = [(best(read(bare)), best(read(led))) for bare, led in formula_pairs(examples, labels)]
        calm = [led for bare, led in pairs if bare == "neutral"]
        flips.append((judge_name, len(calm), sum(led != "neutral" for led in calm)))

    # A denied feeling ("I'm not scared"): how often the face shows it where the labels do not, with the
    # damping (bot/emotion/negation.py) and without it, the same judges in the same run.
    denials = [(e, denied(e.text)) for e in examples]
    denials = [(e, faces) for e, faces in denials if faces and not faces & set(gold(e, labels))]
    shown_denied: list[tuple[str, int, int, int]] = []
    for judge_name, read in readers.items():
        with mock.patch.object(negation, "DENIED", 1.0):
            undamped = sum(best(read(e.text)) in faces for e, faces in denials)
        damped = sum(best(read(e.text)) in faces for e, faces in denials)
        shown_denied.append((judge_name, len(denials), damped, undamped))

    # Events told without a feeling word: the encoder with its second opinion (a head fitted again with
    # written situations, asked where the head reads neutral) and without it, in the same run.
    second_opinion: list[tuple[str, int, float, float]] = []
    if encoder is not None:
        alone = dataclasses.replace(encoder, situations=None)
        by_encoder_on["GoEmotions dev"] = by_encoder
        for set_name, subset in (
            ("GoEmotions dev", examples),
            ("formulas", sets["formulas"]),
            ("situations (written)", sets["situations (written)"]),
        ):
            subset_golds = [gold(e, labels) for e in subset]
            by_head_alone = [best(project(alone.read_reply(e.text), labels)) for e in subset]
            second_opinion.append(
                (
                    set_name,
                    len(subset),
                    score(by_encoder_on[set_name], subset_golds, labels).accuracy,
                    score(by_head_alone, subset_golds, labels).accuracy,
                )
            )

    # Time per judgement, as the chat judges: one reply at a time, on dev rows and on long replies.
    timing_sets = {
        "dev rows": [e.text for e in examples[:600]],
        "long replies": [e.text for e in dialogue_sets(examples, labels)["long"][:300]],
    }
    # The encoder through transformers' own forward too (before bot/emotion/lean_bert.py), text by text
    # beside the others: the same load on the cores for each.
    timed = dict(readers)
    if encoder is not None:

        def through_transformers(text: str) -> dict[str, float]:
            encoder.encoder.lean = False
            try:
                return readers["encoder (meaning)"](text)
            finally:
                encoder.encoder.lean = True

        timed["encoder, transformers' forward"] = through_transformers
    timings = []
    for set_name, texts in timing_sets.items():
        times: dict[str, list[float]] = {judge_name: [] for judge_name in timed}
        for text in texts:
            for judge_name, read in timed.items():
                began = time.perf_counter()
                read(text)
                times[judge_name].append(time.perf_counter() - began)
        for judge_name, spent in times.items():
            spent.sort()
            timings.append((judge_name, set_name, spent[len(spent) // 2], spent[int(len(spent) * 0.95)]))

    # The face as the chat shows it: smoothing over consecutive replies keeps weak or marginal changes out.
    shown: list[str] = []
    previous: str | None = None
    for example in examples:
        previous, _ = smooth(classify(example.text), previous, config.emotion)
        shown.append(previous)
    changed = sum(a != b for a, b in itertools.pairwise(shown)) / max(1, len(shown) - 1)

    model_config = dataclasses.replace(config.model, n_ctx=2048, temperature=0.7, seed=1)
    async with loaded_model(model_config, config.root) as llm:
        llm_judge = EmotionJudge(dataclasses.replace(config.emotion, judge="llm"), llm)
        assert llm_judge.llm is not None
        # The LLM judges as in a real turn: after the persona's own prompt (system text, greeting) and a
        # member's line, the comment being the persona's reply.
        persona = PersonaLibrary.from_config(config).load(config.persona.default)
        builder = PromptBuilder(llm, model_config.max_reply_tokens, config.prompt)
        messages = builder.build(persona, [Turn("user", "Sam", CONTEXT_LINE)], "Sam").messages
        llm_probs = []
        started = time.perf_counter()
        for example in sample:
            llm_probs.append(
                await llm_judge.llm.probabilities(
                    messages, example.text, persona.name, labels, session="bench"
                )
            )
        llm_s = (time.perf_counter() - started) / len(sample)
        rows += [
            (
                f"classifier, same {len(sample)} rows",
                str(len(sample)),
                *describe(score(by_classifier[:sample_size], sample_golds, labels)),
            ),
            (
                f"LLM judge ({llm.name})",
                str(len(sample)),
                *describe(score([best(p) for p in llm_probs], sample_golds, labels)),
            ),
            (
                "both (combined)",
                str(len(sample)),
                *describe(
                    score(
                        [best(combine(classify(e.text), p)) for e, p in zip(sample, llm_probs, strict=True)],
                        sample_golds,
                        labels,
                    )
                ),
            ),
        ]
        reply_times = []
        prompt = llm.render([*messages, {"role": "user", "content": "Tell me about the storm last night."}])
        for _ in range(2 if args.quick else 4):
            generation = llm.generate(prompt, max_tokens=REPLY_TOKENS, stop=[], session="reply")
            async for _chunk in generation.chunks():
                pass
            # A reply of REPLY_TOKENS: this turn's prompt reading, then that many tokens at the measured
            # decode speed (a reply that ended early is not scaled up with its prompt time in it).
            stats = generation.stats
            per_token = stats.decode_seconds / max(1, stats.generated_tokens - 1)
            reply_times.append(stats.prompt_seconds + per_token * REPLY_TOKENS)
        reply_s = statistics.median(reply_times)

    print_table(
        f"bench emotion: {Path(data).name} mapped onto the 10 default labels\n"
        f"machine: {machine()}; load average (1 min): {load_average()}",
        rows,
    )
    print(f"\nthe text judges on reply-shaped sets built from {Path(data).name}\n")
    print("| set | judge | rows | accuracy | macro-F1 | largest label share | always neutral |")
    print("|---|---|---|---|---|---|---|")
    for name, judge_name, n, accuracy, macro_f1, share, _top, neutral in shaped:
        print(f"| {name} | {judge_name} | {n} | {accuracy} | {macro_f1} | {share} | {neutral.accuracy:.3f} |")
    print(
        "\n| a formula before a neutral statement | statements read neutral | face flipped by the formula |"
    )
    print("|---|---|---|")
    for judge_name, calm_n, flipped in flips:
        print(f"| {judge_name} | {calm_n} | {flipped} ({flipped / max(1, calm_n):.1%}) |")
    print("\n| a denied feeling, rows not labelled with it | rows | shown as the face | without damping |")
    print("|---|---|---|---|")
    for reader_name, rows_n, damped_n, undamped_n in shown_denied:
        print(f"| {reader_name} | {rows_n} | {damped_n} | {undamped_n} |")
    if second_opinion:
        print("\n| the encoder on | rows | with its second opinion (the judge) | the head alone |")
        print("|---|---|---|---|")
        for set_name, rows_n, with_second, head_alone in second_opinion:
            print(f"| {set_name} | {rows_n} | {with_second:.3f} | {head_alone:.3f} |")
    print("\n| time per judgement | on | p50 | p95 |\n|---|---|---|---|")
    for judge_name, set_name, p50, p95 in timings:
        print(f"| {judge_name} | {set_name} | {p50 * 1000:.2f} ms | {p95 * 1000:.2f} ms |")
    if encoder is not None:
        print(
            f"\nthe encoder loads in {load_s:.2f} s (files checked, adapter merged, int8) and adds "
            f"{load_mb:.0f} MB resident (torch threads: {torch_threads()})"
        )
    print(
        f"\nfaces shown with smoothing (min_lift {config.emotion.min_lift}, switch_lift "
        f"{config.emotion.switch_lift}): the face changes on {changed:.0%} of consecutive replies"
    )
    print(f"\n| cost per judgement | seconds | fraction of a {REPLY_TOKENS}-token reply ({reply_s:.2f} s) |")
    print("|---|---|---|")
    print(f"| classifier | {classifier_s * 1000:.2f} ms | {classifier_s / reply_s:.4f} |")
    print(f"| LLM judge | {llm_s * 1000:.0f} ms | {llm_s / reply_s:.3f} |")
    return 0
