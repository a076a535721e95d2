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
    return PROMPT_TEMPLATE.format(task=instruction.lower())  # as OFT: lower-cased, not stripped


class PromptTokenizer:
    """Tokenizes OFT prompts: ``[BOS] + ids(prompt) (+ 29871)``."""

    def __init__(self, tokenizer_file: str | Path) -> None:
        self.tok = Tokenizer.from_file(str(tokenizer_file))
        config_file = Path(tokenizer_file).with_name("tokenizer_config.json")
        bos = BOS
        if config_file.exists():
            try:
                settings = json.loads(config_file.read_bytes().decode("utf-8"))
                value = settings.get("bos_token", BOS)
                bos = value["content"] if isinstance(value, dict) else value
            except (ValueError, AttributeError, KeyError, TypeError) as err:
                raise ValueError(f"{config_file}: not a tokenizer configuration ({type(err).__name__}: {err})") from None
        bos_id = self.tok.token_to_id(bos)
        if bos_id is None:
            raise ValueError(f"{tokenizer_file}: BOS token {bos!r} is not in the vocabulary")
        self.bos_id = bos_id
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
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


#: words that become single tokens in generated tokenizers, so prompts have Llama-like lengths
COMMON_WORDS = tuple(
    """In: What action should the robot take to Out:
    a an the on in into onto of to from at top bottom left right front back middle side edge center
    and then it its
    pick up put place push pull open close turn lift move stack grasp drop slide rotate
    red green blue yellow purple cyan white black orange pink brown gray
    cube ball triangle block plate bowl cup mug drawer cabinet stove basket box bottle can tray shelf
    small large big tiny""".split()
)


def make_tiny_tokenizer_files(words=COMMON_WORDS, vocab_size: int = 32000) -> dict[str, str]:
    """A Llama-2-shaped BPE tokenizer whose merges turn each of ``words`` into one token.

    Ids 0/1/2 = <unk>/<s>/</s>, 3..258 byte fallback, then printable ASCII characters, then the merged
    word pieces; "▁" (29871) and <PAD> (= vocab_size) as in Llama-2. Words are merged after a leading "▁"
    (the normalizer turns spaces into "▁" and prepends one; "Out:" follows a newline and is merged bare)
    by left-to-right extension merges (``("▁re", "d") -> "▁red"``), so merges never compete across word
    boundaries. Other words fall back to characters. Not the real Llama vocabulary, but the same
    normalizer, special ids and byte fallback, and prompts of about the same length.
    """
    vocab: dict[str, int] = {"▁": SPACE_TOKEN_ID}
    next_id = 0

    def add(token: str) -> None:
        nonlocal next_id
        if token in vocab:
            return
        if next_id == SPACE_TOKEN_ID:
            next_id += 1
        if next_id >= vocab_size:
            raise ValueError(f"{len(vocab)} tokens do not fit a vocabulary of {vocab_size}")
        vocab[token] = next_id
        next_id += 1

    for token in (UNK, BOS, EOS, *(f"<0x{b:02X}>" for b in range(256)), *(chr(c) for c in range(33, 127))):
        add(token)
    pieces = {"▁" + w for w in words} | ({"Out:"} if "Out:" in words else set())
    by_len: dict[int, list[tuple[str, str]]] = {}
    seen: set[tuple[str, str]] = set()
    for piece in sorted(pieces, key=lambda x: (len(x), x)):
        for k in range(2, len(piece) + 1):
            pair = (piece[: k - 1], piece[k - 1])
            if pair not in seen:
                seen.add(pair)
                by_len.setdefault(k, []).append(pair)
    merges = [pair for k in sorted(by_len) for pair in by_len[k]]
    for left, right in merges:
        add(left + right)
    filler = 0
    while next_id < vocab_size:
        add(f"<unused{filler}>")
        filler += 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK, byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([UNK, BOS, EOS])
    tok.add_special_tokens([PAD])
    if tok.token_to_id(PAD) != vocab_size or tok.token_to_id("▁") != SPACE_TOKEN_ID:
        raise RuntimeError("tokenizer ids do not follow the Llama-2 layout")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD}
    return {
        "tokenizer.json": tok.to_str(),
        "tokenizer_config.json": json.dumps({**special, "add_bos_token": True, "add_eos_token": False}),
        "special_tokens_map.json": json.dumps(special),
        "added_tokens.json": json.dumps({PAD: vocab_size}),
    }
