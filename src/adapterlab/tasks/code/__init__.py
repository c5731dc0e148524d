"""``code``: an instruction -> a Python program, as a LoRA adapter on a chat model, scored by running tests.

The shared generative pieces (trainer, evaluation, prepared files, merged model) come from
:class:`adapterlab.generative.GenerativeTask`; this folder brings the recipe, the formatter and ``predict``. Its
evaluation scores the program taken from each reply (:func:`adapterlab.metrics.code.extract_code`): syntax
validity, CodeBLEU and BLEU against the reference, and, with ``eval.execute_code``, the greedy pass rate and
sampled pass@k from running it with the example's tests in the sandbox (:mod:`adapterlab.sandbox`).
"""

from __future__ import annotations

from typing import Any

from adapterlab.generative import GenerativeTask
from adapterlab.metrics.code import extract_code
from adapterlab.tasks.code.config import CodeRecipe
from adapterlab.tasks.code.format import CodeFormatter


class CodeTask(GenerativeTask):
    name = "code"
    recipe = CodeRecipe
    headline = ("pass_rate", "syntax_valid", "codebleu")
    summary = "instruction (+ signature, context) -> a Python program; tests run in a sandbox"

    def formatter(self, recipe, tokenizer):
        return CodeFormatter(recipe, tokenizer)

    def scored_text(self, text: str) -> str:
        return extract_code(text)

    def scoring(self, ctx, generator, decoding, outputs) -> dict[str, Any]:
        from adapterlab.tasks.code.evaluate import execution_scoring

        return {"code": execution_scoring(ctx, generator, decoding, list(outputs))}

    def scoring_notes(self, scoring) -> list[str]:
        return scoring.code.notes()

    def prediction_fields(self, scoring, outputs):
        def fields(index: int, system: str) -> dict[str, Any]:
            return {"code": extract_code(outputs[system][index].text), **scoring.code.fields(index, system)}

        return fields

    def predictor(self, info, precision, **options):
        from adapterlab.tasks.code.infer import CodePredictor

        return CodePredictor(info, precision, **options)


TASK = CodeTask()
