"""The bundled models behind ``longforge serve``, through the official openai client: Qwen's
chat template and Gemma 3 base's plain rendering of a chat, streamed and not, and a
completion."""
import openai
import pytest

from longforge.serve.app import ServerConfig, background, create_app
from longforge.serve.engine import Engine, EngineSettings


@pytest.mark.real_model
@pytest.mark.parametrize("which", ["qwen", "gemma"])
def test_the_bundled_models_answer_through_the_openai_client(request, which):
    lm = request.getfixturevalue(which)
    app = create_app(Engine(lm, EngineSettings(max_new_tokens=32)), ServerConfig(which))
    with background(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                               timeout=300)
        chat = dict(model=which, max_tokens=12, temperature=0, messages=[  # one shot: Gemma
            {"role": "user", "content": "What is the capital of Italy?"},  # is a base model
            {"role": "assistant", "content": "Rome."},
            {"role": "user", "content": "What is the capital of France?"}])
        answer = client.chat.completions.create(**chat).choices[0].message.content
        assert "Paris" in answer
        streamed = "".join(c.choices[0].delta.content or "" for c in
                           client.chat.completions.create(**chat, stream=True) if c.choices)
        assert streamed == answer
        code = client.completions.create(model=which, prompt="def add(a, b):\n    return",
                                          max_tokens=6, temperature=0).choices[0].text
        assert "a + b" in code or "a+b" in code, code
