"""Fits the emotion encoder's adapter and head (bot/emotion/data/emotion-encoder.npz).

    .venv/bin/python scripts/train_emotion_encoder.py ../shared/goemotions [--out FILE] [--head-only]

all-MiniLM-L6-v2 (bot/emotion/encoder.py) gets low-rank updates (LoRA) on every linear layer of its six
transformer layers (or of its first --depth layers, which the judge then runs alone) and a softmax head
over GoEmotions' 28 labels, fitted together on train.tsv plus the project's own chat lines
(bot/emotion/data/chat_lines.tsv: politeness formulas, questions of disbelief) and, where
--situation-weight is set, situations (bot/emotion/data/situations.tsv: events that carry an emotion
without naming it; the judge's second opinion, see docs/emotion.md).
With --head-only the adapter is kept as a head file holds it (--adapter, the shipped one by default) and
only the head is fitted again, over the encoder as the bot runs it (merged, int8): about 20 minutes.
Everything chosen is chosen on dev.tsv only: the epoch kept (accuracy plus macro-F1 over the 10 default
labels), then, with the encoder merged and in int8 as the bot runs it, a temperature (calibrated
probabilities), a prior correction (no label takes more than MAX_SHARE of the faces) and how a reply's
sentences are pooled. About 40 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train_emotion import (  # the classifier's fit: the same soft targets and temperature
    fit_temperature,
    targets,
)

from bot.config import DEFAULT_LABELS, EmotionConfig
from bot.emotion.encoder import SentenceEncoder, encoder_dir
from bot.emotion.encoder_judge import CHAT_LINES, HEAD_FILE, SITUATIONS, EncoderJudge, Head, read_head, save
from bot.emotion.evaluation import Example, dialogue_sets, gold, read_goemotions, read_lines, score
from bot.emotion.judge import EmotionJudge
from bot.emotion.labels import GOEMOTIONS, project
from bot.emotion.text import strip_roleplay

SEED = 0
RANK, ALPHA = 8, 16.0
BATCH = 32
MAX_SHARE = 0.45
POOL_POWERS = (1.0, 1.1, 1.2, 1.3, 1.5)
# Copies of each situation line in training: none in the main fit. The judge's second opinion
# (emotion-situations.npz) is fitted with --head-only --situation-weight 20, the weight 5-fold
# cross-validation over the situations picks; on its own such a head lets formulas and a bare "No." set
# faces, hence only a second opinion (docs/emotion.md, "Situations").
SITUATION_WEIGHT = 0
HEAD_L2 = 3e-5  # the head-only fit's weight decay, chosen on dev


# Augmentation from train's own neutral comments: a formula put before a neutral statement leaves it
# neutral; the statement turned into a question of disbelief is surprise. GoEmotions teaches "sorry" as
# remorse and "afraid" as fear because Reddit mostly means them; chat mostly does not.
FORMULAS = (
    "Sorry, ",
    "Sorry, but ",
    "I'm afraid ",
    "Unfortunately, ",
    "Thanks. ",
    "Thank you. ",
    "No, ",
    "Excuse me, ",
    "Please note, ",
    "I'm sorry, ",
    "Thanks, ",
    "Thank you, ",
)
CONFUSED = ("Huh? {}?", "What do you mean, {}?", "I don't get it. {}?", "Wait, so {}?")
DISBELIEF = ("Wait, {}?", "Really? {}", "You mean {}?", "Hold on, {}?", "Seriously? {}", "{}?!")
NEEDS = ("I need", "We need", "You'll need", "I just need", "All I need is")
THINGS = (
    "two more eggs",
    "a ladder",
    "the key to the shed",
    "a receipt for this",
    "more firewood",
    "your signature here",
    "a map of the coast",
    "fresh batteries",
    "the blue folder",
    "a ride to town",
    "ten minutes",
    "some string",
    "a bigger pot",
    "the spare tyre",
    "a hammer and nails",
)
AUGMENTED = 1500


def augment(train: list[Example], rng: random.Random) -> list[Example]:
    """Formula and disbelief lines made from train's short neutral statements (deterministic)."""
    statements = [
        e.text.strip().rstrip(".!")
        for e in train
        if e.labels == ("neutral",) and 4 <= len(e.text.split()) <= 20 and e.text.strip()[-1:] not in "?!"
    ]
    rng.shuffle(statements)
    lines = []
    for text in statements[:AUGMENTED]:
        lead = rng.choice(FORMULAS)
        body = text[0].lower() + text[1:] if lead.endswith(", ") and not text.startswith("I ") else text
        lines.append(Example(f"{lead}{body}.", ("neutral",)))
    plain = [t for t in statements[AUGMENTED:] if len(t.split()) <= 14 and not any(c in t for c in ".!?;:")]
    for text in plain[: AUGMENTED // 2]:
        body = text[0].lower() + text[1:] if not text.startswith("I ") else text
        lines.append(Example(rng.choice(DISBELIEF).format(body), ("surprise",)))
    for text in plain[AUGMENTED // 2 : AUGMENTED]:
        body = text[0].lower() + text[1:] if not text.startswith("I ") else text
        lines.append(Example(rng.choice(CONFUSED).format(body), ("confusion",)))
    lines += [Example(f"{n} {t}.", ("neutral",)) for n in NEEDS for t in THINGS]
    return lines


def batches(texts: list[str], rng: random.Random) -> list[list[int]]:
    """Batches of similar length (less padding), in random order."""
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), rng.random()))
    chunks = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    rng.shuffle(chunks)
    return chunks


