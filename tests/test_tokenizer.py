"""CLIPTokenizer: token ids equal to transformers' CLIPTokenizer for both file formats and SD 1.x / 2.x padding.

The vocabulary is the real CLIP one, derived from ``fixtures/clip-bpe`` as open_clip and transformers derive it.
In transformers 5 ``CLIPTokenizerFast`` is another name for the ``tokenizers``-backed ``CLIPTokenizer`` (the slow
Python tokenizer is gone), so that one class is the oracle; Stable Diffusion pipelines use it.
"""

import json
import random
import shutil
import unicodedata
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from tiny_sd import write_clip_vocab

from schedcmp.core.errors import ConfigError
from schedcmp.core.models.tokenizer import CLIPTokenizer, TruncationWarning, normalize

FIXTURES = Path(__file__).parent / "fixtures"
CONFIGS = FIXTURES / "clip-tokenizer"

PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "A Photo Of An ASTRONAUT, riding a horse!",
    "",
    "   ",
    "!",
    "multiple   spaces\tand a tab\nand a newline  ",
    "punctuation: hello, world... (yes) [no] {maybe}; a-b_c/d\\e @#$%^&*+=<>?|~`",
    "numbers 1 12 2024 3.14159 1,000,000 1st 2nd 3rd",
    "apostrophes: I'm you're we've they'll she'd don't it's ''quoted'' ?!'s",
    "UPPER'S AND'LL CONTRACTIONS'RE",
    "unicode: café naïve façade ÅNGSTRÖM straße ﬁne İstanbul ΟΔΟΣ Ελληνικά Кириллица",
    "e\u0301 combining accent vs é precomposed",
    "cjk 日本語のテキスト 中文字符 한국어 텍스트",
    "arabic العربية hindi हिन्दी thai ภาษาไทย",
    "digits in scripts ١٢٣ ४५६ ½ ² Ⅻ",
    "emoji 🐶👍🏽 family 👨\u200d👩\u200d👧 flags 🇫🇷 ❤️",
    "control \x1c\x1f\x00 characters and \u2028 line separators \u3000 ideographic space",
    "literal special tokens <|startoftext|> and <|endoftext|> inside",
    "cased special tokens x<|EndOfText|>! <|StartOfText|>",
    "exclamation! marks!! everywhere!!! ?!",
    "masterpiece, best quality, ultra-detailed, 8k, (cinematic lighting:1.2), a cat wearing a hat",
    "a very long prompt " * 20,
    " ".join(f"word{i}" for i in range(80)),
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
]

FOLDERS = ["sd1-vocab", "sd2-vocab", "sd1-tokenizer-json", "sd2-tokenizer-json", "sd1-json-string-merges", "bare-vocab"]


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory) -> Path:
    """vocab.json + merges.txt derived from the CLIP BPE file (open_clip's construction)."""
    return write_clip_vocab(tmp_path_factory.mktemp("clip-bpe"))


