"""Questions asked long after what they ask about was said, written for this project (bench recall).

PARAPHRASED: the question shares no content word with the line holding the answer (a name, a synonym,
a category for a thing: "French city" for Paris), as people ask; words alone cannot find these.
SHARED: the question repeats a word of the line, the case full-text search was built for.
NEXT_LINE: the answer is the line after one that shares the question's words (a question, then its
answer): found only when a recalled line brings its neighbour.
Each entry: the lines said (the last holds the answer), then the question.
"""

from __future__ import annotations

PARAPHRASED: tuple[tuple[tuple[str, ...], str], ...] = (
    (("I grew up in Paris, in a flat above a bakery.",), "Which French city was my childhood home?"),
    (("Last spring I bought an old sailboat called the Heron.",), "What kind of vessel did I purchase?"),
    (("My sister works as a nurse on the night shift at the hospital.",), "What is my sibling's job?"),
    (("I'm allergic to peanuts, they make my throat swell.",), "Which food am I unable to eat safely?"),
    (("My grandmother taught me to play the violin.",), "Who gave me music lessons when I was young?"),
    (("I lost my wedding ring in the river last winter.",), "Where did my marriage band go missing?"),
    (("Thieves stole my horse at the crossroads inn.",), "What animal was taken from me?"),
    (("I've been terrified of spiders since I was a kid.",), "Which creatures frighten me?"),
    (("My brother Tomas joined the royal navy.",), "Which of my relatives became a sailor?"),
    (("I keep my savings hidden inside a hollow book.",), "Where do I stash my money?"),
    (("My favourite dish is my uncle's lamb stew.",), "What meal do I love most?"),
    (("I broke my left arm falling from the orchard wall.",), "How did I injure myself?"),
    (("Our village was flooded when the dam burst.",), "What disaster destroyed my hometown?"),
    (("I've been learning to paint with watercolours.",), "What hobby have I taken up lately?"),
    (("My daughter turns seven next week.",), "How old is my child about to be?"),
    (("The lighthouse keeper gave me a brass compass.",), "Who handed me that navigation instrument?"),
    (("I used to be a soldier in the northern war.",), "What did I do in the army?"),
    (("My cat sleeps on the piano every afternoon.",), "Where does my pet like to nap?"),
    (("I can't swim; deep water scares me.",), "Am I able to stay afloat in a lake?"),
    (("I sold my father's farm to pay the debts.",), "What happened to the land my dad owned?"),
    (
        ("My best friend moved to Lisbon in March.",),
        "Which Portuguese city does my closest companion live in?",
    ),
    (("I have a scar across my chin from a duel.",), "What mark is on my face?"),
    (("I write letters to my mother every Sunday.",), "How often do I send mail to mum?"),
    (("My husband snores like a bear.",), "What noisy habit does my spouse have at night?"),
    (("I found a gold coin at the bottom of the well.",), "What treasure did I discover?"),
    (("The doctor said my heart is weak.",), "What did the physician tell me about my health?"),
    (("My son is afraid of the dark.",), "What scares my boy at bedtime?"),
    (("I studied medicine in Vienna for three years.",), "Where in Austria did I go to university?"),
    (("We buried grandfather under the oak on the hill.",), "Where is my grandpa's grave?"),
    (("I play the drums in a tavern band on weekends.",), "Which instrument do I perform with?"),
)

SHARED: tuple[tuple[tuple[str, ...], str], ...] = (
    (("My sister is called Oriel, she keeps bees.",), "What was my sister called?"),
    (("I hid the silver key under the blue vase.",), "Where did I put the silver key?"),
    (("We came here aboard the Albatross.",), "Do you remember the name of the ship, the Albatross?"),
    (("My father was a clockmaker in Tessaly.",), "What did my father do for a living?"),
    (("The password for the sea gate is 'driftwood'.",), "What is the password for the sea gate?"),
    (("I owe the ferryman three silver coins.",), "How many coins do I owe the ferryman?"),
    (("My dog is named Pepper; she is afraid of thunder.",), "Is Pepper still afraid of thunder?"),
    (("The map is sewn into the lining of my coat.",), "Where is the map hidden?"),
    (("I was born on the island of Vell, in winter.",), "Which island was I born on?"),
    (("The lantern in the tower is green, never red.",), "What colour is the lantern in the tower?"),
    (("My old captain, Harrow, lost an eye at Karsk.",), "How did captain Harrow lose his eye?"),
    (("I promised to bring Mira a jar of cloudberry jam.",), "What did I promise to bring you?"),
)

NEXT_LINE: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("What did you get for your birthday, Sam?", "A telescope, to watch the stars."),
        "What was my birthday present?",
    ),
    (
        ("Where will you spend the summer?", "At my aunt's cottage by the sea."),
        "Where am I spending the summer?",
    ),
    (("What is your horse's name?", "Biscuit. She bites strangers."), "Do you remember my horse's name?"),
    (
        ("Which ship did your father captain?", "The Grey Gull, until she sank."),
        "Which ship did my father captain?",
    ),
    (("What do you do for work these days?", "I mend nets at the harbour."), "What do I do for work?"),
    (("Who taught you to fight?", "An old sergeant named Brannoc."), "Who taught me to fight?"),
)
