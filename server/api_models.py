"""Request bodies of the OpenAI-compatible API (pydantic), and OpenAI's error shape."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class APIError(Exception):
    """An error answered with OpenAI's error body and an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: Optional[str] = None, param: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Lenient(BaseModel):
    # unknown fields are accepted and ignored, like OpenAI's own API tolerates new client fields
    model_config = ConfigDict(extra="allow")


class ChatCompletionRequest(_Lenient):
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    reasoning_effort: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
    n: int = 1
    response_format: Optional[dict[str, Any]] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    parallel_tool_calls: Optional[bool] = None
    speculate: Optional[bool] = None  # extension: prompt-lookup speculative decoding (default: the server's)


class ResponsesRequest(_Lenient):
    model: str
    input: Union[str, list[dict[str, Any]]]
    instructions: Optional[str] = None
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    reasoning: Optional[dict[str, Any]] = None
    max_output_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    seed: Optional[int] = None
    stream: bool = False
    previous_response_id: Optional[str] = None
    store: Optional[bool] = None
    metadata: Optional[dict[str, Any]] = None
    parallel_tool_calls: Optional[bool] = None
    text: Optional[dict[str, Any]] = None
    include: Optional[list[str]] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    reasoning_effort: Optional[str] = None  # what the gpt-oss reference server takes: reasoning.effort's alias
    speculate: Optional[bool] = None  # extension: prompt-lookup speculative decoding (default: the server's)
    # accepted and echoed in the response object, as OpenAI does; they change nothing here
    max_tool_calls: Optional[int] = Field(default=None, ge=1)
    user: Optional[str] = None
    prompt_cache_key: Optional[str] = None
    safety_identifier: Optional[str] = None


ToolChoice = Union[Literal["auto", "none", "required"], dict[str, Any], None]


# -- the chat page's own API (/ui/api) ----------------------------------------------------------


class PageSettings(BaseModel):
    """Settings a conversation's prompt depends on; each is optional (unchanged when absent)."""

    model_config = ConfigDict(extra="forbid")
    system: Optional[str] = Field(default=None, max_length=100_000)
    effort: Optional[Literal["low", "medium", "high"]] = None
    python: Optional[bool] = None


class ConversationPatch(PageSettings):
    title: Optional[str] = Field(default=None, max_length=200)


class TurnRequest(PageSettings):
    text: Optional[str] = Field(default=None, max_length=1_000_000)
    mode: Literal["send", "regenerate", "edit"] = "send"
