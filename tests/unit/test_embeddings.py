"""Sentence embeddings (the style metrics' centroids, weak labelling): texts batched by length embed exactly as each
text alone, unit length, and an empty text is zeros."""

import numpy as np
import torch

from adapterlab.embeddings import embed, length_batches


def test_length_batches_cover_every_row_once_and_pad_only_short_rows():
    encoded = [[5, 6, 7], [8], [9, 10], [11, 12, 13], [14]]
    batches = list(length_batches(encoded, 2, pad=0))
    assert sorted(i for rows, _, _ in batches for i in rows) == list(range(5))
    for rows, ids, mask in batches:
        widths = [len(encoded[i]) for i in rows]
        assert ids.shape == (len(rows), max(widths)) and ids.dtype == np.int64
        assert (mask is None) == (len(set(widths)) == 1)  # no mask to build where nothing is padding
        if mask is not None:
            assert mask.sum(axis=1).tolist() == widths and all(ids[r, w:].sum() == 0 for r, w in enumerate(widths))


def test_batched_embeddings_equal_each_text_alone(tiny_encoder_dir):
    texts = ["short", "", "a somewhat longer line about the espresso machine", "two words", "   "]
    together = embed(texts, spec=str(tiny_encoder_dir), batch_size=2)
    alone = torch.cat([embed([text], spec=str(tiny_encoder_dir), batch_size=1) for text in texts])
    assert torch.allclose(together, alone, atol=1e-5)
    norms = together.norm(dim=1)
    assert torch.allclose(norms[[0, 2, 3]], torch.ones(3), atol=1e-5)
    assert together[1].abs().sum() == 0 and together[4].abs().sum() == 0  # empty: similar to nothing
