from __future__ import annotations

import pytest

from bot.discord.splitting import split_message


def test_short_text_is_one_message() -> None:
    assert split_message("hello") == ["hello"]


def test_splits_at_sentences_under_the_limit() -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(300))
    chunks = split_message(text)
    assert len(chunks) > 1 and all(len(c) <= 2000 for c in chunks)
    assert all(c.endswith(".") for c in chunks)
    assert " ".join(chunks) == text


def test_prefers_paragraphs_and_never_cuts_words() -> None:
    para = "word " * 150
    text = "\n\n".join(para.strip() for _ in range(6))
    chunks = split_message(text)
    assert all(len(c) <= 2000 for c in chunks)
    assert all(not c.endswith("wor") for c in chunks)
    assert "".join(chunks).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")


def test_code_block_moves_whole_to_the_next_message() -> None:
    text = "intro " * 300 + "\n```python\n" + "x = 1\n" * 50 + "```\nafter"
    chunks = split_message(text)
    assert all(c.count("```") % 2 == 0 for c in chunks)
    assert any(c.startswith("```python") for c in chunks)


def test_huge_code_block_is_closed_and_reopened() -> None:
    text = "```js\n" + "let a = 1;\n" * 600 + "```"
    chunks = split_message(text)
    assert len(chunks) >= 3 and all(len(c) <= 2000 for c in chunks)
    assert all(c.count("```") == 2 for c in chunks)
    assert all(c.startswith("```js") for c in chunks)


def test_one_giant_word_is_cut() -> None:
    chunks = split_message("a" * 5000)
    assert [len(c) for c in chunks] == [1996, 1996, 1008]


def test_a_long_reply_splits_between_paragraphs_first() -> None:
    # Lines inside each paragraph too: a line break is a worse cut than a paragraph break.
    paragraphs = [
        f"Paragraph {i}.\n" + "\n".join("The sea is grey and the wind is cold." for _ in range(12))
        for i in range(8)
    ]
    chunks = split_message("\n\n".join(p.strip() for p in paragraphs))
    assert len(chunks) > 1
    for chunk in chunks:
        # Every message is whole paragraphs: no paragraph is cut while a paragraph break was available.
        assert all(part.strip() in [p.strip() for p in paragraphs] for part in chunk.split("\n\n"))


@pytest.mark.parametrize("name", ["Mira", "Captain Bartholomew Quillon-Ashcombe of the Northern Reach" * 2])
@pytest.mark.parametrize(
    "text",
    [
        "The tide turns. " * 400,  # sentences
        "x" * 5000,  # no boundary at all
        ("A paragraph about the lamp.\n\n" * 60) + "```\n" + "code line\n" * 300 + "```",
    ],
)
def test_every_part_of_a_reply_posted_under_a_name_fits_discord(name: str, text: str) -> None:
    """As the bot naming a character ("**Name:** ..."), as the character, or as the bot: every message
    is at most Discord's 2,000 characters, the name's prefix included, and nothing is lost."""
    from bot.discord.replies import compose

    for style in ("named", "webhook", "plain"):
        out = compose(name, text, None, style)  # type: ignore[arg-type]
        parts = [out.content, *out.rest]
        assert all(len(part) <= 2000 for part in parts), (style, [len(p) for p in parts])
        if style == "named":
            assert out.content.startswith(f"**{name}:** ")
        joined = "".join(parts).removeprefix(f"**{name}:** " if style == "named" else "")
        assert joined.replace("\n", "").replace(" ", "").replace("`", "") == text.replace("\n", "").replace(
            " ", ""
        ).replace("`", "")
