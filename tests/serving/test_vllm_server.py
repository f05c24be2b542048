"""`wings serve` (vLLM's OpenAI-compatible server) answers like Hugging Face `generate` and refuses bad input.

One server process serves the whole module; it loads the checkpoint in the older layout (LLM weights of
layers with learners under `.decoder_layer.`), the offline-engine tests the layout saved today.
"""

from __future__ import annotations

import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("vllm")
openai = pytest.importorskip("openai")

from tiny_serving import (  # noqa: E402
    chat,
    free_port,
    image_part,
    rename_to_decoder_layer_keys,
    running_server,
    sample_image,
    user_prompt,
)

N_TOKENS = 10


@pytest.fixture(scope="module")
def client(wings_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("wings-old-keys")
    for item in wings_dir.iterdir():
        shutil.copy(item, folder / item.name)
    rename_to_decoder_layer_keys(folder)
    command = [
        sys.executable, "-c", "from wings.serving import serve_main; serve_main()", str(folder),
        "--host", "127.0.0.1", "--port", str(free_port()), "--dtype", "float32", "--enforce-eager",
        "--max-model-len", "512", "--max-num-seqs", "16", "--limit-mm-per-prompt", '{"image": 2}',
    ]
    with running_server(command, folder / "server.log") as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)


def hf_reply(hf_generate, text: str, images: list) -> str:
    """What `generate` answers to the same chat message (rendered as `wings chat` renders it)."""
    processor = hf_generate.processor
    ids, _ = hf_generate(user_prompt(processor, text, len(images)), images, n_tokens=N_TOKENS)
    return processor.decode(ids, skip_special_tokens=True)


@pytest.mark.slow
def test_chat_completion_with_a_base64_image_matches_generate(client, hf_generate):
    image = sample_image(5)
    reply = chat(client, [image_part(image), {"type": "text", "text": "what colour is the circle?"}], N_TOKENS)
    assert reply == hf_reply(hf_generate, "what colour is the circle?", [image])


@pytest.mark.slow
def test_sixteen_concurrent_requests_are_all_answered(client, hf_generate):
    image = sample_image(6)
    expected_image = hf_reply(hf_generate, "and this one?", [image])
    expected_text = hf_reply(hf_generate, "hello, how are you?", [])

    def ask(i: int) -> tuple[str, str]:
        if i % 2:
            reply = chat(client, [image_part(image), {"type": "text", "text": "and this one?"}], N_TOKENS)
            return reply, expected_image
        return chat(client, "hello, how are you?", N_TOKENS), expected_text

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16)))
    assert all(reply == expected for reply, expected in answers)


@pytest.mark.slow
@pytest.mark.parametrize(
    "content",
    [
        pytest.param("<image>\nwhat colour is the circle?", id="image_marker_without_image"),
        pytest.param(
            [{"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl!!"}},
             {"type": "text", "text": "what colour?"}],
            id="corrupt_base64",
        ),
        pytest.param([image_part(sample_image(i)) for i in range(3)] + [{"type": "text", "text": "hi"}],
                     id="more_images_than_allowed"),
        pytest.param([{"type": "image_url", "image_url": {"url": "file:///etc/hostname"}},
                      {"type": "text", "text": "what colour?"}], id="file_url"),
        pytest.param([{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/unreachable.png"}},
                      {"type": "text", "text": "what colour?"}], id="unfetchable_url"),
    ],
)
def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_answering(client, content):
    with pytest.raises(openai.APIStatusError) as error:
        chat(client, content, N_TOKENS)
    assert 400 <= error.value.status_code < 500
    body = error.value.response.json()
    assert body["error"]["message"]
    assert chat(client, "hello, how are you?", N_TOKENS)
