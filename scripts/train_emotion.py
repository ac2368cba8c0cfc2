"""Fits the shipped emotion classifier (bot/emotion/data/goemotions-tfidf-softmax.npz).

    .venv/bin/python scripts/train_emotion.py ../shared/goemotions [--out FILE]

Fits on train.tsv only; the regularisation strength and the vocabulary size are chosen on dev.tsv
(accuracy plus macro-F1 over the 10 default labels), and a temperature is fitted on dev.tsv so that
probabilities are calibrated. How a reply's sentences are pooled (`pool_power`) is chosen last, on dev and
on reply-shaped sets built from dev (bot/emotion/evaluation.py `dialogue_sets`): the sum of the
accuracies on dev, on long replies with one emotional sentence and on long neutral replies. The data set
is GoEmotions (Demszky et al., 2020); its files are not part of this repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.config import DEFAULT_LABELS
from bot.emotion.classifier import MODEL_FILE, TextClassifier, save
from bot.emotion.evaluation import Example, dialogue_sets, gold, read_goemotions, score
from bot.emotion.labels import GOEMOTIONS, project
from bot.emotion.text import features, strip_roleplay

SEED = 0
MAX_SHARE = 0.45  # no label may take more of the dev predictions than this
POOL_POWERS = (0.0, 1.0, 2.0, 3.0, 4.0)


def vocabulary(docs: list[list[str]], min_df: int, max_terms: int) -> tuple[list[str], np.ndarray]:
    df = Counter(term for doc in docs for term in set(doc))
    terms = [t for t, n in sorted(df.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_df][:max_terms]
    n_docs = len(docs)
    idf = np.array([math.log((1 + n_docs) / (1 + df[t])) + 1.0 for t in terms], np.float32)
    return terms, idf


def matrix(docs: list[list[str]], index: dict[str, int], idf: np.ndarray) -> torch.Tensor:
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for r, doc in enumerate(docs):
        counts = Counter(index[t] for t in doc if t in index)
        if not counts:
            continue
        tf = np.array([1.0 + math.log(c) for c in counts.values()], np.float32) * idf[list(counts)]
        tf /= np.linalg.norm(tf)
        rows += [r] * len(counts)
        cols += list(counts)
        vals += tf.tolist()
    return (
        torch.sparse_coo_tensor(torch.tensor([rows, cols]), torch.tensor(vals), (len(docs), len(idf)))
        .coalesce()
        .to_sparse_csr()
    )


def targets(examples: list[Example]) -> torch.Tensor:
    y = torch.zeros(len(examples), len(GOEMOTIONS))
    for r, example in enumerate(examples):
        for label in example.labels:
            y[r, GOEMOTIONS.index(label)] += 1.0 / len(example.labels)
    return y


def fit(x: torch.Tensor, y: torch.Tensor, l2: float, steps: int = 150) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(SEED)
    w = torch.zeros(x.shape[1], y.shape[1], requires_grad=True)
    b = torch.zeros(y.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = torch.sparse.mm(x, w) + b
        loss = -(y * torch.log_softmax(logits, 1)).sum(1).mean() + l2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), b.detach()


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -(y * torch.log_softmax(logits / log_t.exp(), 1)).sum(1).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp().detach())


def balance(
    model: TextClassifier, prior: np.ndarray, examples: list[Example]
) -> tuple[float, TextClassifier]:
    """Shift the bias by -alpha * log(prior), alpha chosen on dev: the most accurate setting in which no
    label takes more than MAX_SHARE of the predictions (without it, 'neutral' swallows half the faces)."""
    best: tuple[float, float, TextClassifier] | None = None
    for alpha in np.linspace(0.0, 1.0, 11):
        shifted = dataclasses.replace(model, bias=model.bias - alpha * model.temperature * np.log(prior))
        accuracy, _, share = evaluate(shifted, examples)
        if share <= MAX_SHARE and (best is None or accuracy > best[0]):
            best = (accuracy, float(alpha), shifted)
    if best is None:
        raise SystemExit("no prior correction keeps every label under the share limit")
    return best[1], best[2]


def evaluate(model: TextClassifier, examples: list[Example]) -> tuple[float, float, float]:
    labels = list(DEFAULT_LABELS)
    predictions = []
    for example in examples:
        probs = project(model.read_reply(example.text), labels)
        predictions.append(max(probs, key=probs.__getitem__))
    result = score(predictions, [gold(e, labels) for e in examples], labels)
    return result.accuracy, result.macro_f1, result.largest_share


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="folder with GoEmotions' train.tsv and dev.tsv")
    parser.add_argument("--out", type=Path, default=MODEL_FILE)
    parser.add_argument("--l2", type=float, nargs="*", default=[3e-6, 1e-5, 3e-5])
    parser.add_argument("--max-terms", type=int, nargs="*", default=[20000, 30000])
    parser.add_argument("--limit", type=int, default=None, help="read only this many rows of each file")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train = read_goemotions(args.data / "train.tsv", args.limit)
    dev = read_goemotions(args.data / "dev.tsv", args.limit)
    train_docs = [features(strip_roleplay(e.text)) for e in train]
    dev_docs = [features(strip_roleplay(e.text)) for e in dev]
    y_train, y_dev = targets(train), targets(dev)
    prior = (y_train.sum(0) / len(train)).numpy()
    best: tuple[float, TextClassifier, str] | None = None
    for max_terms in args.max_terms:
        terms, idf = vocabulary(train_docs, min_df=2, max_terms=max_terms)
        index = {t: i for i, t in enumerate(terms)}
        x_train, x_dev = matrix(train_docs, index, idf), matrix(dev_docs, index, idf)
        for l2 in args.l2:
            started = time.perf_counter()
            w, b = fit(x_train, y_train, l2)
            temperature = fit_temperature(torch.sparse.mm(x_dev, w) + b, y_dev)
            model = TextClassifier(index, idf, w.numpy(), b.numpy(), temperature)
            alpha, model = balance(model, prior, dev)
            accuracy, macro_f1, share = evaluate(model, dev)
            took = time.perf_counter() - started
            setting = f"terms={len(terms)} l2={l2:g} T={temperature:.2f} prior shift={alpha:.1f}"
            print(
                f"{setting}: dev accuracy {accuracy:.3f}, macro-F1 {macro_f1:.3f}, "
                f"largest label share {share:.2f} ({took:.0f} s)",
                flush=True,
            )
            # Both matter: how often the face is right, and whether every emotion gets its face.
            if best is None or accuracy + macro_f1 > best[0]:
                best = (accuracy + macro_f1, model, setting)
    assert best is not None
    _, model, setting = best
    model = choose_pooling(model, dev)
    accuracy, macro_f1, _ = evaluate(model, dev)
    vocab = sorted(model.vocabulary, key=model.vocabulary.__getitem__)
    save(args.out, vocab, model.idf, model.weights, model.bias, model.temperature, model.pool_power)
    print(
        f"chose {setting} pool power={model.pool_power:g} (dev accuracy {accuracy:.3f}, macro-F1 "
        f"{macro_f1:.3f}); wrote {args.out} ({args.out.stat().st_size:,} bytes)"
    )


def choose_pooling(model: TextClassifier, dev: list[Example]) -> TextClassifier:
    """The pool power with the best sum of accuracies on dev, long replies and long neutral replies."""
    sets = dialogue_sets(dev, DEFAULT_LABELS)
    best: tuple[float, TextClassifier] | None = None
    for power in POOL_POWERS:
        pooled = dataclasses.replace(model, pool_power=power)
        figures = {name: evaluate(pooled, examples)[0] for name, examples in sets.items()}
        total = evaluate(pooled, dev)[0] + figures["long"] + figures["long neutral"]
        shown = ", ".join(f"{name} {accuracy:.3f}" for name, accuracy in figures.items())
        print(f"pool power {power:g}: dev+long+long neutral {total:.3f} ({shown})", flush=True)
        if best is None or total > best[0]:
            best = (total, pooled)
    assert best is not None
    return best[1]


if __name__ == "__main__":
    main()
