"""Task loaders on small files written in each public layout; metrics against hand-computed
values; malformed inputs refused with file and line."""

import json
from pathlib import Path

import pytest

from pipeline.data.tasks import TaskError, generic, get
from pipeline.eval import metrics


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tsv(*rows) -> list[str]:
    return ["\t".join(r) for r in rows]


def test_sst2_reads_sentences_labels_and_the_test_index(tmp_path):
    write(tmp_path / "train.tsv", tsv(("sentence", "label"), ("a charming journey ", "1"), ("bleak", "0")))
    write(tmp_path / "test.tsv", tsv(("index", "sentence"), ("0", "it is fine"), ("1", "not good")))
    task = get("SST-2")
    train = task.load(tmp_path, "train")
    assert [(e.text, e.label) for e in train] == [(("a charming journey",), 1), (("bleak",), 0)]
    test = task.load(tmp_path, "test")
    assert [(e.index, e.text, e.label) for e in test] == [
        ("0", ("it is fine",), None),
        ("1", ("not good",), None),
    ]
    assert task.transformation == "classification" and task.metrics == ("accuracy",)


def test_cola_is_headerless_and_read_by_position(tmp_path):
    write(
        tmp_path / "dev.tsv",
        tsv(
            ("gj04", "1", "", "The sailors rode the breeze."), ("gj04", "0", "*", "The more we study verbs.")
        ),
    )
    dev = get("cola").load(tmp_path, "dev")
    assert [(e.text[0], e.label) for e in dev] == [
        ("The sailors rode the breeze.", 1),
        ("The more we study verbs.", 0),
    ]
    write(tmp_path / "train.tsv", tsv(("gj04", "1", "The sailors rode the breeze.")))
    with pytest.raises(TaskError, match=r"train.tsv:1: 3 tab-separated fields; CoLA's train rows have 4"):
        get("cola").load(tmp_path, "train")


def test_mrpc_qqp_stsb_mnli_qnli_rte_wnli(tmp_path):
    write(
        tmp_path / "mrpc" / "train.tsv",
        tsv(
            ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
            ("1", "7", "8", "He said so .", "So he said ."),
        ),
    )
    (e,) = get("mrpc").load(tmp_path / "mrpc", "train")
    assert (e.text, e.label) == (("He said so .", "So he said ."), 1)
    write(
        tmp_path / "qqp" / "dev.tsv",
        tsv(
            ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
            ("5", "1", "2", "why?", "how?", "0"),
        ),
    )
    (e,) = get("qqp").load(tmp_path / "qqp", "dev")
    assert (e.index, e.text, e.label) == ("5", ("why?", "how?"), 0)
    write(
        tmp_path / "sts" / "dev.tsv",
        tsv(
            (
                "index",
                "genre",
                "filename",
                "year",
                "old_index",
                "source1",
                "source2",
                "sentence1",
                "sentence2",
                "score",
            ),
            ("0", "main", "f", "2012", "1", "s", "s", "A man plays.", "A man is playing.", "4.750"),
        ),
    )
    (e,) = get("sts-b").load(tmp_path / "sts", "dev")
    assert e.label == 4.75 and get("sts-b").regression and get("sts-b").metrics == ("pearson", "spearman")
    header = (
        "index",
        "promptID",
        "pairID",
        "genre",
        "sentence1_binary_parse",
        "sentence2_binary_parse",
        "sentence1_parse",
        "sentence2_parse",
        "sentence1",
        "sentence2",
        "label1",
        "gold_label",
    )
    write(
        tmp_path / "mnli" / "dev_mismatched.tsv",
        tsv(
            header,
            (
                "0",
                "1",
                "1n",
                "g",
                "(",
                "(",
                "(",
                "(",
                "The cat sat.",
                "A cat sat.",
                "entailment",
                "entailment",
            ),
        ),
    )
    (e,) = get("mnli").load(tmp_path / "mnli", "dev_mismatched")
    assert (e.text, e.label) == (("The cat sat.", "A cat sat."), 1)
    for name, labels in (("qnli", ("question", "sentence")), ("rte", ("sentence1", "sentence2"))):
        write(
            tmp_path / name / "train.tsv", tsv(("index", *labels, "label"), ("0", "a", "b", "not_entailment"))
        )
        (e,) = get(name).load(tmp_path / name, "train")
        assert e.label == 1 and get(name).transformation == "entailment"
    write(
        tmp_path / "wnli" / "train.tsv",
        tsv(("index", "sentence1", "sentence2", "label"), ("0", "a", "b", "1")),
    )
    assert get("wnli").load(tmp_path / "wnli", "train")[0].label == 1


