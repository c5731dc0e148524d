"""``summarize``: document column(s) -> a summary, as a LoRA adapter on a chat model.

The shared generative pieces (trainer, evaluation, prepared files, merged model) come from
:class:`adapterlab.generative.GenerativeTask`; this folder brings the recipe, the formatter (which cuts an
over-long document, never the summary) and ``predict``. Its evaluation adds what a summary is judged by against
its document: compression, novel n-grams (abstractiveness) and numbers or names not in the document.
"""

from __future__ import annotations

from typing import Any

from adapterlab.generative import GenerativeTask
from adapterlab.tasks.summarize.config import SummarizeRecipe
from adapterlab.tasks.summarize.format import SummaryFormatter

UNSUPPORTED_IN_REFERENCES = 0.2  # share of a reference's figures missing from its document that earns a note


class SummarizeTask(GenerativeTask):
    name = "summarize"
    recipe = SummarizeRecipe
    headline = ("rougeL", "bertscore", "bleu", "unsupported_figures")
    summary = "document column(s) -> a summary (the document cut to fit, never the summary)"

    def formatter(self, recipe, tokenizer):
        return SummaryFormatter(recipe, tokenizer)

    def scoring(self, ctx, generator, decoding, outputs) -> dict[str, Any]:
        return {"documents": [row["document"] for row in ctx.rows]}

    def scoring_notes(self, scoring) -> list[str]:
        """A warning when the reference summaries themselves name figures their documents do not give (news
        summaries written from more than the article do): the adapter learns that from them."""
        from adapterlab.metrics.text import unsupported_figures

        share = unsupported_figures(scoring.references, scoring.documents).value if scoring.references else 0.0
        if share < UNSUPPORTED_IN_REFERENCES:
            return []
        return [
            f"Reference summaries: {share:.0%} of their numbers and names are not in their documents, so an adapter "
            "trained on such summaries learns to write figures its document does not give; read its 'numbers and "
            "names not in the document' against the references column, not only against the base."
        ]

    def predictor(self, info, precision, **options):
        from adapterlab.tasks.summarize.infer import SummaryPredictor

        return SummaryPredictor(info, precision, **options)


TASK = SummarizeTask()
