"""``dialogue``: a character's voice from a script (speaker, line, scene), as a LoRA adapter on a chat model.

The shared generative pieces (trainer, evaluation, prepared files, merged model) come from
:class:`adapterlab.generative.GenerativeTask`; this folder brings the recipe and the script formatter.
"""

from __future__ import annotations

from typing import Any

from adapterlab.generative import GenerativeTask
from adapterlab.tasks.dialogue.config import DialogueRecipe
from adapterlab.tasks.dialogue.format import ConversationDialogueFormatter, ScriptFormatter


class DialogueTask(GenerativeTask):
    name = "dialogue"
    recipe = DialogueRecipe
    summary = "a script (speaker, line, scene) -> one character's replies in context"

    def formatter(self, recipe, tokenizer):
        if recipe.data.conversation_column is not None:
            return ConversationDialogueFormatter(recipe, tokenizer)
        return ScriptFormatter(recipe, tokenizer)

    def finish(self, recipe, by_split, pool, ledger, formatter) -> dict[str, Any]:
        ledger.warnings += formatter.warnings()
        return {**super().finish(recipe, by_split, pool, ledger, formatter), **formatter.report()}

    def evaluate(self, ctx):
        from adapterlab.tasks.dialogue.evaluate import evaluate

        return evaluate(ctx)

    def predictor(self, info, precision, **options):
        from adapterlab.tasks.dialogue.infer import predictor

        return predictor(info, precision, **options)

    def report_lines(self, report) -> list[tuple[str, str]]:
        speakers = report.get("speakers", {})
        top = ", ".join(f"{name} {count}" for name, count in list(speakers.items())[:6])
        return [*super().report_lines(report), ("lines by speaker", top)] if top else super().report_lines(report)


TASK = DialogueTask()
