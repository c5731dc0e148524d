"""An Ollama ``Modelfile`` for a GGUF export: FROM the file, the adapter's system prompt and stop tokens.

Ollama does not run the Jinja chat template stored in the GGUF; it picks one of its own templates by resemblance.
Where the adapter's template renders exactly as ChatML (checked by rendering a probe conversation), the Modelfile
spells out Ollama's ChatML template so nothing is left to that guess; for any other template it leaves TEMPLATE out
and Ollama derives it from the GGUF's metadata.
"""

from __future__ import annotations

import json
from typing import Any

PROBE = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]
CHATML_OLLAMA = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


def renders_as_chatml(tokenizer) -> bool:
    if not getattr(tokenizer, "chat_template", None):
        return False
    rendered = tokenizer.apply_chat_template(PROBE, tokenize=False, add_generation_prompt=True)
    chatml = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in PROBE)
    return rendered == chatml + "<|im_start|>assistant\n"


def default_system_prompt(tokenizer) -> str | None:
    """The system message a ChatML template inserts by itself when a conversation has none (SmolLM2's does)."""
    rendered = tokenizer.apply_chat_template([PROBE[1]], tokenize=False, add_generation_prompt=True)
    head = "<|im_start|>system\n"
    return rendered[len(head) : rendered.index("<|im_end|>")] if rendered.startswith(head) else None


def quoted(text: str) -> str:
    """Ollama's triple-quoted string (a quote run inside would end it early)."""
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def modelfile(gguf_name: str, tokenizer, task_info: dict[str, Any]) -> str:
    lines = [
        "# Ollama: ollama create <name> -f Modelfile && ollama run <name>",
        "# Written by adapterlab from the adapter's chat template, system prompt and stop tokens.",
        f"FROM ./{gguf_name}",
    ]
    chatml = renders_as_chatml(tokenizer)
    system = (task_info.get("prompt") or {}).get("system_prompt")
    if chatml:
        lines.append(f"TEMPLATE {quoted(CHATML_OLLAMA)}")
        # Trained without a system prompt, the adapter saw the one its template inserts: Ollama must send it too.
        system = system or default_system_prompt(tokenizer)
    if system:
        lines.append(f"SYSTEM {quoted(system)}")
    for token_id in (task_info.get("stop") or {}).get("token_ids") or []:
        token = tokenizer.convert_ids_to_tokens(int(token_id))
        lines.append(f"PARAMETER stop {json.dumps(token, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"
