"""Tiny random-weight Hugging Face causal LMs (2 layers, hidden 64, vocab 200) that the LLM and
ONNX decoder tests build; transformers is imported when one is built."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

VOCAB = 200
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=VOCAB)


def gpt2() -> nn.Module:
    import transformers

    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)).eval()


def llama() -> nn.Module:
    import transformers

    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMALL)).eval()


def qwen2() -> nn.Module:
    import transformers

    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SMALL)).eval()


CAUSAL: dict[str, Callable[[], nn.Module]] = {"gpt2": gpt2, "llama": llama, "qwen2": qwen2}
