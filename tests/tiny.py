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


def build_model_dir(path: Path, hidden: int = 32, layers: int = 2, nan_weights: bool = False) -> Path:
    """A random Llama with a byte-level BPE tokenizer and a ChatML template, saved as a local HF directory."""
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
