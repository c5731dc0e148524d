"""Tiny models built in-process from a config: no downloads, a few MB, seconds to train."""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "Hello, thank you for your message. Please restart the VPN client and try again.",
    "Hallo, vielen Dank für Ihre Nachricht. Bitte starten Sie den Drucker neu.",
    "Bonjour, merci pour votre message. Veuillez redémarrer l'ordinateur.",
    "Hola, gracias por su mensaje. Reinicie el portátil, por favor.",
    "Здравствуйте! Спасибо за обращение. Перезагрузите компьютер.",
    "Subject: printer jam. The printer on floor 3 shows error 0x50 since Monday.",
    "Best regards, IT Support. Which device do you use? What is the exact error?",
]


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(CORPUS * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def build_model_dir(
    path: Path, hidden: int = 32, layers: int = 2, nan_weights: bool = False, init_std: float = 0.02
) -> Path:
    """A random Llama with a byte-level BPE tokenizer and a ChatML template, saved as a local HF directory.

    At the default ``init_std`` the logits are nearly uniform whatever the adapter does; a larger one makes the
    validation loss react to training (e.g. climb at a too-high learning rate).
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=init_std,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if nan_weights:
        with torch.no_grad():
            model.model.norm.weight.fill_(float("nan"))
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_encoder_dir(path: Path, hidden: int = 32, layers: int = 2) -> Path:
    """A random BERT encoder (the shape of all-MiniLM) with the byte-level tokenizer, as a local HF directory."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = build_tokenizer()
    tokenizer.chat_template = None
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_seq2seq_dir(path: Path, reply: str | None = None, new_tokens: int = 8, seed: int = 0) -> Path:
    """A tiny BART text-to-text model with the byte-level tokenizer, as a local HF directory.

    Without ``reply`` it is random but sensitive to its input (large weights): greedy decoding writes exactly
    ``new_tokens`` ordinary tokens, different for different texts, then stops. With ``reply`` its weights are set
    by hand so that it answers ``reply`` to every input (a canned paraphraser or translator); ``""`` answers nothing.
    """
    import torch
    from tokenizers.processors import TemplateProcessing
    from transformers import BartConfig, BartForConditionalGeneration, GenerationConfig

    tokenizer = build_tokenizer()
    tokenizer.chat_template = None
    tokenizer.model_max_length = 256
    end = (tokenizer.eos_token, tokenizer.eos_token_id)
    # Like T5 and Marian tokenizers: every encoded text ends with the end token.
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"$A {end[0]}", pair=f"$A {end[0]} $B {end[0]}", special_tokens=[end]
    )
    special = tokenizer.all_special_ids
    eos = tokenizer.eos_token_id
    target = tokenizer(reply, add_special_tokens=False)["input_ids"] if reply is not None else []
    hidden = 32 if reply is None else max(32, -(-2 * len(target) // 4) * 4)
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=hidden,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=hidden * 2,
        decoder_ffn_dim=hidden * 2,
        max_position_embeddings=256,
        init_std=1.0 if reply is None else 0.02,
        dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=reply is None,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        decoder_start_token_id=tokenizer.bos_token_id,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
    )
    torch.manual_seed(seed)
    model = BartForConditionalGeneration(config)
    generation = {"min_new_tokens": new_tokens} if reply is None else {}
    with torch.no_grad():
        bias = model.final_logits_bias[0]
        if reply is None:
            bias[special] = -1e4  # no special token before the end: every output has text
            bias[eos] = 1e4  # ... and the end as soon as min_new_tokens allows it
        else:
            # Every decoder layer adds nothing, so the last hidden state at decoding step t is
            # LayerNorm(position embedding t) = LayerNorm(one-hot e_t); the LM head maps e_t to the t-th reply token.
            for layer in model.model.decoder.layers:
                for module in layer.modules():
                    if isinstance(module, torch.nn.Linear):
                        module.weight.zero_()
                        module.bias.zero_()
            model.model.shared.weight.zero_()
            model.model.decoder.embed_tokens.weight.zero_()
            offset = model.model.decoder.embed_positions.offset
            positions = model.model.decoder.embed_positions.weight
            positions.zero_()
            positions[offset : offset + hidden] = 10 * torch.eye(hidden)
            head = model.lm_head.weight
            head.zero_()
            for step, token in enumerate(target):
                head[token, step] += 1.0
            head[eos, len(target) :] = 1.0
            bias.fill_(-1e4)
            bias[target] = 0.0
            bias[eos] = 1.0
    model.generation_config = GenerationConfig(
        decoder_start_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **generation,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


NLI_LABELS = ("entailment", "neutral", "contradiction")


def build_nli_dir(path: Path, labels: tuple[str, ...] = NLI_LABELS, hidden: int = 32, seed: int = 0) -> Path:
    """A random BERT sequence-pair classifier shaped like an NLI model (premise, hypothesis -> labels).

    transformers' zero-shot-classification pipeline finds the entailment logit through ``config.label2id`` (a label
    that starts with 'entail', any case). Large random weights make its confidences spread out instead of all
    sitting at 1 / number of candidates.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = build_tokenizer()
    tokenizer.chat_template = None
    tokenizer.model_max_length = 256
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=256,
        initializer_range=0.5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def learned_spans(tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    """The runs of a loss mask's learned tokens, each decoded: what an example teaches, span by span."""
    spans, current = [], []
    for token, learned in zip(ids, mask, strict=True):
        if learned:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    return [*spans, tokenizer.decode(current)] if current else spans
