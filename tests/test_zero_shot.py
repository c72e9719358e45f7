"""The paper's zero-shot heuristics against log-probabilities computed by hand (one unbatched,
unpadded forward pass per example) for a tiny model; the tasks it defines none for are refused."""

import json
import random
import re
import threading

import numpy as np
import pytest
import torch
from corpus_gen import WORDS, reviews, write_cola, write_sst2

from model import GPT
from pipeline.data.tasks import TaskError, get
from pipeline.data.text import normalize
from pipeline.data.tokenizer import END_OF_DOCUMENT, encode_texts, load_tokenizer
from pipeline.eval.metrics import accuracy, matthews
from pipeline.eval.zero_shot import Scorer, best_threshold, check_task, run_task


@pytest.fixture(scope="module")
def lm(task_checkpoint):
    gpt = GPT.from_pretrained(task_checkpoint).eval()
    return gpt, load_tokenizer(task_checkpoint)


def ids(tok, text: str) -> list[int]:
    return encode_texts(tok, [normalize(text)])[0]


def logp(gpt, context: list[int], continuation: list[int]) -> np.ndarray:
    """By hand: one forward pass of context + continuation, nothing else in the batch."""
    with torch.no_grad():
        lp = gpt(torch.tensor([context + continuation]))[0].log_softmax(-1)
    return np.array([lp[len(context) + k - 1, t].item() for k, t in enumerate(continuation)])


def test_the_scorer_batches_and_pads_without_changing_a_log_probability(lm):
    gpt, tok = lm
    pairs = [
        (ids(tok, s), ids(tok, w))
        for (s, _), w in zip(reviews(11, 4), ["positive", "negative"] * 6, strict=False)
    ]
    got = Scorer(gpt, tok, batch=4).logprobs(pairs)
    for (c, w), lp in zip(pairs, got, strict=True):
        np.testing.assert_allclose(lp, logp(gpt, c, w), rtol=1e-4, atol=1e-5)
    # A context too long for n_ctx keeps its last tokens.
    long = sum((ids(tok, s) for s, _ in reviews(30, 5)), [])
    (lp,) = Scorer(gpt, tok).logprobs([(long, ids(tok, "great"))])
    keep = gpt.config.n_ctx - len(ids(tok, "great"))
    np.testing.assert_allclose(lp, logp(gpt, long[-keep:], ids(tok, "great")), rtol=1e-4, atol=1e-5)


def test_sst2_compares_positive_with_negative_after_very(lm, tmp_path):
    gpt, tok = lm
    write_sst2(tmp_path, n_train=40, n_dev=30)
    r = run_task("sst-2", tmp_path, Scorer(gpt, tok))
    dev = get("sst-2").load(tmp_path, "dev")
    start = [tok.token_to_id(END_OF_DOCUMENT)]  # as every heuristic's context, after the document start
    pred = [
        int(
            logp(gpt, start + ids(tok, ex.text[0] + " very"), ids(tok, "positive")).sum()
            > logp(gpt, start + ids(tok, ex.text[0] + " very"), ids(tok, "negative")).sum()
        )
        for ex in dev
    ]
    gold = [ex.label for ex in dev]
    assert r["metric"] == "accuracy" and r["value"] == pytest.approx(accuracy(np.array(pred), np.array(gold)))
    train = [ex.label for ex in get("sst-2").load(tmp_path, "train")]
    majority = max(set(train), key=train.count)
    assert r["majority"] == pytest.approx(np.mean([g == majority for g in gold])) and r["random"] == 0.5
    assert r["examples"] == 30


