"""DeepSeek tokenization through the server equals the `tokenizers` library on
tokenizer.json, for a tokenizer-only folder (`--tokenizer`) and a full checkpoint."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from tests.helpers.vllm_probe import get_tokenizer
from tests.conftest import SERVED_NAME

CORPUS = [
    "The capital of France",
    "  leading spaces and trailing   ",
    "数字 1234567890 and 3.14159; 一二三",
    "日本語のテキストとカタカナ、ひらがな。",
    "Привет, мир! Ünïcödé façade — naïve café",
    "emoji 🤖🚀 and combining é ̀ marks",
    "def f(x):\n\treturn {'a': [1, 2, 3]}  # comment\n",
    "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>\nhmm\n</think>ok<｜end▁of▁sentence｜>",
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
    "{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    "SELECT * FROM t WHERE id IN (1,2,3) AND name LIKE '%ß%';",
    "\n\n\r\n\t \u00a0\u3000",
]


@pytest.fixture(scope="module")
def reference(tokenizer_only_dir):
    return Tokenizer.from_file(str(tokenizer_only_dir / "tokenizer.json"))


@pytest.mark.engine
@pytest.mark.parametrize("text", CORPUS)
def test_server_tokenize_matches_tokenizer_json(server, reference, text):
    status, body = server.post("/tokenize", {"model": SERVED_NAME, "prompt": text,
                                             "add_special_tokens": False})
    assert status == 200, body
    want = reference.encode(text, add_special_tokens=False).ids
    assert body["tokens"] == want
    status, back = server.post("/detokenize", {"model": SERVED_NAME, "tokens": want})
    assert status == 200, back
    assert back["prompt"] == reference.decode(want, skip_special_tokens=False)


@pytest.mark.parametrize("use_config_dir", [False, True], ids=["tokenizer-only", "checkpoint"])
def test_vllm_loader_is_faithful(use_config_dir, tiny_ckpt, tokenizer_only_dir, reference):
    import ds_plugin

    ds_plugin.register()
    tok = get_tokenizer(str(tiny_ckpt if use_config_dir else tokenizer_only_dir))
    for text in CORPUS:
        ids = reference.encode(text, add_special_tokens=False).ids
        assert tok.encode(text, add_special_tokens=False) == ids, text
        assert tok.decode(ids) == reference.decode(ids, skip_special_tokens=False), text
    assert tok.encode("The capital of France", add_special_tokens=False) == [671, 6102, 294, 8760]


def test_missing_tokenizer_json_is_named(tiny_ckpt, tmp_path):
    # Everything of a checkpoint's tokenizer but tokenizer.json: transformers alone asks to
    # "install sentencepiece or tiktoken".
    import shutil

    import ds_plugin

    ds_plugin.register()
    for name in ("config.json", "tokenizer_config.json"):
        shutil.copyfile(tiny_ckpt / name, tmp_path / name)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'tokenizer.json'} is missing"):
        get_tokenizer(str(tmp_path))
