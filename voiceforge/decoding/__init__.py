"""Our own XTTS-v2 decoding: a KV-cached GPT step, batched sampling, continuous batching, batched vocoding."""