@pytest.fixture(scope="module")
def folders(bpe_folder, tmp_path_factory) -> dict[str, Path]:
    """Tokenizer folders in both file formats, with SD 1.x and SD 2.x special-token configs."""
    root = tmp_path_factory.mktemp("tokenizers")
    made = {}
    for name, configs in [("sd1-vocab", "sd1"), ("sd2-vocab", "sd2"), ("bare-vocab", None)]:
        made[name] = root / name
        shutil.copytree(bpe_folder, made[name])
        if configs:
            for file in (CONFIGS / configs).glob("*.json"):
                shutil.copy(file, made[name])
    for style in ("sd1", "sd2"):
        made[f"{style}-tokenizer-json"] = root / f"{style}-tokenizer-json"
        transformers.CLIPTokenizer.from_pretrained(made[f"{style}-vocab"]).save_pretrained(
            made[f"{style}-tokenizer-json"]
        )
    # The older tokenizers format writes each merge as one "a b" string rather than an [a, b] pair.
    made["sd1-json-string-merges"] = root / "sd1-json-string-merges"
    shutil.copytree(made["sd1-tokenizer-json"], made["sd1-json-string-merges"])
    data = json.loads((made["sd1-json-string-merges"] / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["merges"] = [" ".join(pair) for pair in data["model"]["merges"]]
    (made["sd1-json-string-merges"] / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    return made


@pytest.fixture(scope="module")
def pairs(folders) -> dict[str, tuple[CLIPTokenizer, transformers.CLIPTokenizer]]:
    """(ours, transformers') tokenizer for each folder, loaded from the same files."""
    return {
        name: (CLIPTokenizer.from_pretrained(path), transformers.CLIPTokenizer.from_pretrained(path))
        for name, path in folders.items()
    }


def reference_ids(tokenizer, prompts, **kwargs) -> torch.Tensor:
    """transformers' ids with the arguments SD pipelines pass (77: a bare vocab.json has no model_max_length)."""
    options = {"padding": "max_length", "max_length": 77, "truncation": True, **kwargs}
    return tokenizer(prompts, return_tensors="pt", **options).input_ids


def quiet_call(tokenizer: CLIPTokenizer, prompts, **kwargs) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        return tokenizer(prompts, **kwargs)


# ------------------------------------------------------------------------------------------------- parity


def test_derived_vocabulary_is_clips(pairs):
    """49408 tokens with CLIP's well-known ids: "a photo of a cat" is 320 1125 539 320 2368."""
    ours, theirs = pairs["sd1-vocab"]
    assert len(ours.vocab) == 49408 == len(theirs)
    assert (ours.vocab["!"], ours.bos_token_id, ours.eos_token_id) == (0, 49406, 49407)
    assert ours.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]


@pytest.mark.parametrize("folder", FOLDERS)
@pytest.mark.parametrize("prompt", PROMPTS, ids=range(len(PROMPTS)))
def test_token_ids_equal_transformers(pairs, folder, prompt):
    ours, theirs = pairs[folder]
    expected = reference_ids(theirs, prompt)
    actual = quiet_call(ours, prompt)
    assert actual.dtype == torch.long
    assert actual.tolist() == expected.tolist()


@pytest.mark.parametrize("folder", FOLDERS)
def test_batch_equals_transformers(pairs, folder):
    ours, theirs = pairs[folder]
    assert quiet_call(ours, PROMPTS).tolist() == reference_ids(theirs, PROMPTS).tolist()


@pytest.mark.parametrize("folder", ["sd1-vocab", "sd2-tokenizer-json"])
def test_padding_longest_equals_transformers(pairs, folder):
    ours, theirs = pairs[folder]
    prompts = ["a cat", "a photo of a dog on the moon"]
    expected = theirs(prompts, padding="longest", return_tensors="pt").input_ids
    assert ours(prompts, padding="longest").tolist() == expected.tolist()


@pytest.mark.parametrize("folder", ["sd1-vocab", "sd2-tokenizer-json"])
def test_random_unicode_equals_transformers(pairs, folder):
    """Seeded strings over long-established scripts, symbols, marks and controls (Unicode <= 14 code points)."""
    ours, theirs = pairs[folder]
    blocks = [(0x0, 0x250), (0x300, 0x530), (0x600, 0x700), (0x900, 0x980), (0x2000, 0x2070), (0x3000, 0x3100)]
    blocks += [(0x4E00, 0x4E80), (0xAC00, 0xAC40), (0x1F300, 0x1F700)]
    rng = random.Random(0)
    prompts = []
    while len(prompts) < 200:
        text = "".join(chr(rng.randrange(*rng.choice(blocks))) for _ in range(rng.randint(1, 25)))
        if all(unicodedata.category(c) not in ("Cn", "Cs") for c in text):
            prompts.append(text)
    assert quiet_call(ours, prompts).tolist() == reference_ids(theirs, prompts).tolist()


def test_lowercasing_is_per_character_like_tokenizers():
    assert normalize("ΟΔΟΣ  Σ\t\u3000X") == "οδοσ σ x"


# ---------------------------------------------------------------------------------------- SD 1.x / 2.x rules


def test_sd1_pads_with_endoftext(pairs):
    ours, _ = pairs["sd1-vocab"]
    ids = ours("a cat!")
    assert ours.pad_token_id == 49407
    assert ids[0, :6].tolist() == [49406, 320, 2368, 256, 49407, 49407]
    assert ids.shape == (1, 77)


def test_sd2_pads_with_exclamation_mark_id_0(pairs):
    ours, _ = pairs["sd2-vocab"]
    ids = ours("a cat")
    assert ours.pad_token_id == 0
    assert ids[0, :5].tolist() == [49406, 320, 2368, 49407, 0]


def test_sd2_turns_every_exclamation_mark_into_the_pad_token(pairs):
    """The pad token "!" is a special token, so "cat!!" is cat + 0 + 0 rather than cat + "!!</w>"."""
    sd1, _ = pairs["sd1-vocab"]
    sd2, _ = pairs["sd2-vocab"]
    assert sd1.encode("a cat!!") == [320, 2368, 748]
    assert sd2.encode("a cat!!") == [320, 2368, 0, 0]


def test_model_max_length_comes_from_tokenizer_config(folders, tmp_path):
    folder = tmp_path / "short"
    shutil.copytree(folders["sd1-vocab"], folder)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 8}), encoding="utf-8")
    assert quiet_call(CLIPTokenizer.from_pretrained(folder), "a cat").shape == (1, 8)