def test_one_token_answers_are_read_from_one_pass_a_sentence(tmp_path):
    """Where "positive" and "negative" are one token each (as in the released vocabulary), both
    come from the sentence's one forward pass: the same answers as scoring each by hand."""
    from model import GPTConfig
    from pipeline.data.tokenizer import train_tokenizer

    tok = train_tokenizer(
        [s for s, _ in reviews(200, 3)] + ["it was very positive", "it was very negative"] * 100, n_merges=400
    )
    positive, negative = ids(tok, "positive"), ids(tok, "negative")
    assert len(positive) == len(negative) == 1
    torch.manual_seed(1)
    gpt = GPT(GPTConfig.preset("tiny", vocab_size=tok.get_vocab_size())).eval()
    write_sst2(tmp_path, n_train=40, n_dev=30)
    dev = get("sst-2").load(tmp_path, "dev")
    # A random model prefers one of the two words after every sentence. "negative"'s row is set
    # midway to a token k that beats "positive" after about half the sentences, so that which
    # word is likelier depends on the sentence ("negative" never occurs in them).
    with torch.no_grad():
        start = [tok.token_to_id(END_OF_DOCUMENT)]
        last = torch.stack([gpt(torch.tensor([start + ids(tok, ex.text[0] + " very")]))[0, -1] for ex in dev])
        k = int(((last > last[:, positive]).float().mean(0) - 0.5).abs().argmin())
        w = gpt.tokens_embed.weight
        w[negative[0]] = (w[positive[0]] + w[k]) / 2
    r = run_task("sst-2", tmp_path, Scorer(gpt, tok, batch=4))
    pred = [
        int(
            logp(gpt, start + ids(tok, ex.text[0] + " very"), positive)[0]
            > logp(gpt, start + ids(tok, ex.text[0] + " very"), negative)[0]
        )
        for ex in dev
    ]
    assert 0 < sum(pred) < len(pred)  # both answers occur: the comparison is what decides
    assert r["value"] == pytest.approx(accuracy(np.array(pred), np.array([ex.label for ex in dev])))
    # A context longer than n_ctx keeps its last n_ctx tokens.
    long = sum((ids(tok, s) for s, _ in reviews(30, 5)), [])
    got = Scorer(gpt, tok).next_token([long, long[:5]], [positive[0], negative[0]])
    for row, ctx in zip(got, [long[-gpt.config.n_ctx :], long[:5]], strict=True):
        with torch.no_grad():
            want = gpt(torch.tensor([ctx]))[0, -1].log_softmax(-1)[[positive[0], negative[0]]].numpy()
        np.testing.assert_allclose(row, want, rtol=1e-4, atol=1e-5)


def test_cola_thresholds_the_mean_log_probability_on_train(lm, tmp_path):
    gpt, tok = lm
    write_cola(tmp_path, 40, 7)
    r = run_task("cola", tmp_path, Scorer(gpt, tok))
    start = [tok.token_to_id(END_OF_DOCUMENT)]
    task = get("cola")

    def mean_lp(split):
        exs = task.load(tmp_path, split)
        return np.array([logp(gpt, start, ids(tok, ex.text[0])).mean() for ex in exs]), np.array(
            [ex.label for ex in exs]
        )

    train_s, train_y = mean_lp("train")
    dev_s, dev_y = mean_lp("dev")
    t = best_threshold(train_s, train_y)
    # The threshold is the best on train: no other cut of the train scores does better.
    best = matthews((train_s > t).astype(int), train_y)
    assert all(matthews((train_s > c).astype(int), train_y) <= best + 1e-12 for c in train_s)
    assert r["metric"] == "matthews" and r["value"] == pytest.approx(matthews((dev_s > t).astype(int), dev_y))
    assert r["random"] == 0.0


