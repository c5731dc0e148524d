"""``chat``: a prompt rendered from columns -> the reply from a column, or whole conversations -> their replies, as
a LoRA adapter on a chat model.

What every generative task shares (trainer, evaluation, prepared files, merged model) comes from
:class:`adapterlab.generative.GenerativeTask`; this folder brings the recipe, the formatters and ``predict``.
"""

from __future__ import annotations

from adapterlab.generative import GenerativeTask
from adapterlab.tasks.chat.config import ChatRecipe
from adapterlab.tasks.chat.format import ChatFormatter, ConversationFormatter


class ChatTask(GenerativeTask):
    name = "chat"
    recipe = ChatRecipe
    summary = "prompt from columns -> reply from a column, or conversations -> replies"

    def formatter(self, recipe, tokenizer):
        if recipe.data.conversation_column is not None:
            return ConversationFormatter(recipe, tokenizer)
        return ChatFormatter(recipe, tokenizer)

    def predictor(self, info, precision, **options):
        from adapterlab.generative.infer import ChatPredictor

        return ChatPredictor(info, precision, **options)


TASK = ChatTask()
