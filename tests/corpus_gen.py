"""A seeded generator of English-like documents for the tests: the project's own data."""
import random

WORDS = ("the of and to a in that it was he for on are as with his they at be this from have or "
         "by one had not but what all were when we there can an your which their said if do will "
         "each about how up out them then she many some so these would other into has more her two "
         "like him see time could no make than first been its who now people my made over did down "
         "only way find use may water long little very after words called just where most know").split()


def documents(n: int, seed: int = 0, min_words: int = 5, max_words: int = 60) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]
        # sentences over one or more lines, never an empty line inside a document
        text, line = [], []
        for i, w in enumerate(words):
            line.append(w)
            if rng.random() < 0.1:
                text.append(" ".join(line).capitalize() + ".")
                line = []
        if line:
            text.append(" ".join(line).capitalize() + ".")
        docs.append("\n".join(text))
    return docs


def reviews(n: int, seed: int) -> list[tuple[str, str]]:
    """(sentence, label): 1 when the sentence holds 'great', 0 when it holds 'awful'. A labeled
    task learnable from one word, in SST-2's shape."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.random() < 0.5
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))]
        words.insert(rng.randrange(len(words) + 1), "great" if label else "awful")
        out.append((" ".join(words), str(int(label))))
    return out


def write_sst2(d, n_train: int = 400, n_dev: int = 200, n_test: int = 50) -> None:
    """An SST-2 directory in the GLUE layout: train.tsv and dev.tsv with a header, test.tsv indexed."""
    for split, n, seed in (("train", n_train, 1), ("dev", n_dev, 2)):
        rows = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in reviews(n, seed)]
        (d / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    test = ["index\tsentence"] + [f"{i}\t{s}" for i, (s, _) in enumerate(reviews(n_test, 3))]
    (d / "test.tsv").write_text("\n".join(test) + "\n")