def evaluate(judge: EncoderJudge, examples: list[Example]) -> tuple[float, float, float]:
    labels = list(DEFAULT_LABELS)
    predictions = []
    for probs in judge.read_many([e.text for e in examples]):
        projected = project(probs, labels)
        predictions.append(max(projected, key=projected.__getitem__))
    result = score(predictions, [gold(e, labels) for e in examples], labels)
    return result.accuracy, result.macro_f1, result.largest_share


def fit(
    encoder: SentenceEncoder, train: list[Example], dev: list[Example], epochs: int, limit_dev: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, np.ndarray]:
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    for p in encoder.model.parameters():
        p.requires_grad_(False)
    lora = encoder.add_lora(RANK, ALPHA)
    hidden = int(encoder.model.config.hidden_size)  # type: ignore[union-attr, arg-type]
    head = torch.nn.Linear(hidden, len(GOEMOTIONS))
    params = [p for layer in lora.values() for p in (layer.a, layer.b)]
    optimizer = torch.optim.AdamW(
        [{"params": params, "lr": 1e-3}, {"params": head.parameters(), "lr": 3e-3}], weight_decay=0.01
    )
    texts = [strip_roleplay(e.text) for e in train]
    y = targets(train)
    steps = epochs * math.ceil(len(texts) / BATCH)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.05, 1 - s / steps))
    best: tuple[float, dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, np.ndarray] | None = None
    for epoch in range(epochs):
        encoder.model.train()
        started = time.perf_counter()
        chunks = batches(texts, rng)
        for n, chunk in enumerate(chunks):
            optimizer.zero_grad()
            batch = encoder.batch([texts[i] for i in chunk])
            logits = head(encoder.forward(batch) * 10.0)
            loss = -(y[chunk] * torch.log_softmax(logits, 1)).sum(1).mean()
            loss.backward()
            optimizer.step()
            schedule.step()
            if n % 200 == 0:
                rate = (time.perf_counter() - started) / (n + 1)
                print(
                    f"epoch {epoch + 1} batch {n}/{len(chunks)} loss {loss.item():.3f} ({rate:.2f} s/batch)"
                )
        encoder.model.eval()
        a = {name: layer.a.detach().numpy().copy() for name, layer in lora.items()}
        b = {name: (layer.b.detach() * layer.scale).numpy().copy() for name, layer in lora.items()}
        w, bias = head.weight.detach().numpy().copy() * 10.0, head.bias.detach().numpy().copy()
        judge = EncoderJudge(encoder, Head(w, bias, temperature=1.0))
        accuracy, macro_f1, share = evaluate(judge, dev[:limit_dev])
        print(f"epoch {epoch + 1}: dev accuracy {accuracy:.3f}, macro-F1 {macro_f1:.3f}, share {share:.2f}")
        if best is None or accuracy + macro_f1 > best[0]:
            best = (accuracy + macro_f1, a, b, w, bias)
    assert best is not None
    return best[1], best[2], best[3], best[4]


