"""Small synthetic data sets the tests write to disk (kept out of conftest.py so tests can import them)."""

from __future__ import annotations

import csv
from pathlib import Path

LANGS = {
    "en": ("Hello,", "Best regards,\nIT Support"),
    "de": ("Hallo,", "Viele Grüße\nIT-Support"),
    "ru": ("Здравствуйте!", "С уважением,\nСлужба ИТ-поддержки"),
}
TOPICS = ["VPN drops", "printer jam", "password expired", "invoice wrong", "laptop slow", "email down", "Wi-Fi"]


def ticket_rows(n: int = 36) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        lang = list(LANGS)[i % len(LANGS)]
        hello, bye = LANGS[lang]
        topic = TOPICS[i % len(TOPICS)]
        rows.append(
            {
                "ticket_id": f"T{i:03d}",
                "language": lang,
                "subject": f"{topic} #{i}",
                "body": f"Since this morning: {topic}. Room {100 + i}." + " More details here." * (i % 4),
                "answer": f"{hello}\nthank you for reporting {topic}.\n1. Restart the device.\n2. Try again.\n{bye}",
                "needs_details": "true" if i % 5 == 0 else "false",
            }
        )
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


REVIEW_WORDS = {
    "electronics": ["phone battery", "laptop screen", "headphones bass", "телефон заряд", "charger cable"],
    "clothing": ["dress fits", "warm jacket", "футболка размер", "jeans waist", "cotton shirt"],
    "books": ["novel story", "книга сюжет", "paperback pages", "author chapters", "poems edition"],
    "no_product": ["courier late", "курьер опоздал", "restock when", "pickup point closed", "support thanks"],
}
REVIEW_SIZES = {"electronics": 24, "clothing": 14, "books": 8, "no_product": 6}


def review_rows() -> list[dict[str, str]]:
    """Imbalanced, noisy, bilingual reviews over four classes (52 rows)."""
    rows, n = [], 0
    for label, size in REVIEW_SIZES.items():
        words = REVIEW_WORDS[label]
        for i in range(size):
            n += 1
            noise = ["", " https://shop.example/i/" + str(i), " 😍", " &amp; <br>"][i % 4]
            text = f"{words[i % len(words)]} {words[(i + 2) % len(words)]} number {i}{noise}"
            rows.append({"id": f"R{n:03d}", "text": text, "category": label, "thread": f"t{n // 3}"})
    return rows