def test_bare_vocab_folder_uses_clip_defaults(pairs):
    ours, _ = pairs["bare-vocab"]
    assert (ours.model_max_length, ours.pad_token_id) == (77, 49407)


def test_loads_from_a_subfolder(folders):
    tokenizer = CLIPTokenizer.from_pretrained(folders["sd1-vocab"].parent, subfolder="sd1-vocab")
    assert tokenizer("a cat")[0, :3].tolist() == [49406, 320, 2368]


# ------------------------------------------------------------------------------------------------ truncation


def test_truncation_warning_names_what_was_cut(pairs):
    ours, _ = pairs["sd1-vocab"]
    prompt = " ".join(["cat"] * 75 + ["wearing", "a", "tiny", "hat"])
    with pytest.warns(TruncationWarning) as record:
        ids = ours(prompt)
    assert str(record[0].message) == (
        "The following part of your input was truncated because CLIP can only handle sequences up to 77 tokens: "
        "['wearing a tiny hat']"
    )
    assert ids.shape == (1, 77) and ids[0, -1].item() == 49407


def test_truncated_text_equals_what_diffusers_reports(pairs):
    """diffusers decodes untruncated_ids[:, 76:-1] for its warning; the cut text is the same."""
    ours, theirs = pairs["sd2-tokenizer-json"]
    prompts = [PROMPTS[-3], "short prompt", PROMPTS[-2]]
    untruncated = theirs(prompts, padding="longest", return_tensors="pt").input_ids
    removed = [theirs.decode(row[76:][row[76:] != theirs.pad_token_id][:-1]) for row in untruncated]
    with pytest.warns(TruncationWarning) as record:
        ours(prompts)
    assert str(record[0].message).endswith(f"tokens: {[removed[0], removed[2]]}")


def test_no_warning_when_the_prompt_fits(pairs):
    ours, _ = pairs["sd1-vocab"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = ours(" ".join(["cat"] * 75))
    assert ids[0, -1].item() == 49407


def test_no_truncation_refuses_a_long_prompt(pairs):
    ours, _ = pairs["sd1-vocab"]
    with pytest.raises(ConfigError) as err:
        ours(["a cat", " ".join(["cat"] * 80)], truncation=False)
    assert str(err.value) == "prompts longer than max_length=77 tokens (prompt 1: 82); pass truncation=True"


def test_decode_reads_back_the_text(pairs):
    ours, _ = pairs["sd1-vocab"]
    assert ours.decode(ours.encode("Café, 2 cats! 🐶")) == "café , 2 cats ! 🐶"


# ---------------------------------------------------------------------------------------------- file errors


def test_missing_folder(tmp_path):
    with pytest.raises(ConfigError) as err:
        CLIPTokenizer.from_pretrained(tmp_path / "nope")
    assert str(err.value) == f"tokenizer folder {tmp_path / 'nope'} does not exist"


def test_folder_without_tokenizer_files(tmp_path):
    with pytest.raises(ConfigError) as err:
        CLIPTokenizer.from_pretrained(tmp_path)
    assert str(err.value) == f"no tokenizer files in {tmp_path}: expected tokenizer.json, or vocab.json and merges.txt"


def test_vocab_without_merges(bpe_folder, tmp_path):
    shutil.copy(bpe_folder / "vocab.json", tmp_path)
    with pytest.raises(ConfigError) as err:
        CLIPTokenizer.from_pretrained(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'merges.txt'} is missing: a CLIP tokenizer needs vocab.json and merges.txt, or tokenizer.json"
    )


