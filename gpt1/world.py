"""The built-in data: a seeded generator of English-like text about a small world, and four
labeled tasks derived from it, one per input transformation.

The world has kinds of things (birds, fish, fruit, tools), each with members and typical
actions, and two sets of adjectives (praise and blame) each with typical reactions. The corpus
says what kind each member is and shows members doing their kind's actions and adjectives next to
their reactions. Every task trains on half of the members (or adjectives) and is evaluated on the
other half, which only the corpus has shown. So a model can only generalise to the dev split
through what pretraining learned: the demo's "no pretraining" row stays near chance.

    sentiment   (classification)   "the play was superb ."                      -> positive
    kind        (entailment)       "we saw a heron by the road ." / "... a bird ..." -> entailment
    same-kind   (similarity)       "a trout was in the water ." / "a carp was ..."  -> 1
    action      (multiple choice)  "the hawk" + 4 actions, one of its kind      -> that one
"""

from __future__ import annotations

import random
from pathlib import Path

KINDS = {
    "bird": (
        [
            "robin",
            "sparrow",
            "finch",
            "crow",
            "owl",
            "hawk",
            "wren",
            "lark",
            "dove",
            "eagle",
            "heron",
            "swallow",
            "raven",
            "thrush",
            "gull",
            "stork",
        ],
        ["flew over the hill", "sang in the tree", "built a nest", "spread its wings", "landed on the roof"],
    ),
    "fish": (
        [
            "trout",
            "salmon",
            "carp",
            "perch",
            "pike",
            "cod",
            "tuna",
            "eel",
            "bass",
            "minnow",
            "herring",
            "sardine",
            "mackerel",
            "halibut",
            "sole",
            "bream",
        ],
        [
            "swam in the river",
            "hid under a rock",
            "jumped out of the water",
            "swam against the current",
            "was caught in a net",
        ],
    ),
    "fruit": (
        [
            "apple",
            "pear",
            "plum",
            "peach",
            "cherry",
            "mango",
            "lemon",
            "grape",
            "melon",
            "fig",
            "apricot",
            "lime",
            "orange",
            "banana",
            "papaya",
            "quince",
        ],
        [
            "was ripe and sweet",
            "fell from the branch",
            "was sliced for lunch",
            "was picked at dawn",
            "was pressed for juice",
        ],
    ),
    "tool": (
        [
            "hammer",
            "sander",
            "wrench",
            "drill",
            "chisel",
            "spanner",
            "axe",
            "crowbar",
            "scraper",
            "rasp",
            "mallet",
            "pliers",
            "shovel",
            "rake",
            "trowel",
            "ladder",
        ],
        [
            "was used to fix the roof",
            "lay in the shed",
            "was sharpened on a stone",
            "hung on the wall",
            "was lent to a neighbour",
        ],
    ),
}
MOOD = {
    "positive": (
        [
            "wonderful",
            "superb",
            "delightful",
            "charming",
            "splendid",
            "marvelous",
            "excellent",
            "lovely",
            "brilliant",
            "pleasant",
            "terrific",
            "fabulous",
            "glorious",
            "elegant",
            "gripping",
            "moving",
        ],
        [
            "everyone cheered",
            "the crowd smiled",
            "we laughed all night",
            "people asked for more",
            "the critics praised it",
        ],
    ),
    "negative": (
        [
            "awful",
            "dreadful",
            "terrible",
            "dismal",
            "horrible",
            "tedious",
            "boring",
            "clumsy",
            "lousy",
            "bleak",
            "nasty",
            "dull",
            "shabby",
            "sloppy",
            "painful",
            "tiresome",
        ],
        [
            "everyone groaned",
            "the crowd left early",
            "we asked for a refund",
            "people fell asleep",
            "the critics mocked it",
        ],
    ),
}
SHOWS = ["play", "film", "show", "concert", "book", "dinner", "party", "lecture", "game", "trip"]
PLACES = ["by the road", "near the house", "in the garden", "at the market", "on the farm", "by the lake"]
FILLER = [
    "it was a day like any other",
    "the sun rose late",
    "we walked to the village",
    "the wind came from the west",
    "nobody said much",
    "later it rained",
    "the old man told a story",
    "the children went home .",
]


def _split(members: list[str]) -> tuple[list[str], list[str]]:
    """Every other member for training, the rest for dev: disjoint, both covering every kind."""
    return members[0::2], members[1::2]


