"""The CLIP byte-level BPE tokenizer (Radford et al. 2021), as Stable Diffusion pipelines call it.

A prompt goes through the same stages as transformers' ``CLIPTokenizer`` (the ``tokenizers``-backed one):

1. special tokens (``<|startoftext|>``, ``<|endoftext|>``, SD 2.x's pad ``!``) are cut out of the text, those
   marked ``normalized`` after step 2, the others before it;
2. normalisation: Unicode NFC, every run of white space becomes one space, lower-casing character by character;
3. word splitting with CLIP's pattern (contractions, letter runs, single digits, runs of other symbols), each
   word then split again with GPT-2's byte-level pattern;
4. each word's UTF-8 bytes become printable characters (GPT-2's byte-to-unicode table), ``</w>`` marks its last
   one, and merges are applied by rank (Sennrich et al. 2016) until none applies.

``__call__`` adds ``<|startoftext|>`` / ``<|endoftext|>``, truncates to ``model_max_length`` with a
:class:`TruncationWarning` naming what was cut, and pads with the configured pad token.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json
import re
import sys
import unicodedata
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import ConfigError

END_OF_WORD = "</w>"
CLIP_MERGES = 49152 - 256 - 2  # the merges of CLIP's 49,408-token vocabulary (256 bytes twice, merges, 2 specials)
DEFAULT_MAX_LENGTH = 77  # CLIP's context length, used when tokenizer_config.json does not give model_max_length
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
DEFAULT_SPECIAL_TOKENS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
}
TOKENIZER_CLASSES = ("CLIPTokenizer", "CLIPTokenizerFast")
_BPE_CACHE_SIZE = 65536  # words kept in the per-tokenizer BPE cache

# Unicode White_Space, the set the regex engine of `tokenizers` means by \s (Python's \s adds U+001C..U+001F).
_WHITE_SPACE = "\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"


class TruncationWarning(UserWarning):
    """A prompt was longer than the text encoder's context and its end was cut off."""


@dataclass(frozen=True)
class SpecialToken:
    """A token matched whole in the text; ``normalized`` ones are matched after normalisation."""

    content: str
    normalized: bool = False


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (Radford et al. 2019), in CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    # The remaining bytes (controls, space, soft hyphen, ...) take the code points from 256 upwards, in byte order.
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(others)})
    return table


@functools.cache
def _category_class(major: str) -> str:
    """The body of a ``re`` character class matching every code point whose general category is ``major``*."""
    ranges: list[str] = []
    start = None
    for code in range(sys.maxunicode + 2):
        inside = code <= sys.maxunicode and unicodedata.category(chr(code))[0] == major
        if inside and start is None:
            start = code
        elif not inside and start is not None:
            ranges.append(f"\\U{start:08x}-\\U{code - 1:08x}")
            start = None
    return "".join(ranges)


@functools.cache
def _word_patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """CLIP's word pattern and GPT-2's byte-level pattern, with \\p{L} / \\p{N} spelled out from ``unicodedata``."""
    letter, number, space = _category_class("L"), _category_class("N"), _WHITE_SPACE
    clip = (
        r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
        rf"|[{letter}]+|[{number}]|[^{space}{letter}{number}]+"
    )
    # GPT-2's pattern without its white-space alternatives and optional leading space: CLIP's words have none.
    byte_level = rf"'s|'t|'re|'ve|'m|'ll|'d|[{letter}]+|[{number}]+|[^{space}{letter}{number}]+"
    return re.compile(clip), re.compile(byte_level)


@functools.cache
def _white_space_runs() -> re.Pattern[str]:
    return re.compile(f"[{_WHITE_SPACE}]+")


def normalize(text: str) -> str:
    """NFC, white-space runs -> one space, then lower-case each character on its own (no final-sigma rule)."""
    text = _white_space_runs().sub(" ", unicodedata.normalize("NFC", text))
    return "".join(char.lower() for char in text)


def split_words(text: str) -> list[str]:
    """The words BPE runs on: CLIP's split of normalised text, each piece re-split by GPT-2's byte-level rule."""
    clip, byte_level = _word_patterns()
    return [word for piece in clip.findall(text) for word in byte_level.findall(piece)]


