"""Words the emotion classifier reads for what roleplay writes without them: the action verbs of
`*actions*` ("*blushes*", "giggles") and emoji, each given the plain words for the emotion it shows
(words GoEmotions' comments use, so the classifier already knows them). Hand-written for this project,
not fitted to any data."""

from __future__ import annotations

# Action verb (its base form) -> the emotion words it stands for.
ACTIONS: dict[str, str] = {
    "blush": "embarrassed",
    "flush": "embarrassed",
    "fluster": "embarrassed",
    "sob": "sad crying",
    "cry": "sad crying",
    "weep": "sad crying",
    "sniffle": "sad crying",
    "sniff": "sad",
    "tremble": "scared",
    "shiver": "scared",
    "shudder": "scared",
    "cower": "scared",
    "flinch": "scared",
    "whimper": "scared",
    "shriek": "scared",
    "scream": "scared",
    "panic": "scared",
    "gasp": "wow surprised",
    "gape": "wow surprised",
    "startle": "wow surprised",
    "blink": "huh",
    "grin": "happy smile",
    "beam": "happy smile",
    "smile": "happy smile",
    "cheer": "yay excited",
    "squeal": "yay excited",
    "giggle": "haha funny",
    "laugh": "haha funny",
    "chuckle": "haha funny",
    "snicker": "haha funny",
    "cackle": "haha funny",
    "chortle": "haha funny",
    "smirk": "haha",
    "glare": "angry",
    "scowl": "angry",
    "growl": "angry",
    "snarl": "angry",
    "seethe": "angry",
    "fume": "angry",
    "frown": "sad",
    "sigh": "sad",
    "sulk": "sad",
    "pout": "annoyed",
    "groan": "ugh",
    "hug": "love",
    "cuddle": "love",
    "kiss": "love",
    "nuzzle": "love",
    "snuggle": "love",
    "stammer": "nervous",
    "stutter": "nervous",
    "fidget": "nervous",
    "gulp": "nervous",
    "tilt": "confused",
}

# Emoji (without variation selectors) -> the emotion words it stands for.
EMOJI: dict[str, str] = {
    "😂": "haha funny",
    "🤣": "haha funny",
    "😆": "haha funny",
    "😹": "haha funny",
    "😄": "happy smile",
    "😀": "happy smile",
    "😁": "happy smile",
    "😃": "happy smile",
    "😊": "happy smile",
    "🙂": "smile",
    "☺": "happy smile",
    "😌": "relieved",
    "🥳": "yay excited",
    "🎉": "yay excited",
    "😢": "sad crying",
    "😭": "sad crying",
    "😞": "sad",
    "😔": "sad",
    "☹": "sad",
    "🙁": "sad",
    "💔": "sad",
    "😡": "angry",
    "😠": "angry",
    "🤬": "angry",
    "💢": "angry",
    "😤": "angry",
    "😱": "scared",
    "😨": "scared",
    "😰": "scared",
    "😧": "scared",
    "😟": "worried",
    "❤": "love",
    "😍": "love",
    "🥰": "love",
    "😘": "love",
    "💕": "love",
    "💖": "love",
    "💗": "love",
    "♥": "love",
    "😳": "embarrassed",
    "🙈": "embarrassed",
    "😅": "embarrassed",
    "🤔": "confused",
    "😕": "confused",
    "🤨": "confused",
    "❓": "confused",
    "😮": "wow surprised",
    "😲": "wow surprised",
    "😯": "wow surprised",
    "🤯": "wow surprised",
    "‼": "wow",
    "🤢": "disgusting",
    "🤮": "disgusting",
}


def verb_forms(base: str) -> set[str]:
    """A verb's base, -s, -ed and -ing forms, by English spelling rules (sob: sobs, sobbed, sobbing)."""
    if base.endswith("e"):
        return {base, base + "s", base + "d", base[:-1] + "ing"}
    if base.endswith("y") and base[-2] not in "aeiou":
        return {base, base[:-1] + "ies", base[:-1] + "ied", base + "ing"}
    if base.endswith(("sh", "ch", "s", "x", "z")):
        return {base, base + "es", base + "ed", base + "ing"}
    forms = {base, base + "s", base + "ed", base + "ing"}
    # One short vowel before a final consonant doubles it: sob -> sobbed, grin -> grinning.
    if len(base) >= 3 and base[-1] not in "aeiouwxy" and base[-2] in "aeiou" and base[-3] not in "aeiou":
        forms |= {base + base[-1] + "ed", base + base[-1] + "ing"}
    return forms


ACTION_WORDS: dict[str, tuple[str, ...]] = {
    form: tuple(cue.split()) for base, cue in ACTIONS.items() for form in verb_forms(base)
}