def corpus(n_docs: int, seed: int = 0) -> list[str]:
    """Documents of 4-10 sentences mixing what the world says: kinds, actions, moods, filler."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(4, 10)):
            r = rng.random()
            if r < 0.35:
                kind = rng.choice(list(KINDS))
                members, actions = KINDS[kind]
                m = rng.choice(members)
                sentences.append(
                    rng.choice(
                        [
                            f"the {m} {rng.choice(actions)}",
                            f"a {m} is a kind of {kind}",
                            f"we saw a {m} {rng.choice(PLACES)} , and it {rng.choice(actions)}",
                            f"every {kind} , like the {m} , {rng.choice(actions)}",
                        ]
                    )
                )
            elif r < 0.7:
                words, reactions = MOOD[rng.choice(list(MOOD))]
                sentences.append(
                    f"the {rng.choice(SHOWS)} was {rng.choice(words)} , and {rng.choice(reactions)}"
                )
            else:
                sentences.append(rng.choice(FILLER).strip())
        docs.append(" . ".join(sentences) + " .")
    return docs


def _sentiment(rng, words_of: dict[str, list[str]], n: int) -> list[tuple]:
    out = []
    for _ in range(n):
        label = rng.choice(list(MOOD))
        out.append((f"the {rng.choice(SHOWS)} was {rng.choice(words_of[label])} .", label))
    return out


def _kind(rng, members_of: dict[str, list[str]], n: int) -> list[tuple]:
    out = []
    for _ in range(n):
        kind = rng.choice(list(KINDS))
        told = kind if rng.random() < 0.5 else rng.choice([k for k in KINDS if k != kind])
        place = rng.choice(PLACES)
        out.append(
            (
                f"we saw a {rng.choice(members_of[kind])} {place} .",
                f"we saw a {told} {place} .",
                "entailment" if told == kind else "not_entailment",
            )
        )
    return out


def _same_kind(rng, members_of: dict[str, list[str]], n: int) -> list[tuple]:
    out = []
    for _ in range(n):
        a = rng.choice(list(KINDS))
        b = a if rng.random() < 0.5 else rng.choice([k for k in KINDS if k != a])
        x = rng.choice(members_of[a])
        y = rng.choice([m for m in members_of[b] if m != x])
        place = rng.choice(PLACES)
        out.append((f"a {x} was {place} .", f"a {y} was {place} .", str(int(a == b))))
    return out


def _action(rng, members_of: dict[str, list[str]], n: int) -> list[tuple]:
    out = []
    for _ in range(n):
        kinds = list(KINDS)
        rng.shuffle(kinds)  # one candidate action per kind, in a random order
        kind = rng.choice(kinds)
        choices = [rng.choice(KINDS[k][1]) for k in kinds]
        out.append((f"the {rng.choice(members_of[kind])}", *choices, str(kinds.index(kind))))
    return out


# name -> (transformation, text columns, label column, labels, maker)
TASKS = {
    "sentiment": ("classification", ["sentence"], "label", ["negative", "positive"], _sentiment),
    "kind": ("entailment", ["premise", "hypothesis"], "label", ["entailment", "not_entailment"], _kind),
    "same-kind": ("similarity", ["sentence1", "sentence2"], "label", ["0", "1"], _same_kind),
    "action": (
        "multiple_choice",
        ["context", "choice0", "choice1", "choice2", "choice3"],
        "label",
        ["0", "1", "2", "3"],
        _action,
    ),
}


def write_corpus(path: Path, n_docs: int, seed: int = 0) -> Path:
    path.write_text("\n\n".join(corpus(n_docs, seed)) + "\n", encoding="utf-8")
    return path


def write_task(name: str, d: Path, n_train: int, n_dev: int, seed: int = 0) -> Path:
    """A task directory: train.tsv, dev.tsv (header line) and task.yaml, which tells
    pipeline.data.tasks.generic how to read them."""
    import yaml

    transformation, columns, label, labels, make = TASKS[name]
    rng = random.Random(f"{name}-{seed}")
    pool = MOOD if name == "sentiment" else KINDS
    halves = {k: _split(v[0]) for k, v in pool.items()}
    d.mkdir(parents=True, exist_ok=True)
    for split, n, side in (("train", n_train, 0), ("dev", n_dev, 1)):
        rows = make(rng, {k: h[side] for k, h in halves.items()}, n)
        (d / f"{split}.tsv").write_text(
            "\n".join(["\t".join([*columns, label])] + ["\t".join(r) for r in rows]) + "\n"
        )
    (d / "task.yaml").write_text(
        yaml.safe_dump(
            {
                "transformation": transformation,
                "text_columns": columns,
                "label_column": label,
                "labels": labels,
                "files": {"train": "train.tsv", "dev": "dev.tsv"},
            },
            sort_keys=False,
        )
    )
    return d
