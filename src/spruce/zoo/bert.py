"""BERT-base with a sequence-classification head, built from config only.

``build("bert_base", "qqp")`` returns a randomly initialised
``transformers.BertForSequenceClassification`` with the default ``BertConfig``
(bert-base-uncased sizes: 12 layers, hidden 768, 12 heads, vocab 30522); the
``bert`` encoder has 109,482,240 params and the head adds ``768 * num_labels +
num_labels``. Nothing is downloaded. Any ``BertConfig`` field can be overridden
through kwargs, e.g. ``build("bert_base", num_hidden_layers=2)``.

Call it as ``model(**example_input("bert_base"))`` or ``model(input_ids)``; it
returns the HF ``SequenceClassifierOutput`` (logits: ``out.logits``, [B, labels]).

``transformers`` is imported lazily: it is the optional ``[hf]`` extra.
"""

from __future__ import annotations

from torch import nn

from .registry import Dataset, register


@register("bert_base", modality="text")
def bert_base(ds: Dataset, num_classes: int, attn_implementation: str = "sdpa",
              **config_overrides) -> nn.Module:
    try:
        from transformers import BertConfig, BertForSequenceClassification
    except ImportError as e:
        raise ImportError("bert_base needs the [hf] extra: pip install 'spruce[hf]'") from e

    config = BertConfig(num_labels=num_classes, attn_implementation=attn_implementation,
                        **config_overrides)
    return BertForSequenceClassification(config)