def test_snli_scitail_race_story_cloze(tmp_path):
    rows = [
        {
            "sentence1": "A dog runs.",
            "sentence2": "An animal moves.",
            "gold_label": "entailment",
            "pairID": "p1",
        },
        {"sentence1": "A dog runs.", "sentence2": "A cat sleeps.", "gold_label": "-", "pairID": "p2"},
        {
            "sentence1": "A dog runs.",
            "sentence2": "The dog sits.",
            "gold_label": "contradiction",
            "pairID": "p3",
        },
    ]
    write(tmp_path / "snli_1.0_dev.jsonl", [json.dumps(r) for r in rows])
    dev = get("snli").load(tmp_path, "dev")
    assert [(e.index, e.label) for e in dev] == [("p1", 1), ("p3", 0)]  # '-': no majority label, left out

    write(
        tmp_path / "scitail_1.0_train.tsv", tsv(("Plants make food.", "Plants photosynthesize.", "entails"))
    )
    (e,) = get("scitail").load(tmp_path, "train")
    assert (e.text, e.label) == (("Plants make food.", "Plants photosynthesize."), 0)

    article = {
        "article": "Tom has a dog.",
        "questions": ["What does Tom have?", "Who has a dog?"],
        "options": [["a cat", "a dog", "a fish", "a bird"], ["Ann", "Bob", "Tom", "Sue"]],
        "answers": ["B", "C"],
        "id": "m1.txt",
    }
    write(tmp_path / "race" / "dev" / "middle" / "1.txt", [json.dumps(article)])
    write(tmp_path / "race" / "dev" / "high" / "2.txt", [json.dumps({**article, "answers": ["A", "D"]})])
    race = get("race").load(tmp_path / "race", "dev")
    assert [e.label for e in race] == [0, 3, 1, 2]  # in sorted path order: high/ before middle/
    assert race[2].text == ("Tom has a dog.", "What does Tom have?") and race[2].choices[1] == "a dog"

    header = (
        "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
        "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding"
    )
    write(
        tmp_path / "cloze_test_val__spring2016.csv",
        [header, 's1,Ann woke.,She ate.,"She left, late.",She ran.,She made it.,She flew away.,1'],
    )
    (e,) = get("story-cloze").load(tmp_path, "train")
    assert e.text == ("Ann woke. She ate. She left, late. She ran.",)
    assert e.choices == ("She made it.", "She flew away.") and e.label == 0 and e.index == "s1"


def test_generic_task_from_named_columns(tmp_path):
    write(
        tmp_path / "train.tsv", tsv(("id", "review", "stars"), ("1", "great", "pos"), ("2", "awful", "neg"))
    )
    task = generic("reviews", "classification", ("review",), "stars", ("neg", "pos"), {"train": "train.tsv"})
    assert [(e.text, e.label) for e in task.load(tmp_path, "train")] == [(("great",), 1), (("awful",), 0)]
    write(tmp_path / "mc.csv", ["q,a,b,answer", '"Sky, at noon?",blue,green,0'])
    mc = generic("mc", "multiple_choice", ("q", "a", "b"), "answer", ("0", "1"), {"train": "mc.csv"})
    (e,) = mc.load(tmp_path, "train")
    assert e.text == ("Sky, at noon?",) and e.choices == ("blue", "green") and e.label == 0
    with pytest.raises(TaskError, match="entailment takes 2 text column"):
        generic("x", "entailment", ("a",), "l", ("0", "1"), {})


