"""The ``summarize`` task: a document cut to fit (never the summary), every cut counted, and the summary metrics
against the document (novel n-grams, unsupported figures, compression) on hand-computed cases."""

from __future__ import annotations

import pytest

from adapterlab.generation import Generation
from adapterlab.metrics import text
from adapterlab.registry import recipe_from_dict
from adapterlab.runs import RunDir, read_jsonl
from adapterlab.stages.prepare import prepare

from samples import write_csv

LEAD = "The harbour board approved 120 new berths on Monday."
FILLER = " ".join(f"Paragraph {i} adds detail number {i} about the berths." for i in range(40))
ENDING = "Work starts in 2027."


def articles(n: int = 20) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        body = f"{LEAD} {FILLER} {ENDING}" if i % 2 else f"Short note {i}: the café opens at {i + 7} am."
        rows.append({"id": f"a{i}", "title": f"Story {i}", "body": body, "abstract": f"Summary {i}: berths approved."})
    return rows


def summarize_recipe(tmp_path, model_dir, rows, **data) -> dict:
    return {
        "name": "summaries",
        "task": "summarize",
        "output_dir": str(tmp_path / "runs"),
        "model": {"base": str(model_dir)},
        "data": {
            "path": str(write_csv(tmp_path / "articles.csv", rows)),
            "id_column": "id",
            "document_columns": "body",
            "summary_column": "abstract",
            "title_column": "title",
            "max_tokens": 200,
            **data,
        },
        "split": {"train": 0.6, "val": 0.2, "test": 0.2},
        "train": {"max_steps": 2, "batch_size": 2, "eval_every": 2, "save_every": 2, "precision": "fp32"},
        "eval": {"max_new_tokens": 8, "bootstrap": 100, "precision": "fp32"},
    }


def split_rows(recipe) -> list[dict]:
    run = RunDir.for_recipe(recipe)
    return [row for name in ("train", "val", "test") for row in read_jsonl(run.split_file(name))]


@pytest.mark.parametrize("side", ["end", "start", "middle"])
def test_long_documents_are_cut_from_the_named_side_never_the_summary(tmp_path, tiny_model_dir, tiny_tokenizer, side):
    recipe = recipe_from_dict(summarize_recipe(tmp_path, tiny_model_dir, articles(), truncate=side))
    report = prepare(recipe, tokenizer=tiny_tokenizer).report
    assert report["kept"] == 20 and report["truncated"] == 10
    assert report["conversation_notes"] == {f"document cut ({side})": 10}
    for row in split_rows(recipe):
        assert row["completion"].startswith("Summary ")  # the summary is whole
        assert row["prompt_tokens"] + row["completion_tokens"] <= 200
        prompt = row["messages"][-1]["content"]
        assert prompt.startswith("Summarise the following article") and "Title: Story" in prompt
        assert row["document"] in prompt  # the document as the model saw it travels with the row
        if not row["truncated"]:
            continue
        document = row["document"]
        assert (LEAD in document) == (side in ("end", "middle"))
        assert (ENDING in document) == (side in ("start", "middle"))
        assert ("[…]" in document) == (side == "middle")


def test_over_long_rows_are_dropped_and_counted_when_asked(tmp_path, tiny_model_dir, tiny_tokenizer):
    recipe = recipe_from_dict(summarize_recipe(tmp_path, tiny_model_dir, articles(), on_too_long="drop"))
    report = prepare(recipe, tokenizer=tiny_tokenizer).report
    assert report["kept"] == 10 and report["dropped"] == {"over_token_limit": 10}


def test_empty_documents_and_summaries_are_counted(tmp_path, tiny_model_dir, tiny_tokenizer):
    rows = articles(12)
    rows[0]["body"], rows[1]["abstract"] = "  ", ""
    recipe = recipe_from_dict(summarize_recipe(tmp_path, tiny_model_dir, rows))
    report = prepare(recipe, tokenizer=tiny_tokenizer).report
    assert report["input_rows"] == 12 == report["kept"] + report["dropped_total"]
    assert report["dropped"] == {"empty_field": 2}


def test_summaries_that_name_what_their_document_does_not_are_dropped_and_counted_when_asked(
    tmp_path, tiny_model_dir, tiny_tokenizer
):
    rows = [{"id": f"a{i}", "title": "", "body": f"Short note {i}: the café in Leeds opens at {i + 7} am.",
             "abstract": f"The café in Leeds opens at {i + 7}." if i % 3 else f"Mayor Quinn opens {i + 100} cafés."}
            for i in range(12)]  # fmt: skip
    kept_all = prepare(recipe_from_dict(summarize_recipe(tmp_path, tiny_model_dir, rows)), tokenizer=tiny_tokenizer)
    assert kept_all.report["kept"] == 12  # off by default
    recipe = recipe_from_dict(summarize_recipe(tmp_path, tiny_model_dir, rows, max_unsupported_figures=0.5))
    report = prepare(recipe, tokenizer=tiny_tokenizer).report
    assert report["kept"] == 8 and report["dropped"] == {"unsupported_summary": 4}  # every third invents two of two
    kept = [row["completion"] for row in split_rows(recipe)]
    assert not any("Quinn" in summary for summary in kept)


