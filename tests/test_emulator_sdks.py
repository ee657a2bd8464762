"""The vendors' own SDKs, pointed at the emulator, accept its answers and its errors.

This is the proof that the emulator is faithful: openai, anthropic and google-genai parse
what it sends, streamed and not, tool calls and JSON mode included, and turn its error
responses into their own exception types. Nothing here is mocked: real sockets, the
SDKs' real HTTP stacks.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from pydantic import BaseModel

from router_agent.emulator import Emulator, start_emulator

# google-genai subclasses aiohttp's ClientSession, which aiohttp warns about; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")

PROMPT = "one two three four five"
REPLY = "five four three two one"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer", "minimum": 3},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}
FAULTS = {"limited": {"status": 429, "retry_after_s": 2.5}, "overloaded": 529,
          "broken": 500, "unavailable": 503}


class Forecast(BaseModel):
    city: str
    days: int
    sunny: bool


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    emulator = await start_emulator(faults=FAULTS)
    try:
        yield emulator
    finally:
        await emulator.close()


@pytest.fixture
async def oai(emu: Emulator) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=emu.url, api_key="sk-test", max_retries=0) as client:
        yield client


@pytest.fixture
async def claude(emu: Emulator) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=emu.base_url, api_key="sk-ant-test", max_retries=0) as client:
        yield client


@pytest.fixture
def gemini(emu: Emulator) -> genai.Client:
    options = genai_types.HttpOptions(
        base_url=emu.base_url, retry_options=genai_types.HttpRetryOptions(attempts=1)
    )
    return genai.Client(api_key="gemini-test", http_options=options)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# --- OpenAI -----------------------------------------------------------------------------


async def test_openai_chat_completion(oai: openai.AsyncOpenAI) -> None:
    answer = await oai.chat.completions.create(model="gpt-emu", messages=user(PROMPT), max_tokens=50)
    assert answer.choices[0].message.content == f"[emulated gpt-emu] {REPLY}"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.system_fingerprint == "emulated"
    assert answer.usage is not None and answer.usage.total_tokens > answer.usage.prompt_tokens > 0


async def test_openai_stream_with_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="gpt-emu", messages=user(PROMPT), stream=True, stream_options={"include_usage": True}
    )
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == f"[emulated gpt-emu] {REPLY}"
    assert finish == "stop"
    plain = await oai.chat.completions.create(model="gpt-emu", messages=user(PROMPT))
    assert usage == plain.usage


async def test_openai_tool_call_and_its_stream(oai: openai.AsyncOpenAI) -> None:
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER, "strict": True}}]
    answer = await oai.chat.completions.create(
        model="gpt-emu", messages=user("please call get_weather for me"), tools=tools
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {  # type: ignore[union-attr]
        "city": "emulated city", "days": 3, "unit": "celsius"
    }

    async with oai.chat.completions.stream(
        model="gpt-emu", messages=user("please call get_weather for me"), tools=tools
    ) as stream:
        final = await stream.get_final_completion()
    [streamed] = final.choices[0].message.tool_calls or []
    assert streamed.function.arguments == call.function.arguments  # type: ignore[union-attr]


async def test_openai_parses_structured_output(oai: openai.AsyncOpenAI) -> None:
    answer = await oai.chat.completions.parse(
        model="gpt-emu", messages=user("a forecast please"), response_format=Forecast
    )
    parsed = answer.choices[0].message.parsed
    assert parsed == Forecast(city="emulated city", days=1, sunny=True)


async def test_openai_json_object_mode(oai: openai.AsyncOpenAI) -> None:
    answer = await oai.chat.completions.create(
        model="gpt-emu", messages=user(PROMPT), response_format={"type": "json_object"}
    )
    assert json.loads(answer.choices[0].message.content or "") == {
        "emulated": True, "model": "gpt-emu", "reply": REPLY
    }


@pytest.mark.parametrize(
    ("model", "error"),
    [("limited", openai.RateLimitError), ("broken", openai.InternalServerError),
     ("overloaded", openai.InternalServerError), ("unavailable", openai.InternalServerError)],
)
async def test_openai_error_types(oai: openai.AsyncOpenAI, model: str, error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        await oai.chat.completions.create(model=model, messages=user("hi"))
    assert isinstance(caught.value, openai.APIStatusError)
    assert caught.value.status_code == FAULTS[model] if isinstance(FAULTS[model], int) else 429
    if model == "limited":
        assert caught.value.response.headers["retry-after"] == "3"
        assert caught.value.response.headers["retry-after-ms"] == "2500"
        assert caught.value.code == "rate_limit_exceeded"
    with pytest.raises(error):  # a stream fails the same way, before its first chunk
        await oai.chat.completions.create(model=model, messages=user("hi"), stream=True)


async def test_openai_models(oai: openai.AsyncOpenAI) -> None:
    listed = [m.id async for m in oai.models.list()]
    assert "emulator-small" in listed and "limited" in listed
    assert (await oai.models.retrieve("anything")).owned_by == "emulator"


async def test_openai_bad_request(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        await oai.chat.completions.create(model="gpt-emu", messages=[])


# --- Anthropic --------------------------------------------------------------------------


async def test_anthropic_message(claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(
        model="claude-emu", max_tokens=50, system="be brief", messages=user(PROMPT)
    )
    assert message.type == "message" and message.role == "assistant"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == f"[emulated claude-emu] {REPLY}"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


async def test_anthropic_stream_matches_the_message(claude: anthropic.AsyncAnthropic) -> None:
    kwargs: Any = {"model": "claude-emu", "max_tokens": 50, "messages": user(PROMPT)}
    plain = await claude.messages.create(**kwargs)
    events: list[str] = []
    async with claude.messages.stream(**kwargs) as stream:
        async for event in stream:
            events.append(event.type)
        final = await stream.get_final_message()
    assert [b.text for b in final.content] == [b.text for b in plain.content]  # type: ignore[union-attr]
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.stop_reason == "end_turn"
    assert events[0] == "message_start" and "content_block_delta" in events
    assert events[-1] == "message_stop"


async def test_anthropic_tool_use_streamed_and_not(claude: anthropic.AsyncAnthropic) -> None:
    kwargs: Any = {
        "model": "claude-emu", "max_tokens": 200,
        "messages": user("what is the weather? use get_weather"),
        "tools": [{"name": "get_weather", "description": "weather", "input_schema": WEATHER}],
    }
    message = await claude.messages.create(**kwargs)
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use" and block.name == "get_weather"
    assert block.input == {"city": "emulated city", "days": 3, "unit": "celsius"}
    async with claude.messages.stream(**kwargs) as stream:
        final = await stream.get_final_message()
    assert final.content[0].input == block.input  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"

    # Handing the result back gets a text answer, not another call.
    kwargs["messages"] = [
        *kwargs["messages"],
        {"role": "assistant", "content": [block.model_dump(include={"type", "id", "name", "input"})]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny"}]},
    ]
    after = await claude.messages.create(**kwargs)
    assert after.stop_reason == "end_turn" and after.content[0].type == "text"


async def test_anthropic_structured_output(claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.parse(
        model="claude-emu", max_tokens=200, messages=user("forecast"), output_format=Forecast
    )
    assert message.parsed_output == Forecast(city="emulated city", days=1, sunny=True)


async def test_anthropic_models_list(claude: anthropic.AsyncAnthropic) -> None:
    ids = [m.id async for m in claude.models.list()]
    assert "emulator-small" in ids and "overloaded" in ids


@pytest.mark.parametrize(
    ("model", "error", "kind"),
    [("limited", anthropic.RateLimitError, "rate_limit_error"),
     ("overloaded", anthropic.OverloadedError, "overloaded_error"),
     ("broken", anthropic.InternalServerError, "api_error")],
)
async def test_anthropic_error_types(
    claude: anthropic.AsyncAnthropic, model: str, error: type[anthropic.APIStatusError], kind: str
) -> None:
    with pytest.raises(error) as caught:
        await claude.messages.create(model=model, max_tokens=10, messages=user("hi"))
    assert isinstance(caught.value, anthropic.APIStatusError)
    assert caught.value.body["error"]["type"] == kind  # type: ignore[index]
    if model == "overloaded":
        assert caught.value.status_code == 529
        assert isinstance(caught.value, anthropic.InternalServerError)


# --- Gemini -----------------------------------------------------------------------------


async def test_gemini_generate_content(gemini: genai.Client) -> None:
    answer = await gemini.aio.models.generate_content(
        model="gemini-emu", contents=PROMPT,
        config=genai_types.GenerateContentConfig(system_instruction="be brief", max_output_tokens=50),
    )
    assert answer.text == f"[emulated gemini-emu] {REPLY}"
    assert answer.candidates and answer.candidates[0].finish_reason == genai_types.FinishReason.STOP
    usage = answer.usage_metadata
    assert usage is not None and usage.total_token_count == (usage.prompt_token_count or 0) + (
        usage.candidates_token_count or 0
    )


async def test_gemini_stream(gemini: genai.Client) -> None:
    chunks = [c async for c in await gemini.aio.models.generate_content_stream(model="gemini-emu", contents=PROMPT)]
    assert len(chunks) > 1
    assert "".join(c.text or "" for c in chunks) == f"[emulated gemini-emu] {REPLY}"
    assert chunks[-1].candidates and chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert chunks[-1].usage_metadata and chunks[-1].usage_metadata.candidates_token_count


async def test_gemini_function_call(gemini: genai.Client) -> None:
    tool = genai_types.Tool(function_declarations=[
        genai_types.FunctionDeclaration(name="get_weather", parameters_json_schema=WEATHER)
    ])
    config = genai_types.GenerateContentConfig(
        tools=[tool], automatic_function_calling=genai_types.AutomaticFunctionCallingConfig(disable=True)
    )
    answer = await gemini.aio.models.generate_content(
        model="gemini-emu", contents="call get_weather please", config=config
    )
    [call] = answer.function_calls or []
    assert call.name == "get_weather"
    assert call.args == {"city": "emulated city", "days": 3, "unit": "celsius"}
    streamed = [c async for c in await gemini.aio.models.generate_content_stream(
        model="gemini-emu", contents="call get_weather please", config=config
    )]
    assert [c.name for s in streamed for c in s.function_calls or []] == ["get_weather"]


async def test_gemini_json_schema(gemini: genai.Client) -> None:
    answer = await gemini.aio.models.generate_content(
        model="gemini-emu", contents="forecast",
        config=genai_types.GenerateContentConfig(response_mime_type="application/json", response_schema=Forecast),
    )
    assert answer.parsed == Forecast(city="emulated city", days=1, sunny=True)


@pytest.mark.parametrize(
    ("model", "error", "status"),
    [("limited", genai_errors.ClientError, "RESOURCE_EXHAUSTED"),
     ("unavailable", genai_errors.ServerError, "UNAVAILABLE"),
     ("broken", genai_errors.ServerError, "INTERNAL")],
)
async def test_gemini_error_types(
    gemini: genai.Client, model: str, error: type[genai_errors.APIError], status: str
) -> None:
    with pytest.raises(error) as caught:
        await gemini.aio.models.generate_content(model=model, contents="hi")
    assert caught.value.status == status
    assert caught.value.code == (429 if model == "limited" else FAULTS[model])