@pytest.mark.parametrize(
    "lines, split, expected",
    [
        (None, "train", r"train.tsv: no such file; expected the sst-2 train split"),
        (
            ["sentence\tlabel", "good\t1", "bad\t1\textra"],
            "train",
            r"train.tsv:3: 3 fields; the header has 2",
        ),
        (["sentence\tlabel", "good\t2"], "train", r"train.tsv:2: label '2' is not one of 0, 1"),
        (["sentence\tlabel", " \t1"], "train", r"train.tsv:2: sentence is empty"),
        # A headerless copy: the first row is not taken for a header, nor the header for a row.
        (
            ["good movie\t1", "bad movie\t0"],
            "train",
            r"train.tsv:1: expected a header naming sentence, label",
        ),
    ],
)
def test_bad_glue_input_names_file_and_line(tmp_path, lines, split, expected):
    if lines is not None:
        write(tmp_path / "train.tsv", lines)
    with pytest.raises(TaskError, match=expected):
        get("sst-2").load(tmp_path, split)


def test_story_cloze_answer_must_be_1_or_2(tmp_path):
    header = (
        "InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
        "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding"
    )
    write(tmp_path / "cloze_test_val__spring2016.csv", [header, "a,b,c,d,e,f,1", "a,b,c,d,e,f,3"])
    with pytest.raises(TaskError, match=r"spring2016.csv:3: AnswerRightEnding '3'; expected 1 or 2"):
        get("story-cloze").load(tmp_path, "train")


def test_metrics_against_hand_computed_values():
    pred, gold = [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]
    # tp 2, fp 1, fn 1, tn 2
    assert metrics.accuracy(pred, gold) == pytest.approx(4 / 6)
    assert metrics.f1(pred, gold) == pytest.approx(2 * 2 / (3 + 3))
    assert metrics.matthews(pred, gold) == pytest.approx((2 * 2 - 1 * 1) / 9)  # sqrt(3*3*3*3) = 9
    assert metrics.matthews([1, 1, 1], [1, 0, 1]) == 0.0  # a constant prediction: undefined, 0
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 4.0]
    # means 2.5 and 3.75; sum of products 3.5; sums of squares 5 and 4.75
    assert metrics.pearson(x, y) == pytest.approx(3.5 / (5 * 4.75) ** 0.5)
    # ranks of y with a tie: [1, 2.5, 4, 2.5]; pearson of [1,2,3,4] and those
    assert metrics.spearman(x, y) == pytest.approx(metrics.pearson([1, 2, 3, 4], [1, 2.5, 4, 2.5]))
    assert metrics.spearman(x, y) == pytest.approx(3.0 / (5 * 4.5) ** 0.5)


def test_story_cloze_holds_out_a_fifth_of_its_stories_as_the_release_does(tmp_path):
    """No dev split in the release's files: its protocol, 374 of the 1,871 validation stories
    held out for model selection, is a fifth; the same stories each time."""
    from tuning.finetune import load_splits

    header = (
        "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
        "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding"
    )
    rows = [f"s{i},a{i}.,b.,c.,d.,e.,f.,{1 + i % 2}" for i in range(20)]
    write(tmp_path / "cloze_test_val__spring2016.csv", [header, *rows])
    a, b = (load_splits(get("story-cloze"), tmp_path) for _ in range(2))
    assert (len(a["train"]), len(a["dev"])) == (16, 4)
    assert {e.index for e in a["dev"]} == {e.index for e in b["dev"]}
    assert not {e.index for e in a["dev"]} & {e.index for e in a["train"]}
