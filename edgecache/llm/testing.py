"""A tiny, randomly initialised Llama with a real tokenizer, for hermetic tests.

It has SmolLM2's shape where presses care (grouped-query attention with 3 query heads
per KV head, RoPE, a ChatML chat template) but 4 layers of width 96, so a prefill of a
few hundred tokens takes milliseconds on a CPU. The tokenizer is a byte-level BPE
trained in memory on a fixed corpus, so any text tokenizes and no file or network is
needed. Weights come from a fixed seed: the same call gives the same model.
"""

from __future__ import annotations

from functools import lru_cache

from .model import DEFAULT_ATTN_IMPLEMENTATION, LoadedModel

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A needle hides in a haystack of words.",
    "What is the capital of France? Paris is the capital of France. Berlin is in Germany.",
    "The secret number is 7421. Remember it well. The weather today is sunny and warm.",
    "Key value caches store attention keys and values for every token of the context.",
    "Compression keeps the important tokens and evicts the rest, within a fixed budget!",
    "Sentences end with a period, a question mark or an exclamation mark; lines end too.\n",
)


@lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE tokenizer (~400 tokens) wrapped in PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=4096,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_model(
    num_hidden_layers: int = 4,
    seed: int = 0,
    attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION,
) -> LoadedModel:
    """A fresh tiny Llama (6 query heads, 2 KV heads, head_dim 16) on the CPU, in eval mode."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        attn_implementation=attn_implementation,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    finally:
        # Tests that seed torch themselves must not see their stream shifted by this call.
        torch.random.set_rng_state(generator_state)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    return LoadedModel(model=model, tokenizer=tokenizer, device="cpu", source="tiny-llama")


__all__ = ["tiny_model", "tiny_tokenizer"]