def test_corrupt_vocab_json(bpe_folder, tmp_path):
    shutil.copy(bpe_folder / "merges.txt", tmp_path)
    (tmp_path / "vocab.json").write_text('{"a": 0,', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        CLIPTokenizer.from_pretrained(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'vocab.json'} is not valid JSON "
        "(Expecting property name enclosed in double quotes: line 1 column 9 (char 8))"
    )


def test_vocab_json_of_the_wrong_shape(bpe_folder, tmp_path):
    shutil.copy(bpe_folder / "merges.txt", tmp_path)
    (tmp_path / "vocab.json").write_text('["a", "b"]', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        CLIPTokenizer.from_pretrained(tmp_path)
    assert str(err.value) == f"{tmp_path / 'vocab.json'} must hold a JSON object mapping each token to its integer id"


def test_malformed_merge_line(bpe_folder, tmp_path):
    shutil.copy(bpe_folder / "vocab.json", tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\ni n\nt h e\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        CLIPTokenizer.from_pretrained(tmp_path)
    assert str(err.value) == f"{tmp_path / 'merges.txt'} line 3: expected a merge of two tokens like 'a b', got 't h e'"


def test_merge_outside_the_vocabulary(bpe_folder, tmp_path):
    shutil.copy(bpe_folder / "vocab.json", tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\ni n\nq ☃\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        CLIPTokenizer.from_pretrained(tmp_path)
    assert str(err.value) == f"{tmp_path / 'merges.txt'} line 3: merge 'q ☃' uses '☃', which is not in the vocabulary"


def test_tokenizer_json_of_another_model_type(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece"}}), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        CLIPTokenizer.from_pretrained(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'tokenizer.json'}: model.type='WordPiece' is not supported; only 'BPE' (CLIP's byte-level BPE)"
    )


def test_tokenizer_json_without_end_of_word_suffix(folders, tmp_path):
    data = json.loads((folders["sd1-tokenizer-json"] / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["end_of_word_suffix"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        CLIPTokenizer.from_pretrained(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'tokenizer.json'}: model.end_of_word_suffix=None is not supported; CLIP's BPE uses '</w>'"
    )


def test_truncated_tokenizer_json(folders, tmp_path):
    text = (folders["sd1-tokenizer-json"] / "tokenizer.json").read_text(encoding="utf-8")
    (tmp_path / "tokenizer.json").write_text(text[:100], encoding="utf-8")
    with pytest.raises(ConfigError, match=r"tokenizer\.json is not valid JSON \("):
        CLIPTokenizer.from_pretrained(tmp_path)


def test_another_tokenizer_class(folders, tmp_path):
    shutil.copytree(folders["sd1-vocab"], tmp_path / "t5")
    (tmp_path / "t5" / "tokenizer_config.json").write_text('{"tokenizer_class": "T5Tokenizer"}', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        CLIPTokenizer.from_pretrained(tmp_path / "t5")
    assert str(err.value) == (
        f"{tmp_path / 't5' / 'tokenizer_config.json'}: tokenizer_class='T5Tokenizer' is not supported; "
        "only CLIPTokenizer and CLIPTokenizerFast (CLIP's byte-level BPE)"
    )


def test_pad_token_outside_the_vocabulary(folders, tmp_path):
    shutil.copytree(folders["sd1-vocab"], tmp_path / "pad")
    (tmp_path / "pad" / "special_tokens_map.json").write_text('{"pad_token": "<pad>"}', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        CLIPTokenizer.from_pretrained(tmp_path / "pad")
    assert str(err.value) == "special tokens {'pad_token': '<pad>'} are not in the vocabulary"
