"""Tokenizers behind one small interface: the embedded byte-level default, or any Hugging Face tokenizer.json.

The byte tokenizer needs no files (everything runs offline): ids 0-255 are the UTF-8 bytes, then one id per
special token in ``SPECIAL_TOKENS`` order (256 = ``<|endoftext|>`` ... 262 = ``</tool_calls>``).

Two encoders, one for each kind of text:

- ``encode(text)``: the chat template's own text (glue, and the markup of a model's turn): special-token
  strings inside the text become their single control id, as Hugging Face's ``encode`` does.
- ``encode_ordinary(text)`` (tiktoken's name): data, i.e. everything the environment says (task statement,
  file contents, command output): a special-token string in it is encoded as ordinary text, so it can never
  become a control token in the stream the learner trains on. ``decode(encode_ordinary(t)) == t``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Protocol

from lightswe.errors import UserInputError

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_calls>",
                  "</tool_calls>")


class Tokenizer(Protocol):
    vocab_size: int
    eos_token_id: int

    def encode(self, text: str) -> list[int]: ...

    def encode_ordinary(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_id(self, special: str) -> int: ...


class ByteTokenizer:
    """UTF-8 bytes plus the special tokens as single ids. Example::

        tok = ByteTokenizer()
        tok.encode("<|im_start|>hi")  # [257, 104, 105]
        tok.decode([257, 104, 105])   # "<|im_start|>hi"
        tok.encode_ordinary("<think>")  # [60, 116, 104, 105, 110, 107, 62]: the bytes, never id 259
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

    def encode_ordinary(self, text: str) -> list[int]:
        """The UTF-8 bytes of ``text``; special-token strings stay bytes (UnicodeEncodeError on lone surrogates)."""
        return list(text.encode("utf-8"))

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

    Control ids are every added token of the file, special or not (Qwen-style files add ``<think>`` and
    ``<tool_call>`` as non-special tokens). ``encode_ordinary`` uses a copy of the tokenizer in which every
    added token is marked special and ``encode_special_tokens`` is on, so the added vocabulary matches
    nothing and the text goes through the normaliser, pre-tokeniser and model like any other; the result is
    checked to hold no control id.
    """

    def __init__(self, path: str | Path) -> None:
        try:
            from tokenizers import Tokenizer as _Tokenizer
        except ImportError as exc:  # pragma: no cover - tokenizers is in the hf extra
            raise ImportError("HFTokenizer needs `tokenizers`: pip install 'lightswe[hf]'") from exc
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise UserInputError(f"{file}: does not exist; fix: pass a tokenizer.json file (or a checkpoint directory "
                                 "holding one), or leave it out for the built-in byte tokenizer")
        try:
            self._tok = _Tokenizer.from_file(str(file))
        except Exception as err:  # tokenizers raises a bare Exception for a file it cannot parse
            raise UserInputError(f"{file}: not a Hugging Face tokenizer.json ({str(err).splitlines()[0][:120]}); fix: "
                                 "pass the tokenizer.json a transformers tokenizer saves (save_pretrained), or leave "
                                 "it out for the built-in byte tokenizer") from None
        self._file = file
        spec = json.loads(self._tok.to_str())
        for added in spec.get("added_tokens") or []:
            added["special"] = True
        self._ordinary = _Tokenizer.from_str(json.dumps(spec))
        self._ordinary.encode_special_tokens = True
        self.control_ids = frozenset(self._tok.get_added_tokens_decoder())
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        eos = None
        config_file = file.parent / "tokenizer_config.json"
        if config_file.exists():
            eos = json.loads(config_file.read_text()).get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
        candidates = [eos] if eos else ["<|endoftext|>", "</s>", "<|im_end|>"]
        ids = [self._tok.token_to_id(c) for c in candidates if c and self._tok.token_to_id(c) is not None]
        if not ids:
            raise UserInputError(f"{file}: no end-of-sequence token found among {candidates}; fix: name it as "
                                 "\"eos_token\" in a tokenizer_config.json beside the file")
        self.eos_token_id = ids[0]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_ordinary(self, text: str) -> list[int]:
        ids = self._ordinary.encode(text, add_special_tokens=False).ids
        if self.control_ids.isdisjoint(ids):
            return ids
        # the model's merges themselves spell a control token: encode one character at a time instead
        ids = [i for char in text for i in self._ordinary.encode(char, add_special_tokens=False).ids]
        if self.control_ids.isdisjoint(ids):
            return ids
        bad = sorted(self.control_ids.intersection(ids))[:5]
        raise UserInputError(f"{self._file}: this tokenizer cannot encode {text[:80]!r} without its control ids "
                             f"{bad} (a single character is an added token); fix: remove that added token, or "
                             "use a tokenizer whose added tokens are markup only")

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_id(self, special: str) -> int:
        token = self._tok.token_to_id(special)
        if token is None:
            raise KeyError(f"{special!r} is not in the vocabulary of this tokenizer; the chat template needs "
                           f"{list(SPECIAL_TOKENS[1:3])}: add them as special tokens to the tokenizer.json")
        return token


def load_tokenizer(path: str | Path | None = None) -> ByteTokenizer | HFTokenizer:
    """The byte tokenizer when ``path`` is None, else the ``tokenizer.json`` at ``path`` (file or directory)."""
    return ByteTokenizer() if path is None else HFTokenizer(path)
