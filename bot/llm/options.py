"""The embedded model's answer to a question with fixed options (the emotion judge, the next speaker):
each option's probability under the model's full next-token distributions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

CLASSIFY_PRUNE = 1e-2  # options this much less likely than the best first token are not expanded
CLASSIFY_EXPAND = 4  # at most this many distinct first tokens are followed to the end of their option
TURN_MARKER = "XYZZY"  # stands for an assistant message's text when reading the template's turn end


def answer_end_tokens(llama: Any, rendered_turn: str) -> tuple[int, ...]:
    """Tokens that end a one-word answer: the chat template's own end-of-turn token (read from an
    assistant turn rendered around TURN_MARKER: Llama 3's <|eot_id|> is not its EOS), EOS, and a
    newline or punctuation right after the word. `rendered_turn` holds no content marks."""
    ends = {llama.token_eos()}
    after = rendered_turn.split(TURN_MARKER, 1)[1].strip() if TURN_MARKER in rendered_turn else ""
    if after:
        ends.add(llama.tokenize(after.encode("utf-8"), add_bos=False, special=True)[0])
    for text in ("\n", ".", "!", ","):
        ids = llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if len(ids) == 1:
            ends.add(ids[0])
    return tuple(sorted(t for t in ends if t >= 0))


def option_probabilities(
    llm: Any, sequences: Mapping[str, Sequence[int]], ends: Sequence[int]
) -> dict[str, float]:
    """Each option's probability as the answer `llm` (a Llama that has just read the question) gives:
    every token of the option, then the end of the answer (`ends`: the template's end-of-turn token, EOS
    or punctuation), so an option that only starts like a common word gains nothing. Options share a
    token trie, so a common prefix is evaluated once."""
    import math

    import numpy as np

    options = list(sequences)
    base = llm.n_tokens
    n_vocab = llm.n_vocab()
    ends = list(ends)

    def log_probs() -> np.ndarray:
        import llama_cpp

        pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        scores = np.ctypeslib.as_array(pointer, shape=(n_vocab,)).astype(np.float64)
        top = scores.max()
        return scores - (top + np.log(np.exp(scores - top).sum()))

    probs = dict.fromkeys(options, 0.0)
    end = -1
    first = log_probs()
    starts = [sequences[o][0] for o in options if sequences[o]]
    floor = float(np.exp(first[starts].max())) * CLASSIFY_PRUNE if starts else 0.0
    # Each expanded first token costs one model evaluation: only the likeliest few are worth it.
    expanded = set(sorted(set(starts), key=lambda t: -first[t])[:CLASSIFY_EXPAND])

    def walk(prefix: tuple[int, ...], mass: float, candidates: list[str], lp: np.ndarray) -> None:
        children: dict[int, list[str]] = {}
        for option in candidates:
            seq = sequences[option]
            children.setdefault(seq[len(prefix)] if len(seq) > len(prefix) else end, []).append(option)
        for token, group in children.items():
            if token == end:
                # The answer stops here: any of the end tokens may follow.
                weight = mass * float(np.exp(lp[ends]).sum())
                for option in group:
                    probs[option] += weight / len(group)
                continue
            weight = mass * float(np.exp(lp[token]))
            if weight < floor or (not prefix and token not in expanded):
                continue  # too unlikely to matter: not worth a model evaluation
            llm.n_tokens = base + len(prefix)
            llm.eval([token])
            walk((*prefix, token), weight, group, log_probs())

    walk((), 1.0, options, first)
    total = sum(probs.values())
    if total > 0 and math.isfinite(total):
        return {o: p / total for o, p in probs.items()}
    return {o: 1.0 / len(options) for o in options}