def test_summary_metrics_on_hand_computed_cases():
    document = "On 3 May the Harbour Board approved 1,200 new berths, said Mara Quill. Work starts in 2027."
    # Figures of the summary: 1300 (not in the document), Board, Mara, Quill ("The" starts the sentence).
    assert text.unsupported_figures(["The Board approved 1,300 berths under Mara Quill."], [document]).value == 0.25
    assert text.unsupported_figures(["The Board approved 1,200 berths."], [document]).value == 0.0
    # Bigrams: (the cat) (cat sat) (sat down): one of three is not in the document.
    assert text.novel_ngrams(["the cat sat down"], ["the cat sat on the mat"], 2).value == pytest.approx(1 / 3)
    assert text.novel_ngrams(["The cat"], ["the CAT sat"], 1).value == 0.0  # words compare without case
    assert text.compression(["two words", "one"], ["a b c d", "a b c d e f g h i j"]).value == pytest.approx(0.3)
    # Corpus-level: one unsupported of four figures over two summaries (1, 2, 3 and Oslo; a sentence's first word
    # is not counted), not the mean of the two ratios.
    stats = text.unsupported_figures(["Paris 1 2 3", "It is Oslo"], ["Paris 1 2 3", "Rome"])
    assert stats.value == pytest.approx(1 / 4) and list(stats.per_example) == [0.0, 1.0]


def test_rouge_lsum_reads_sentences_not_lines():
    # One line holding two sentences in reverse order: sentence-level LCS keeps both, a single LCS only one.
    reply, reference = "Costs fell sharply. The plant reopened today.", "The plant reopened today. Costs fell sharply."
    scores = text.rouge([reply], [reference])
    assert scores["rougeLsum"].value == pytest.approx(1.0)
    assert scores["rougeL"].value < 0.7


class EchoGenerator:
    """The base copies the document's first sentence; the adapter writes a summary with an invented figure."""

    name = "echo"

    def generate(self, prompts, model="base", decoding=None, n=1, label=None):
        out = []
        for messages in prompts:
            document = messages[-1]["content"].split("\n\n")[-1]
            reply = document.split(". ")[0] + "." if model == "base" else "Summary: 999 berths approved."
            out.append(Generation(reply, 5, 0.01, 0.01))
        return out


def test_evaluation_scores_summaries_against_their_document(tmp_path, tiny_model_dir):
    from adapterlab.stages.evaluate import evaluate
    from adapterlab.stages.train import train

    recipe = recipe_from_dict(summarize_recipe(tmp_path, tiny_model_dir, articles()))
    run = train(recipe).run
    overrides = ["eval.metrics=[rouge,compression,novelty,faithfulness]"]
    data = evaluate(run.root, overrides, generator=EchoGenerator()).report
    metrics = data["metrics"]
    assert metrics["novel_1grams"]["base"] == 0.0  # copied from the document
    assert metrics["novel_1grams"]["adapter"] > 0.3
    assert metrics["unsupported_figures"]["base"] == 0.0 and metrics["unsupported_figures"]["adapter"] > 0
    assert metrics["unsupported_figures"]["higher_is_better"] is False
    assert 0 < metrics["compression"]["base"] < 1
    assert data["not_computed"] == {}
    # the references scored by the metrics that need none to compare with: what the adapter learned to imitate
    test = read_jsonl(run.split_file("test"))
    references, documents = [r["completion"] for r in test], [r["document"] for r in test]
    assert metrics["compression"]["reference"] == pytest.approx(text.compression(references, documents).value)
    assert metrics["unsupported_figures"]["reference"] == text.unsupported_figures(references, documents).value
    assert "reference" not in metrics["rougeL"]  # a reference against itself says nothing
    assert "references" in (run.eval / "report.md").read_text()


def test_reference_summaries_that_invent_figures_earn_a_note():
    from types import SimpleNamespace

    from adapterlab.tasks.summarize import TASK

    documents = ["The board approved 120 berths on Monday.", "Rain fell in Leeds."]
    faithful = SimpleNamespace(references=["120 berths approved.", "Rain in Leeds."], documents=documents)
    assert TASK.scoring_notes(faithful) == []
    invented = SimpleNamespace(references=["Mayor Quinn approved 150 berths.", "Rain in Leeds."], documents=documents)
    (note,) = TASK.scoring_notes(invented)
    assert note.startswith("Reference summaries: 67% of their numbers and names are not in their documents")


def test_a_bare_article_is_served_with_the_prompt_the_adapter_was_trained_on(tiny_tokenizer):
    from adapterlab.rendering import encode_prompt
    from adapterlab.serve.registry import ChatModel
    from adapterlab.tasks.summarize.config import SummarizeData
    from adapterlab.tasks.summarize.format import prompt_messages

    data = SummarizeData(path="x.csv", document_columns=["body"], summary_column="abstract")
    prompt = data.prompt_info()
    trained = encode_prompt(tiny_tokenizer, prompt_messages(LEAD, None, prompt))
    served = ChatModel("summaries", "summaries", tiny_tokenizer, None, set(), user_prefix=prompt["user_prefix"])
    assert served.encode_chat([{"role": "user", "content": LEAD}]) == trained
    # A user who writes the instruction themselves is not given it twice.
    assert served.encode_chat(prompt_messages(LEAD, None, prompt)) == trained