def test_multiple_choice_takes_the_likeliest_answer_per_token(lm, tmp_path):
    gpt, tok = lm
    rng = random.Random(3)
    # RACE: an article, its questions and four options each.
    for level in ("middle", "high"):
        (tmp_path / "race" / "dev" / level).mkdir(parents=True)
        for k in range(3):
            doc = {
                "article": " ".join(rng.choice(WORDS) for _ in range(40)),
                "questions": [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(2)],
                "options": [
                    [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(4)]
                    for _ in range(2)
                ],
                "answers": [rng.choice("ABCD") for _ in range(2)],
            }
            (tmp_path / "race" / "dev" / level / f"{k}.txt").write_text(json.dumps(doc))
    # Story Cloze: four sentences and two endings.
    rows = [
        "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
        "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding"
    ]
    for k in range(8):
        sents = [" ".join(rng.choice(WORDS) for _ in range(5)) for _ in range(6)]
        rows.append(",".join([str(k), *sents, rng.choice("12")]))
    (tmp_path / "cloze").mkdir()
    (tmp_path / "cloze" / "cloze_test_test__spring2016.csv").write_text("\n".join(rows) + "\n")
    start = [tok.token_to_id(END_OF_DOCUMENT)]
    for name, d in (("race", tmp_path / "race"), ("story-cloze", tmp_path / "cloze")):
        r = run_task(name, d, Scorer(gpt, tok, batch=3))
        task = get(name)
        exs = task.load(d, "test" if name == "story-cloze" else "dev")
        pred = [
            int(
                np.argmax(
                    [logp(gpt, start + ids(tok, " ".join(ex.text)), ids(tok, c)).mean() for c in ex.choices]
                )
            )
            for ex in exs
        ]
        assert r["value"] == pytest.approx(accuracy(np.array(pred), np.array([ex.label for ex in exs]))), name
        assert r["random"] == pytest.approx(1 / len(task.labels)) and r["examples"] == len(exs)


def as_ranks(world: int, fn) -> list:
    """fn(share=, gather=) on `world` threads, each a rank of a data-parallel run; gather passes
    objects through a barrier, as torch.distributed.all_gather_object does between processes."""
    box, results, errors = [None] * world, [None] * world, []
    barrier = threading.Barrier(world, timeout=120)

    def gather_for(rank):
        def gather(obj):
            box[rank] = obj
            barrier.wait()
            out = list(box)
            barrier.wait()  # every rank has read before any writes its next object
            return out

        return gather

    def run(rank):
        try:
            results[rank] = fn(share=(rank, world), gather=gather_for(rank))
        except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


class Counting(Scorer):
    """A Scorer that counts the sequences it runs forward passes on."""

    def _forward(self, seqs, positions):
        self.sequences = getattr(self, "sequences", 0) + len(seqs)
        return super()._forward(seqs, positions)