def fit_head(judge: EncoderJudge, train: list[Example], steps: int = 200) -> EncoderJudge:
    """A new softmax head over the judge's own embeddings (adapter merged, int8), uncalibrated."""
    x = torch.from_numpy(judge.embed_texts([e.text for e in train]))
    y = targets(train)
    w = torch.zeros(x.shape[1], y.shape[1], requires_grad=True)
    b = torch.zeros(y.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -(y * torch.log_softmax(x @ w + b, 1)).sum(1).mean() + HEAD_L2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weights, bias = w.detach().T.contiguous().numpy(), b.detach().numpy()
    return dataclasses.replace(judge, head=Head(weights, bias, temperature=1.0), pool_power=0.0)


def calibrate(judge: EncoderJudge, dev: list[Example], prior: np.ndarray) -> EncoderJudge:
    """Temperature, prior correction and pooling, chosen on dev with the encoder as the bot runs it."""
    embeddings = torch.from_numpy(judge.embed_texts([e.text for e in dev]))
    head = judge.head
    logits = torch.from_numpy(head.logits(embeddings.numpy()))
    head = dataclasses.replace(head, temperature=fit_temperature(logits, targets(dev)))
    judge = dataclasses.replace(judge, head=head)
    best: tuple[float, EncoderJudge] | None = None
    labels = list(DEFAULT_LABELS)
    golds = [gold(e, labels) for e in dev]
    for alpha in np.linspace(0.0, 1.0, 11):
        shift = alpha * head.temperature * np.log(prior)
        shifted = dataclasses.replace(judge, head=dataclasses.replace(head, bias=head.bias - shift))
        read = shifted._probabilities(embeddings.numpy())  # the dev rows read whole, embedded once
        predictions = []
        for row in read:
            projected = project(dict(zip(GOEMOTIONS, row.tolist(), strict=True)), labels)
            predictions.append(max(projected, key=projected.__getitem__))
        result = score(predictions, golds, labels)
        accuracy, macro_f1, share = result.accuracy, result.macro_f1, result.largest_share
        print(
            f"prior shift {alpha:.1f}: dev accuracy {accuracy:.3f}, macro-F1 {macro_f1:.3f}, "
            f"share {share:.2f}"
        )
        if share <= MAX_SHARE and (best is None or accuracy + macro_f1 > best[0]):
            best = (accuracy + macro_f1, shifted)
    judge = best[1] if best is not None else judge
    # The pooling: the best long + long-neutral accuracy among the powers that are no worse than the
    # keyword classifier on either (one emotion among calm sentences; a long calm reply).
    sets = dialogue_sets(dev, DEFAULT_LABELS)
    keywords = EmotionJudge(EmotionConfig(judge="classifier", encoder=False), None)
    floor = {name: keyword_accuracy(keywords, sets[name]) for name in ("long", "long neutral")}
    pooled: tuple[bool, float, EncoderJudge] | None = None
    for power in POOL_POWERS:
        candidate = dataclasses.replace(judge, pool_power=power)
        figures = {name: evaluate(candidate, sets[name])[0] for name in ("long", "long neutral")}
        total, fair = sum(figures.values()), all(figures[n] >= floor[n] for n in floor)
        print(f"pool power {power:g}: {figures} (keyword classifier: {floor})", flush=True)
        if pooled is None or (fair, total) > pooled[:2]:
            pooled = (fair, total, candidate)
    assert pooled is not None
    return pooled[2]


def keyword_accuracy(keywords: EmotionJudge, examples: list[Example]) -> float:
    labels = list(DEFAULT_LABELS)
    predictions = []
    for example in examples:
        probs = keywords.classify_text(example.text, labels)
        predictions.append(max(probs, key=probs.__getitem__))
    return score(predictions, [gold(e, labels) for e in examples], labels).accuracy


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="folder with GoEmotions' train.tsv and dev.tsv")
    parser.add_argument("--out", type=Path, default=HEAD_FILE)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="read only this many rows of each file")
    parser.add_argument("--chat-weight", type=int, default=3, help="copies of each chat line in training")
    parser.add_argument(
        "--situation-weight", type=int, default=SITUATION_WEIGHT, help="copies of each situation line"
    )
    parser.add_argument(
        "--depth", type=int, default=None, help="fit on the encoder's first DEPTH layers (default: all)"
    )
    parser.add_argument("--head-only", action="store_true", help="keep the adapter, fit the head again")
    parser.add_argument(
        "--adapter", type=Path, default=HEAD_FILE, help="head file whose adapter --head-only keeps"
    )
    args = parser.parse_args()
    if args.depth is not None and args.head_only:
        parser.error("--depth is for a new adapter; --head-only keeps the layers its adapter names")
    folder = encoder_dir()
    if folder is None:
        raise SystemExit("the sentence encoder is not installed (./run installs it)")
    torch.manual_seed(SEED)
    train = read_goemotions(args.data / "train.tsv", args.limit)
    train += read_lines(CHAT_LINES) * args.chat_weight + augment(train, random.Random(SEED))
    train += read_lines(SITUATIONS) * args.situation_weight
    dev = read_goemotions(args.data / "dev.tsv", args.limit)
    prior = np.maximum((targets(train).sum(0) / len(train)).numpy(), 1e-6)
    if args.head_only:
        kept = read_head(args.adapter)
        a, b = kept.a, kept.b
        judge = fit_head(EncoderJudge.from_head(kept, folder), train)
    else:
        encoder = SentenceEncoder.load(folder)
        if args.depth is not None:
            encoder.keep_layers(args.depth)
        a, b, w, bias = fit(encoder, train, dev, args.epochs, limit_dev=len(dev))
        # Calibrated as it ships: the adapter rounded to float16, as save() writes it.
        a = {name: m.astype(np.float16).astype(np.float32) for name, m in a.items()}
        b = {name: m.astype(np.float16).astype(np.float32) for name, m in b.items()}
        plain = SentenceEncoder.load(folder)
        judge = EncoderJudge.build(plain, a, b, Head(w, bias, temperature=1.0), pool_power=0.0)
    judge = calibrate(judge, dev, prior)
    accuracy, macro_f1, share = evaluate(judge, dev)
    save(args.out, judge, a, b)
    print(
        f"int8, T={judge.head.temperature:.2f}, pool power {judge.pool_power:g}: "
        f"dev accuracy {accuracy:.3f}, macro-F1 {macro_f1:.3f}, largest share {share:.2f}; wrote {args.out} "
        f"({args.out.stat().st_size:,} bytes)"
    )


if __name__ == "__main__":
    main()
