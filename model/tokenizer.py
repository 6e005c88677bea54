"""Tokenizers behind one small interface: the embedded byte-level default, or any Hugging Face tokenizer.json.

The byte tokenizer needs no files (everything runs offline): ids 0-255 are the UTF-8 bytes, then one id per
special token in ``SPECIAL_TOKENS`` order (256 = ``<|endoftext|>`` ... 262 = ``</tool_calls>``). Special
token strings inside the text encode to their single id.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Protocol

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_calls>",
                  "</tool_calls>")


class Tokenizer(Protocol):
    vocab_size: int
    eos_token_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_id(self, special: str) -> int: ...


class ByteTokenizer:
    """UTF-8 bytes plus the special tokens as single ids. Example::

        tok = ByteTokenizer()
        tok.encode("<|im_start|>hi")  # [257, 104, 105]
        tok.decode([257, 104, 105])   # "<|im_start|>hi"
    """

    def __init__(self) -> None:
        self.special = {s: 256 + i for i, s in enumerate(SPECIAL_TOKENS)}
        self._names = {i: s for s, i in self.special.items()}
        self._split = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_TOKENS) + ")")
        self.vocab_size = 256 + len(SPECIAL_TOKENS)
        self.eos_token_id = self.special["<|endoftext|>"]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._split.split(text):
            if piece in self.special:
                ids.append(self.special[piece])
            elif piece:
                ids.extend(piece.encode("utf-8"))
        return ids

    def decode(self, ids: list[int]) -> str:
        parts, pending = [], bytearray()
        for i in ids:
            if 0 <= i < 256:
                pending.append(i)
                continue
            parts.append(pending.decode("utf-8", errors="replace"))
            pending = bytearray()
            parts.append(self._names.get(i, ""))  # ids past the tokenizer (padded vocab) decode to nothing
        parts.append(pending.decode("utf-8", errors="replace"))
        return "".join(parts)

    def token_id(self, special: str) -> int:
        if special not in self.special:
            raise KeyError(f"{special!r} is not a special token; expected one of {list(self.special)}")
        return self.special[special]


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` via the ``tokenizers`` library (``pip install tokenizers``).

    The end-of-sequence token is ``eos_token`` from a ``tokenizer_config.json`` beside the file when present,
    else the first of ``<|endoftext|>``, ``</s>``, ``<|im_end|>`` the vocabulary has.
    """

    def __init__(self, path: str | Path) -> None:
        try:
            from tokenizers import Tokenizer as _Tokenizer
        except ImportError as exc:  # pragma: no cover - tokenizers is in the hf extra
            raise ImportError("HFTokenizer needs `tokenizers`: pip install 'lightswe[hf]'") from exc
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        self._tok = _Tokenizer.from_file(str(file))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        eos = None
        config_file = file.parent / "tokenizer_config.json"
        if config_file.exists():
            eos = json.loads(config_file.read_text()).get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
        candidates = [eos] if eos else ["<|endoftext|>", "</s>", "<|im_end|>"]
        ids = [self._tok.token_to_id(c) for c in candidates if c and self._tok.token_to_id(c) is not None]
        if not ids:
            raise ValueError(f"{file}: no end-of-sequence token found among {candidates}")
        self.eos_token_id = ids[0]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_id(self, special: str) -> int:
        token = self._tok.token_to_id(special)
        if token is None:
            raise KeyError(f"{special!r} is not in the vocabulary of this tokenizer")
        return token


def load_tokenizer(path: str | Path | None = None) -> ByteTokenizer | HFTokenizer:
    """The byte tokenizer when ``path`` is None, else the ``tokenizer.json`` at ``path`` (file or directory)."""
    return ByteTokenizer() if path is None else HFTokenizer(path)
