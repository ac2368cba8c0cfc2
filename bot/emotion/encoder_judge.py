"""The emotion judge that reads meaning: the sentence encoder (bot/emotion/encoder.py) with its fitted
adapter merged in, and a softmax head over GoEmotions' 28 labels, fitted by
scripts/train_emotion_encoder.py. It reads a reply as the classifier does (roleplay markup stripped, one
sentence and *action* at a time, pooled toward the sentences that show an emotion), all of a reply's
sentences in one packed sequence; its reading is then weighed with the classifier's (a product of the two,
the classifier's raised to CLASSIFIER_WEIGHT): the keywords settle some replies the encoder is unsure of.

Where it reads a sentence as neutral, a second head is asked, fitted again over the same adapter with
situations written for this project added (events told without a feeling word: "I got fired", "There's
a monster on the stairs!"), and its reading is taken when it is sure of an emotion.

`load_shipped()` builds it from the installed encoder and the shipped head files; each is checked against
a pinned SHA-256 digest, and any failure is a ModelError (the caller falls back to the classifier).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bot.emotion.classifier import TextClassifier, shipped
from bot.emotion.encoder import SentenceEncoder, adapted_depth, check_files, encoder_dir, merge_deltas
from bot.emotion.labels import GOEMOTIONS
from bot.emotion.negation import denied, factors
from bot.emotion.text import calmest, reply_parts, strip_roleplay
from bot.errors import ModelError

DATA = Path(__file__).parent / "data"
HEAD_FILE = DATA / "emotion-encoder.npz"
CHAT_LINES = DATA / "chat_lines.tsv"
SITUATIONS = DATA / "situations.tsv"
# The second opinion's head, written by `scripts/train_emotion_encoder.py --head-only --situation-weight 20
# --out bot/emotion/data/emotion-situations.npz`; its adapter must be the main head's.
SITUATIONS_HEAD_FILE = DATA / "emotion-situations.npz"
# The shipped adapter and head (written by scripts/train_emotion_encoder.py); checked on load like the
# encoder's own files, so a damaged or swapped file is refused rather than judged with.
HEAD_SHA256 = "be87e8812ff35dc2c01ce79f2a7ce07b8052a73412a5df66e00de63a80fc5bd4"
SITUATIONS_HEAD_SHA256 = "a41bf46b55880e3fe1545607dfc3e7a79f05d5e9fa640b4d6251db80263f3d49"
# The second opinion is taken where its strongest emotion reaches this: the lowest of 0.4/0.5/0.6/0.75
# that leaves GoEmotions dev (accuracy, macro-F1) and the formulas set no worse (docs/emotion.md).
SECOND_OPINION = 0.6
MAX_SEGMENTS = 8  # a longer reply is read as this many runs of sentences
BATCH = 64
# The classifier's share in the judgement, chosen on GoEmotions dev (`./run bench emotion`, docs/emotion.md):
# at 0.15 dev accuracy and macro-F1 rise (0.728/0.658 to 0.734/0.667), and so do questions, negations,
# formulas and long neutral replies; at 0.3 dev falls again (0.733/0.660), and so do long replies.
CLASSIFIER_WEIGHT = 0.15


@dataclass(frozen=True)
class Head:
    """A softmax head over the encoder's embeddings."""

    weights: np.ndarray  # (28, dim) float32
    bias: np.ndarray  # (28,) float32
    temperature: float

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        return embeddings @ self.weights.T + self.bias

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        z = self.logits(embeddings) / self.temperature
        p = np.exp(z - z.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class EncoderJudge:
    encoder: SentenceEncoder
    head: Head
    pool_power: float = 0.0
    labels: tuple[str, ...] = GOEMOTIONS
    int8: bool = False
    classifier: TextClassifier | None = None  # weighed in at CLASSIFIER_WEIGHT where given
    situations: Head | None = None  # the second opinion where the head reads neutral

    @classmethod
    def build(
        cls,
        encoder: SentenceEncoder,
        a: Mapping[str, np.ndarray],
        b: Mapping[str, np.ndarray],
        head: Head,
        *,
        pool_power: float,
        quantize: bool = True,
    ) -> EncoderJudge:
        """Merge the adapter into a plain encoder (in place, which then runs the layers the adapter was
        fitted on), then run it in int8 where possible."""
        encoder.keep_layers(adapted_depth(a))
        merge_deltas(encoder.model, {name: b[name] @ a[name] for name in a})
        int8 = encoder.quantize() if quantize else False
        float32 = Head(head.weights.astype(np.float32), head.bias.astype(np.float32), head.temperature)
        return cls(encoder, float32, pool_power, int8=int8)

    @classmethod
    def load(
        cls, head_file: Path, encoder_folder: Path, *, check: bool = True, quantize: bool = True
    ) -> EncoderJudge:
        saved = read_head(head_file, HEAD_SHA256 if check else None)
        return cls.from_head(saved, encoder_folder, check=check, quantize=quantize)

    @classmethod
    def from_head(
        cls, saved: HeadFile, encoder_folder: Path, *, check: bool = True, quantize: bool = True
    ) -> EncoderJudge:
        encoder = SentenceEncoder.load(encoder_folder, check=check)
        return cls.build(
            encoder, saved.a, saved.b, saved.head, pool_power=saved.pool_power, quantize=quantize
        )

    # -- reading --------------------------------------------------------------------------------------

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of texts (markup stripped), in batches of similar length."""
        cleaned = [strip_roleplay(t) for t in texts]
        order = sorted(range(len(cleaned)), key=lambda i: len(cleaned[i]))
        out = np.zeros((len(cleaned), self.head.weights.shape[1]), np.float32)
        for start in range(0, len(order), BATCH):
            chunk = order[start : start + BATCH]
            out[chunk] = self.encoder.embed([cleaned[i] for i in chunk])
        return out

    def _probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        read = self.head.probabilities(embeddings)
        if self.situations is None:
            return read
        neutral = self.labels.index("neutral")
        second = self.situations.probabilities(embeddings)
        sure = np.delete(second, neutral, axis=1).max(axis=1) >= SECOND_OPINION
        take = (read.argmax(axis=1) == neutral) & sure
        return np.where(take[:, None], second, read)

    def read_reply(self, text: str, names: Iterable[str] = ()) -> dict[str, float]:
        """The 28 probabilities for a whole reply (sums to 1), the classifier's weighed in where given."""
        names = list(names)
        read = self.read_meaning(text, names)
        if self.classifier is None:
            return read
        keywords = self.classifier.read_reply(text, names)
        product = {
            label: p * (keywords.get(label, 0.0) + 1e-9) ** CLASSIFIER_WEIGHT for label, p in read.items()
        }
        total = sum(product.values())
        return {label: p / total for label, p in product.items()}

    def read_meaning(self, text: str, names: Sequence[str] = ()) -> dict[str, float]:
        """The encoder's own 28 probabilities for a whole reply."""
        parts = reply_parts(text, names, apart=self.pool_power > 0, most=MAX_SEGMENTS)
        neutral = self.labels.index("neutral")
        rows = calmest(
            parts,
            lambda texts: list(self._probabilities(self.encoder.embed_packed(texts))),
            lambda r: int(r.argmax()) == neutral,
        )
        read = np.stack([self._deny(row, denied(part)) for row, part in zip(rows, parts, strict=True)])
        if len(parts) == 1:
            return dict(zip(self.labels, read[0].tolist(), strict=True))
        weights = (1.0 - read[:, neutral]) ** self.pool_power + 1e-6
        pooled = (weights[:, None] * read).sum(0) / weights.sum()
        return dict(zip(self.labels, pooled.tolist(), strict=True))

    def _deny(self, row: np.ndarray, faces: frozenset[str]) -> np.ndarray:
        """A sentence's reading with the feelings it denies damped (bot/emotion/negation.py)."""
        if not faces:
            return row
        damped = row * np.array(factors(self.labels, faces), np.float32)
        return damped / damped.sum()

    def read_many(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """read_reply for many texts (batched where each is read whole)."""
        if self.pool_power > 0 or self.classifier is not None:
            return [self.read_reply(t) for t in texts]
        read = self._probabilities(self.embed_texts(texts))
        return [dict(zip(self.labels, row.tolist(), strict=True)) for row in read]


@dataclass(frozen=True)
class HeadFile:
    """What a head file holds: the adapter (float32) and the head with its calibration."""

    a: dict[str, np.ndarray]
    b: dict[str, np.ndarray]
    head: Head
    pool_power: float


def read_head(head_file: Path, sha256: str | None = None) -> HeadFile:
    """The adapter and head saved by save(); ModelError when the file is unreadable or inconsistent, or
    not the one pinned by `sha256` where that is given."""
    if sha256 is not None:
        check_files(head_file.parent, {head_file.name: sha256})
    try:
        with np.load(head_file, allow_pickle=False) as data:
            names = bytes(data["layers"]).decode("utf-8").split("\n")
            labels = tuple(bytes(data["labels"]).decode("utf-8").split("\n"))
            saved = HeadFile(
                {name: data[f"a{i}"].astype(np.float32) for i, name in enumerate(names)},
                {name: data[f"b{i}"].astype(np.float32) for i, name in enumerate(names)},
                Head(
                    data["weights"].astype(np.float32),
                    data["bias"].astype(np.float32),
                    float(data["temperature"]),
                ),
                float(data["pool_power"]),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"emotion encoder head {head_file} cannot be read: {exc}") from None
    head = saved.head
    if (
        labels != GOEMOTIONS
        or head.weights.shape[0] != len(GOEMOTIONS)
        or head.bias.shape != (len(GOEMOTIONS),)
    ):
        raise ModelError(f"emotion encoder head {head_file} has inconsistent shapes or labels")
    return saved


def save(path: Path, judge: EncoderJudge, a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> None:
    """Write the adapter and head (float16: a few hundred kB)."""
    names = list(a)
    arrays: dict[str, np.ndarray] = {f"a{i}": a[n].astype(np.float16) for i, n in enumerate(names)}
    arrays |= {f"b{i}": b[n].astype(np.float16) for i, n in enumerate(names)}
    arrays |= {
        "layers": np.frombuffer("\n".join(names).encode("utf-8"), np.uint8),
        "labels": np.frombuffer("\n".join(GOEMOTIONS).encode("utf-8"), np.uint8),
        "weights": judge.head.weights.astype(np.float32),
        "bias": judge.head.bias.astype(np.float32),
        "temperature": np.array(judge.head.temperature, np.float32),
        "pool_power": np.array(judge.pool_power, np.float32),
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, allow_pickle=False, **arrays)
    path.write_bytes(buffer.getvalue())


def situations_head(main: HeadFile, path: Path = SITUATIONS_HEAD_FILE) -> Head:
    """The second opinion's head; ModelError when its file fails its check or was fitted over another
    adapter than the main head's (its reading would then not be of the embeddings the judge makes)."""
    second = read_head(path, SITUATIONS_HEAD_SHA256)
    same = second.a.keys() == main.a.keys() and all(
        np.array_equal(second.a[n], main.a[n]) and np.array_equal(second.b[n], main.b[n]) for n in main.a
    )
    if not same:
        raise ModelError(f"emotion encoder head {path} was fitted over another adapter than {HEAD_FILE.name}")
    return second.head


def load_shipped() -> EncoderJudge:
    """The shipped judge; ModelError when the encoder is not installed or a file fails its check."""
    folder = encoder_dir()
    if folder is None:
        raise ModelError("the sentence encoder package is not installed")
    main = read_head(HEAD_FILE, HEAD_SHA256)
    judge = EncoderJudge.from_head(main, folder)
    return dataclasses.replace(judge, classifier=shipped(), situations=situations_head(main))