def test_spread_over_ranks_each_scores_its_share_and_all_get_the_same_result(lm, tmp_path):
    gpt, tok = lm
    for d in ("sst2", "cola"):
        (tmp_path / d).mkdir()
    write_sst2(tmp_path / "sst2", n_train=40, n_dev=30)
    write_cola(tmp_path / "cola", 40, 7)
    for name, d in (("sst-2", tmp_path / "sst2"), ("cola", tmp_path / "cola")):
        alone = Counting(gpt, tok, batch=4)
        want = run_task(name, d, alone)
        for world in (2, 3):
            scorers = []

            def one_rank(name=name, d=d, scorers=scorers, **spread):
                scorers.append(Counting(gpt, tok, batch=4, **spread))
                return run_task(name, d, scorers[-1])

            for got in as_ranks(world, one_rank):
                assert got == pytest.approx(want), (name, world)
            # Each rank ran its share of the sequences: together, what one rank alone runs.
            assert sum(sc.sequences for sc in scorers) == alone.sequences
            assert max(sc.sequences for sc in scorers) <= -(-alone.sequences // world) + 2 * world
    # The one-token path too.
    contexts = [ids(tok, s) for s, _ in reviews(7, 2)]
    want = Scorer(gpt, tok, batch=2).next_token(contexts, [3, 5])
    for got in as_ranks(2, lambda **spread: Scorer(gpt, tok, batch=2, **spread).next_token(contexts, [3, 5])):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_tasks_without_a_heuristic_are_refused_in_one_line():
    for name in ("mnli", "rte", "qqp", "sts-b"):
        with pytest.raises(TaskError, match="the paper defines no zero-shot heuristic"):
            check_task(name)
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        check_task("nope")
    assert check_task("SST-2") == "sst-2"


def test_gpt1_evaluate_runs_the_heuristics_and_logs_them(task_checkpoint, tmp_path, mlflow_uri, capsys):
    from mlflow.tracking import MlflowClient

    from gpt1.cli import main

    (tmp_path / "sst").mkdir()
    write_sst2(tmp_path / "sst", n_train=40, n_dev=20)
    assert (
        main(["evaluate", "--checkpoint", str(task_checkpoint), "--zero-shot", f"sst-2={tmp_path / 'sst'}"])
        == 0
    )
    out = capsys.readouterr().out
    assert "| sst-2 | dev | 20 | accuracy |" in out
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("gpt1-evaluate").experiment_id])
    assert {
        "zero_shot.sst-2.accuracy",
        "zero_shot.sst-2.accuracy.majority",
        "zero_shot.sst-2.accuracy.random",
    } <= set(run.data.metrics)
    for args, expected in (
        (["--zero-shot", f"mnli={tmp_path}"], "defines no zero-shot heuristic for mnli"),
        (["--zero-shot", "sst-2"], "expected TASK=DIR"),
        (["--zero-shot", f"nope={tmp_path}"], "unknown task 'nope'"),
        ([], "nothing to evaluate"),
    ):
        assert main(["evaluate", "--no-mlflow", "--checkpoint", str(task_checkpoint), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err


def test_a_model_without_a_document_token_scores_from_the_first_token(lm):
    """The released GPT-1 has no _end_of_document_ row: nothing is put before a text, and its
    first token is context only."""
    from model import GPTConfig

    _, tok = lm
    end = tok.token_to_id(END_OF_DOCUMENT)
    torch.manual_seed(1)
    gpt = GPT(GPTConfig.preset("tiny", vocab_size=end)).eval()  # no row for the token
    scorer = Scorer(gpt, tok)
    assert scorer.start == []
    text = ids(tok, "the film was great")
    (lp,) = scorer.logprobs([(scorer.start, text)])
    np.testing.assert_allclose(lp, logp(gpt, text[:1], text[1:]), rtol=1e-4, atol=1e-5)


WSC_XML = """<?xml version="1.0" encoding="UTF-8"?>
<collection>
{}
</collection>
"""
SCHEMA = """<schema>
<text><txt1>{before}</txt1> <pron>{pron}</pron> <txt2>{after}</txt2></text>
<quote><quote1></quote1><pron>{pron}</pron><quote2>{after}</quote2></quote>
<answers><answer>{a}</answer><answer>{b}</answer></answers>
<correctAnswer>{right}</correctAnswer>
<source>made by the test</source>
</schema>"""


def schemas(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    phrase = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return [
        dict(
            before=phrase(6),
            pron="it",
            after=phrase(5),
            a=phrase(2),
            b=phrase(3),
            right=rng.choice(["A", "B. "]),
        )
        for _ in range(n)
    ]


def test_wsc_and_dprd_pick_the_candidate_that_makes_the_rest_likelier(lm, tmp_path):
    """The DPRD heuristic: each candidate replaces the pronoun, and the rest of the sentence is
    scored after it; both layouts (the Winograd collection's XML, Rahman & Ng's text) read whole."""
    gpt, tok = lm
    rows = schemas(9, 4)
    (tmp_path / "WSCollection.xml").write_text(WSC_XML.format("\n".join(SCHEMA.format(**r) for r in rows)))
    # DPRD: sentence, pronoun, candidates, answer.
    (tmp_path / "dprd").mkdir()
    records = [
        f"{r['a']} and {r['b']} met {r['before']} it {r['after']}\nit\n{r['a']},{r['b']}\n"
        f"{r['a'] if r['right'].startswith('A') else r['b']}\n"
        for r in rows
    ]
    (tmp_path / "dprd" / "test.c.txt").write_text("\n".join(records))
    start = [tok.token_to_id(END_OF_DOCUMENT)]
    gold = np.array([0 if r["right"].startswith("A") else 1 for r in rows])

    def dprd_split(r) -> tuple[str, str]:  # the first "it" is the one replaced (the data set's card)
        sentence = f"{r['a']} and {r['b']} met {r['before']} it {r['after']}"
        hit = re.search(r"(?<!\w)it(?!\w)", sentence, flags=re.IGNORECASE)
        return sentence[: hit.start()].strip(), sentence[hit.end() :].strip()

    for name, path, split in (
        ("wsc", tmp_path / "WSCollection.xml", lambda r: (r["before"], r["after"])),
        ("dprd", tmp_path / "dprd", dprd_split),
    ):
        r = run_task(name, path, Scorer(gpt, tok, batch=3))
        pred = [
            int(
                np.argmax(
                    [
                        logp(gpt, start + ids(tok, f"{split(row)[0]} {c}"), ids(tok, split(row)[1])).mean()
                        for c in (row["a"], row["b"])
                    ]
                )
            )
            for row in rows
        ]
        assert r["examples"] == len(rows) and r["source"] == "paper", name
        assert r["value"] == pytest.approx(accuracy(np.array(pred), gold)), name
        assert r["random"] == 0.5
    # A seeded sample across the file, the same each time, not its first rows.
    a, b = (
        run_task("wsc", tmp_path / "WSCollection.xml", Scorer(gpt, tok), max_examples=4) for _ in range(2)
    )
    assert a == b and a["examples"] == 4


def test_a_malformed_winograd_file_is_refused_with_its_record(tmp_path):
    from pipeline.data.winograd import read_dprd, read_wsc

    bad = dict(schemas(1, 1)[0], right="C")
    (tmp_path / "w.xml").write_text(WSC_XML.format(SCHEMA.format(**bad)))
    with pytest.raises(TaskError, match=r"w.xml \(schema 1\): correctAnswer 'C'; expected a letter A-B"):
        read_wsc(tmp_path / "w.xml")
    (tmp_path / "d.txt").write_text(
        "the cat sat on the mat because it was warm\nit\ncat,mat\nmat\n\nshort\nrecord\n"
    )
    with pytest.raises(TaskError, match=r"d.txt:6: a record of 2 lines; expected 4"):
        read_dprd(tmp_path / "d.txt")
    (tmp_path / "d.txt").write_text("the cat sat\nit\ncat,mat\ncat\n")
    with pytest.raises(TaskError, match="the pronoun 'it' is not in the sentence"):
        read_dprd(tmp_path / "d.txt")


def test_dprd_resolves_a_repeated_pronouns_first_occurrence(tmp_path):
    """The data set's card: where the sentence repeats the pronoun, the first one is meant."""
    from pipeline.data.winograd import read_dprd

    (tmp_path / "d.txt").write_text(
        "Tom said he would beat Jerry because he was faster\nhe\nTom,Jerry\nTom\n"
    )
    (schema,) = read_dprd(tmp_path / "d.txt")
    assert (schema.before, schema.after) == ("Tom said", "would beat Jerry because he was faster")


def test_gpt1_evaluate_scores_every_wsc_schema_and_story_cloze_is_labelled_ours(
    task_checkpoint, tmp_path, capsys
):
    from gpt1.cli import main

    rows = schemas(5, 2)
    (tmp_path / "WSCollection.xml").write_text(WSC_XML.format("\n".join(SCHEMA.format(**r) for r in rows)))
    args = ["evaluate", "--no-mlflow", "--checkpoint", str(task_checkpoint), "--zero-shot"]
    assert main([*args, f"wsc={tmp_path / 'WSCollection.xml'}"]) == 0
    assert "| wsc | test | 5 | accuracy |" in capsys.readouterr().out
    from pipeline.eval.zero_shot import source

    assert source("story-cloze") == "this project's addition" and source("race") == "paper"


def test_a_dprd_or_wsc_file_that_is_not_utf8_is_one_line_naming_the_byte(task_checkpoint, tmp_path, capsys):
    from test_faults_inputs import one_line

    from gpt1.cli import main as gpt1

    (tmp_path / "test.c.txt").write_bytes("Tom told Jos\xe9 he won\nhe\nTom,Jos\xe9\nTom\n".encode("latin-1"))
    (tmp_path / "WSCollection.xml").write_bytes(
        "<collection><schema>caf\xe9</schema></collection>".encode("latin-1")
    )
    for name, f in (("dprd", "test.c.txt"), ("wsc", "WSCollection.xml")):
        args = ["evaluate", "--checkpoint", str(task_checkpoint), "--zero-shot", f"{name}={tmp_path / f}"]
        assert gpt1(args) == 2
        one_line(capsys, f"{f}:1: byte 0xe9 at column", "not UTF-8")
