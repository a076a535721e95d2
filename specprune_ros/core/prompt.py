"""Prompt construction and tokenization with the checkpoint's own tokenizer.json (no remote code)."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers

PROMPT_TEMPLATE = "In: What action should the robot take to {task}?\nOut:"
#: the prefix before the task words; tokens after it are the "task-relevant" prompt tokens used for scoring
PROMPT_PREFIX = "In: What action should the robot take to"
SPACE_TOKEN_ID = 29871  # "▁": OFT appends it when the tokenized prompt does not end with it
BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<PAD>"


def build_prompt(instruction: str) -> str:
    return PROMPT_TEMPLATE.format(task=instruction.strip().lower())


class PromptTokenizer:
    """Tokenizes OFT prompts: ``[BOS] + ids(prompt) (+ 29871)``."""

    def __init__(self, tokenizer_file: str | Path) -> None:
        self.tok = Tokenizer.from_file(str(tokenizer_file))
        config_file = Path(tokenizer_file).with_name("tokenizer_config.json")
        bos = BOS
        if config_file.exists():
            value = json.loads(config_file.read_text()).get("bos_token", BOS)
            bos = value["content"] if isinstance(value, dict) else value
        bos_id = self.tok.token_to_id(bos)
        if bos_id is None:
            raise ValueError(f"{tokenizer_file}: BOS token {bos!r} is not in the vocabulary")
        self.bos_id = bos_id
        self._cache: dict[str, tuple[list[int], int]] = {}

    def encode(self, instruction: str) -> tuple[list[int], int]:
        """Token ids (starting with BOS, ending with 29871) and how many ids the fixed prefix takes.

        The second value is the number of prompt ids after BOS that belong to ``PROMPT_PREFIX``; ids after
        it (up to the end) are the task-relevant tokens.
        """
        if instruction not in self._cache:
            ids = self.tok.encode(build_prompt(instruction), add_special_tokens=False).ids
            if not ids or ids[-1] != SPACE_TOKEN_ID:
                ids = ids + [SPACE_TOKEN_ID]
            prefix = len(self.tok.encode(PROMPT_PREFIX, add_special_tokens=False).ids)
            self._cache[instruction] = ([self.bos_id] + ids, prefix)
        return self._cache[instruction]


def make_tiny_tokenizer_files(vocab_size: int = 32000) -> dict[str, str]:
    """A Llama-2-shaped tokenizer (character BPE + byte fallback, "▁" = 29871, <PAD> = 32000).

    Not the real Llama vocabulary, but the same normalizer, special ids and byte fallback, so prompt
    layouts behave like the released tokenizer's.
    """
    vocab: dict[str, int] = {UNK: 0, BOS: 1, EOS: 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    chars = [chr(c) for c in range(33, 127)]
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    filler = 0
    while len(vocab) < vocab_size:
        if len(vocab) == SPACE_TOKEN_ID:
            vocab["▁"] = SPACE_TOKEN_ID
            continue
        vocab[f"<unused{filler}>"] = len(vocab)
        filler += 1
    model = models.BPE(vocab=vocab, merges=[], unk_token=UNK, byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([UNK, BOS, EOS])
    tok.add_special_tokens([PAD])
    assert tok.token_to_id(PAD) == vocab_size and tok.token_to_id("▁") == SPACE_TOKEN_ID
    return {
        "tokenizer.json": tok.to_str(),
        "tokenizer_config.json": json.dumps(
            {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD, "add_bos_token": True, "add_eos_token": False}
        ),
        "special_tokens_map.json": json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD}),
        "added_tokens.json": json.dumps({PAD: vocab_size}),
    }