class CLIPTokenizer:
    """CLIP's byte-level BPE tokenizer (Radford et al. 2021) with transformers' special-token and padding rules."""

    def __init__(
        self,
        vocab: Mapping[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        bos_token: str = DEFAULT_SPECIAL_TOKENS["bos_token"],
        eos_token: str = DEFAULT_SPECIAL_TOKENS["eos_token"],
        unk_token: str = DEFAULT_SPECIAL_TOKENS["unk_token"],
        pad_token: str = DEFAULT_SPECIAL_TOKENS["pad_token"],
        special_tokens: Sequence[SpecialToken] | None = None,
        model_max_length: int = DEFAULT_MAX_LENGTH,
    ):
        self.vocab = dict(vocab)
        self.id_to_token = {i: token for token, i in self.vocab.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {char: byte for byte, char in self.byte_encoder.items()}
        names = {"bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token, "pad_token": pad_token}
        missing = {key: token for key, token in names.items() if token not in self.vocab}
        if missing:
            raise ConfigError(f"special tokens {missing} are not in the vocabulary")
        self.bos_token_id = self.vocab[bos_token]
        self.eos_token_id = self.vocab[eos_token]
        self.unk_token_id = self.vocab[unk_token]
        self.pad_token_id = self.vocab[pad_token]
        if model_max_length < 2:
            raise ConfigError(
                f"model_max_length={model_max_length} leaves no room for <|startoftext|> and <|endoftext|>"
            )
        self.model_max_length = model_max_length
        if special_tokens is None:
            special_tokens = [SpecialToken(token) for token in dict.fromkeys(names.values())]
        self._raw_specials = _special_pattern([t.content for t in special_tokens if not t.normalized])
        self._normalized_specials = _special_pattern([t.content for t in special_tokens if t.normalized])
        self._word_ids = functools.lru_cache(maxsize=_BPE_CACHE_SIZE)(self._bpe_ids)

    # ------------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, folder: str | Path, subfolder: str | None = None) -> CLIPTokenizer:
        """Load ``tokenizer.json`` or ``vocab.json`` + ``merges.txt`` with the optional config files beside them."""
        root = Path(folder) / subfolder if subfolder else Path(folder)
        if not root.is_dir():
            raise ConfigError(f"tokenizer folder {root} does not exist")
        settings = _read_settings(root)
        if (root / "tokenizer.json").is_file():
            vocab, merges, special_tokens = _read_tokenizer_json(root / "tokenizer.json")
            # Special tokens the config files name but tokenizer.json does not list are added as transformers does.
            listed = {token.content for token in special_tokens}
            special_tokens += [token for token in settings.special_tokens if token.content not in listed]
        elif (root / "vocab.json").is_file() or (root / "merges.txt").is_file():
            vocab = _read_vocab(_require(root / "vocab.json"))
            merges = _read_merges(_require(root / "merges.txt"), vocab)
            special_tokens = settings.special_tokens
        else:
            raise ConfigError(f"no tokenizer files in {root}: expected tokenizer.json, or vocab.json and merges.txt")
        return cls(
            vocab,
            merges,
            **settings.names,
            special_tokens=special_tokens,
            model_max_length=settings.model_max_length,
        )

    @classmethod
    def from_bpe_file(cls, path: str | Path, pad_token: str = DEFAULT_SPECIAL_TOKENS["pad_token"]) -> CLIPTokenizer:
        """CLIP's tokenizer from OpenAI's merge list ``bpe_simple_vocab_16e6.txt.gz`` (Radford et al. 2021): the
        256 byte symbols, each also with ``</w>``, the first 48,894 merges in rank order, then the two special
        tokens: the 49,408-token vocabulary every SD 1.x / 2.x / SDXL tokenizer has (only the pad token differs)."""
        lines = gzip.open(path).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGES + 1]]
        symbols = list(bytes_to_unicode().values())
        tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(pair) for pair in merges)]
        tokens += [DEFAULT_SPECIAL_TOKENS["bos_token"], DEFAULT_SPECIAL_TOKENS["eos_token"]]
        return cls({token: i for i, token in enumerate(tokens)}, merges, pad_token=pad_token)

    # ----------------------------------------------------------------------------------------------- encoding

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text`` alone, without ``<|startoftext|>`` / ``<|endoftext|>``."""
        ids: list[int] = []
        for raw, raw_special in _split_on(text, self._raw_specials):
            if raw_special is not None:
                ids.append(self.vocab[raw_special])
                continue
            for piece, special in _split_on(normalize(raw), self._normalized_specials):
                if special is not None:
                    ids.append(self.vocab[special])
                else:
                    ids.extend(i for word in split_words(piece) for i in self._word_ids(word))
        return ids

    def _bpe_ids(self, word: str) -> tuple[int, ...]:
        """Byte-encode one word, mark its end with ``</w>``, merge pairs by rank; return the pieces' ids."""
        chars = [self.byte_encoder[b] for b in word.encode("utf-8")]
        symbols = [*chars[:-1], chars[-1] + END_OF_WORD]
        while len(symbols) > 1:
            pair = min(itertools.pairwise(symbols), key=lambda p: self.ranks.get(p, len(self.ranks)))
            if pair not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):  # every occurrence, left to right, without overlaps
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                    merged.append(pair[0] + pair[1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(self.vocab.get(symbol, self.unk_token_id) for symbol in symbols)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``: pieces joined, ``</w>`` read as a space, bytes decoded as UTF-8 (bad bytes replaced)."""
        text = "".join(self.id_to_token[int(i)] for i in ids).replace(END_OF_WORD, " ")
        data = b"".join(bytes([self.byte_decoder[c]]) if c in self.byte_decoder else c.encode() for c in text)
        return data.decode("utf-8", errors="replace").strip()

    def __call__(
        self,
        prompts: str | Sequence[str],
        padding: Literal["max_length", "longest"] = "max_length",
        max_length: int | None = None,
        truncation: bool = True,
    ) -> torch.Tensor:
        """``input_ids`` [B, L]: ``<|startoftext|>`` ids ``<|endoftext|>`` then pad ids, as SD pipelines ask for.

        ``padding="max_length"`` pads to ``max_length`` (default ``model_max_length``); ``"longest"`` to the
        longest prompt of the batch. ``truncation`` cuts prompts to ``max_length`` tokens, with a warning.
        """
        if padding not in ("max_length", "longest"):
            raise ConfigError(f"padding={padding!r} is not supported; use 'max_length' or 'longest'")
        limit = self.model_max_length if max_length is None else max_length
        if limit < 2:
            raise ConfigError(f"max_length={limit} leaves no room for <|startoftext|> and <|endoftext|>")
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        contents = [self.encode(prompt) for prompt in batch]
        too_long = [i for i, ids in enumerate(contents) if len(ids) > limit - 2]
        if too_long and not truncation:
            lengths = ", ".join(f"prompt {i}: {len(contents[i]) + 2}" for i in too_long)
            raise ConfigError(f"prompts longer than max_length={limit} tokens ({lengths}); pass truncation=True")
        if too_long:
            cut = [self.decode(contents[i][limit - 2 :]) for i in too_long]
            warnings.warn(
                "The following part of your input was truncated because CLIP can only handle sequences up to "
                f"{limit} tokens: {cut}",
                TruncationWarning,
                stacklevel=2,
            )
        rows = [[self.bos_token_id, *ids[: limit - 2], self.eos_token_id] for ids in contents]
        width = limit if padding == "max_length" else max((len(row) for row in rows), default=2)
        padded = [row + [self.pad_token_id] * (width - len(row)) for row in rows]
        return torch.tensor(padded, dtype=torch.long).reshape(len(padded), width)


# ---------------------------------------------------------------------------------------------- special tokens


def _special_pattern(contents: Sequence[str]) -> re.Pattern[str] | None:
    """One alternation of the literal tokens, longest first so that no token hides a longer one."""
    if not contents:
        return None
    ordered = sorted(set(contents), key=len, reverse=True)
    return re.compile("|".join(re.escape(token) for token in ordered))


def _split_on(text: str, pattern: re.Pattern[str] | None) -> Iterator[tuple[str, str | None]]:
    """``text`` as (plain piece, None) and ("", special token) parts, in order."""
    start = 0
    if pattern is not None:
        for match in pattern.finditer(text):
            yield text[start : match.start()], None
            yield "", match.group()
            start = match.end()
    yield text[start:], None


# --------------------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class _Settings:
    """What ``tokenizer_config.json`` and ``special_tokens_map.json`` say about special tokens and length."""

    names: dict[str, str]
    special_tokens: list[SpecialToken]
    model_max_length: int


def _require(path: Path) -> Path:
    if not path.is_file():
        raise ConfigError(f"{path} is missing: a CLIP tokenizer needs vocab.json and merges.txt, or tokenizer.json")
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None


def _read_json_object(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def _special_token(value: Any, key: str, source: Path) -> SpecialToken | None:
    """A special-token entry: a plain string (matched on the raw text) or an AddedToken object."""
    if value is None:
        return None
    if isinstance(value, str):
        return SpecialToken(value)
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return SpecialToken(value["content"], bool(value.get("normalized", False)))
    raise ConfigError(f"{source}: {key} must be a string or an object with a 'content' string, got {value!r}")


def _read_settings(root: Path) -> _Settings:
    """Special tokens and model_max_length; special_tokens_map.json overrides tokenizer_config.json per key."""
    tokens: dict[str, SpecialToken] = {key: SpecialToken(value) for key, value in DEFAULT_SPECIAL_TOKENS.items()}
    model_max_length = DEFAULT_MAX_LENGTH
    config_path = root / "tokenizer_config.json"
    if config_path.is_file():
        config = _read_json_object(config_path)
        tokenizer_class = config.get("tokenizer_class")
        if tokenizer_class is not None and tokenizer_class not in TOKENIZER_CLASSES:
            raise ConfigError(
                f"{config_path}: tokenizer_class={tokenizer_class!r} is not supported; "
                f"only {' and '.join(TOKENIZER_CLASSES)} (CLIP's byte-level BPE)"
            )
        model_max_length = config.get("model_max_length", DEFAULT_MAX_LENGTH)
        if not isinstance(model_max_length, int) or isinstance(model_max_length, bool) or model_max_length < 2:
            raise ConfigError(f"{config_path}: model_max_length must be an integer >= 2, got {model_max_length!r}")
        tokens.update(_special_tokens_in(config, config_path))
    map_path = root / "special_tokens_map.json"
    if map_path.is_file():
        tokens.update(_special_tokens_in(_read_json_object(map_path), map_path))
    # One entry per distinct token; the last key naming it (bos, eos, unk, pad order) decides `normalized`.
    by_content = {token.content: token for token in tokens.values()}
    return _Settings(
        names={key: token.content for key, token in tokens.items()},
        special_tokens=list(by_content.values()),
        model_max_length=model_max_length,
    )


def _special_tokens_in(config: dict[str, Any], source: Path) -> dict[str, SpecialToken]:
    found = {key: _special_token(config.get(key), key, source) for key in SPECIAL_TOKEN_KEYS}
    return {key: token for key, token in found.items() if token is not None}


def _read_vocab(path: Path) -> dict[str, int]:
    vocab = _read_json(path)
    if not isinstance(vocab, dict) or not all(
        isinstance(token, str) and isinstance(i, int) and not isinstance(i, bool) for token, i in vocab.items()
    ):
        raise ConfigError(f"{path} must hold a JSON object mapping each token to its integer id")
    return vocab


def _parse_merges(lines: Sequence[Any], vocab: Mapping[str, int], source: str) -> list[tuple[str, str]]:
    """Merge rules as pairs; each entry is "a b" or [a, b], and a, b and ab must all be in the vocabulary."""
    merges = []
    for number, entry in lines:
        parts = entry.split(" ") if isinstance(entry, str) else entry
        if not isinstance(parts, list) or len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
            raise ConfigError(f"{source} {number}: expected a merge of two tokens like 'a b', got {entry!r}")
        first, second = parts
        unknown = [token for token in (first, second, first + second) if token not in vocab]
        if unknown:
            raise ConfigError(f"{source} {number}: merge {entry!r} uses {unknown[0]!r}, which is not in the vocabulary")
        merges.append((first, second))
    return merges


def _read_merges(path: Path, vocab: Mapping[str, int]) -> list[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    numbered = [
        (number, line.rstrip("\r"))
        for number, line in enumerate(lines, start=1)
        if line.strip() and not line.startswith("#version")
    ]
    return _parse_merges([(f"line {n}", line) for n, line in numbered], vocab, str(path))


def _read_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]], list[SpecialToken]]:
    """Vocabulary, merges and added tokens of a ``tokenizers`` file whose model is CLIP's BPE."""
    data = _read_json_object(path)
    model = data.get("model")
    kind = model.get("type") if isinstance(model, dict) else None
    if kind != "BPE":
        raise ConfigError(f"{path}: model.type={kind!r} is not supported; only 'BPE' (CLIP's byte-level BPE)")
    # BPE options CLIP does not use must be at their neutral value (the first one listed).
    supported = {
        "end_of_word_suffix": (END_OF_WORD,),
        "continuing_subword_prefix": ("", None),
        "dropout": (None,),
        "ignore_merges": (False, None),
        "byte_fallback": (False, None),
    }
    for key, allowed in supported.items():
        if model.get(key) not in allowed:
            raise ConfigError(
                f"{path}: model.{key}={model.get(key)!r} is not supported; CLIP's BPE uses {allowed[0]!r}"
            )
    vocab = model.get("vocab")
    merges = model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, list):
        raise ConfigError(f"{path}: model.vocab must map tokens to ids and model.merges must list the merges")
    vocab = dict(vocab)
    special_tokens = []
    for entry in data.get("added_tokens") or []:
        if not (isinstance(entry, dict) and isinstance(entry.get("content"), str) and isinstance(entry.get("id"), int)):
            raise ConfigError(f"{path}: each added token needs a 'content' string and an integer 'id', got {entry!r}")
        if any(entry.get(flag) for flag in ("lstrip", "rstrip", "single_word")):
            raise ConfigError(f"{path}: added token {entry['content']!r} sets lstrip, rstrip or single_word")
        vocab.setdefault(entry["content"], entry["id"])
        special_tokens.append(SpecialToken(entry["content"], bool(entry.get("normalized", False))))
    numbered = [(f"model.merges[{i}]", entry) for i, entry in enumerate(merges)]
    return vocab, _parse_merges(numbered, vocab, str(path)), special_tokens
