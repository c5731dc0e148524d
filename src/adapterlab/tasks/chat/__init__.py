"""``chat``: a prompt rendered from columns -> the reply from a column, or whole conversations -> their replies, as
a LoRA adapter on a chat model.

The hooks below wire this folder's modules to the stages; the heavy ones (trainer, evaluation, inference) are
imported when a stage calls them, so reading a recipe stays cheap.
"""

from __future__ import annotations

from typing import Any

from adapterlab.task import Task
from adapterlab.tasks.chat.config import ChatRecipe
from adapterlab.tasks.chat.format import (
    ChatFormatter,
    ConversationFormatter,
    finish_splits,
    note_lines,
    write_examples,
)


class ChatTask(Task):
    name = "chat"
    recipe = ChatRecipe
    generative = True
    summary = "prompt from columns -> reply from a column, or conversations -> replies"
    export_formats = ("merged", "gguf")

    def formatter(self, recipe, tokenizer):
        if recipe.data.conversation_column is not None:
            return ConversationFormatter(recipe, tokenizer)
        return ChatFormatter(recipe, tokenizer)

    def finish(self, recipe, by_split, pool, ledger, formatter) -> dict[str, Any]:
        return finish_splits(by_split)

    def report_lines(self, report) -> list[tuple[str, str]]:
        return note_lines(report)

    def write_examples(self, run, by_split, report) -> None:
        write_examples(run, by_split)

    def build_trainer(self, ctx):
        from adapterlab.tasks.chat import train

        return train.build_trainer(ctx)

    def before_training(self, trainer, ctx, resume_from):
        from adapterlab.tasks.chat import train

        return train.evaluate_base(trainer, ctx, resume_from)

    def adapter_info(self, trainer, ctx):
        from adapterlab.tasks.chat import train

        return train.adapter_info(trainer, ctx)

    def summarise(self, trainer, ctx, final_eval, before):
        from adapterlab.tasks.chat import train

        return train.summarise(trainer, ctx, final_eval, before)

    def print_outcome(self, summary) -> None:
        from adapterlab.tasks.chat import train

        train.print_outcome(summary)

    def evaluate(self, ctx):
        from adapterlab.tasks.chat import evaluate

        return evaluate.evaluate(ctx)

    def merged_model(self, info, precision):
        from adapterlab.tasks.chat.infer import merged_model

        return merged_model(info, precision)

    def predictor(self, info, precision, **options):
        from adapterlab.tasks.chat.infer import ChatPredictor

        return ChatPredictor(info, precision, **options)


TASK = ChatTask()
